"""Test helpers: fake runs written through the run contract, a tiny SD1.5 and kohya LoRAs."""
