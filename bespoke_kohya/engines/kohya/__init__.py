"""The kohya engine: LoRA training through kohya sd-scripts (run in its own process and venv), sampled with diffusers.

``engine.py`` defines ENGINE; see its docstring for the modules. This file imports nothing:
a bundle's standard-library helper imports ``gosh.py`` before anything is installed.
"""
