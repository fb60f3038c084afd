"""pixel24's functions for code outside the engine that works on the model itself (benchmarks, tests): one import.

    from bespoke_kohya.engines.pixel24 import api as pixel24
    model = pixel24.load_checkpoint(path); images = pixel24.sample(model, prompts, seeds)

The pipeline never imports this: every verb goes through the engine (engine.py).
"""

from .model import (CONFIG_NAME, FORMAT, FORMAT_VERSION, READABLE_VERSIONS, STEM, Pixel24Model, build_model, checkpoint_name, load_checkpoint, model_config,
                    read_config)
from .palette import build_palette, to_indices
from .sampling import SAMPLE_BATCH, encode_prompt, sample, sample_pairs
from .text import PhraseEncoder, build_vocab, encode_caption, split_phrases
from .training import base_dir, ensure_base, load_training_set, short_run_warning, train

__all__ = [
    "CONFIG_NAME", "FORMAT", "FORMAT_VERSION", "READABLE_VERSIONS", "STEM", "SAMPLE_BATCH", "PhraseEncoder", "Pixel24Model", "base_dir", "build_model", "build_palette",
    "build_vocab", "checkpoint_name", "encode_caption", "encode_prompt", "ensure_base", "load_checkpoint", "load_training_set", "model_config",
    "read_config", "sample", "sample_pairs", "short_run_warning", "split_phrases", "to_indices", "train",
]
