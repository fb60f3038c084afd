"""``pixel24``: a small model that draws 24×24 pixel art as palette indices, on a CPU.

Why palette indices: the first pixel24 denoised continuous RGB and left per-pixel grain
(~500 colours an image) that no clean-up removed. Here every pixel is one of a palette of
the artist's own colours (:mod:`.palette`), and the model is masked discrete diffusion
(MaskGIT / absorbing-state): it learns to fill in masked pixels (:mod:`.training`) and
draws by unmasking the most confident pixels over a few steps (:mod:`.sampling`). An
output is flat colour areas by construction, and needs no colour clean-up.

It learns in two stages: a base model on the 10,000 CryptoPunks of the stand-in
(trained once per machine, cached), then a fine-tune on the artist's folder, sized in
optimiser steps so 20 punks and 500 get the same amount of learning.

torch and diffusers are imported only in this package (and the kohya engine's sampler).
"""

from .model import CONFIG_NAME, FORMAT, FORMAT_VERSION, STEM, Pixel24Model, build_model, checkpoint_name, load_checkpoint, model_config, read_config
from .palette import build_palette, to_indices
from .sampling import SAMPLE_BATCH, encode_prompt, sample
from .text import PhraseEncoder, build_vocab, encode_caption, split_phrases
from .training import base_dir, ensure_base, load_training_set, short_run_warning, train

__all__ = [
    "CONFIG_NAME", "FORMAT", "FORMAT_VERSION", "STEM", "SAMPLE_BATCH", "PhraseEncoder", "Pixel24Model", "base_dir", "build_model", "build_palette",
    "build_vocab", "checkpoint_name", "encode_caption", "encode_prompt", "ensure_base", "load_checkpoint", "load_training_set", "model_config",
    "read_config", "sample", "short_run_warning", "split_phrases", "to_indices", "train",
]
