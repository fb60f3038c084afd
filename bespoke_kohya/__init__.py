"""bespoke-kohya: train a generator of 24x24 Bespoke Punk portraits and pick its best epoch."""

__version__ = "0.1.0"
