"""Colour science shared by the post-processor and the metrics: sRGB -> CIELAB, ΔE76.

Vectorised numpy on (..., 3) uint8 arrays; small enough that a dependency would
cost more than it saves.
"""

from __future__ import annotations

import numpy as np

# D65 reference white, sRGB primaries (IEC 61966-2-1).
_RGB_TO_XYZ = np.array(
    [
        [0.4124564, 0.3575761, 0.1804375],
        [0.2126729, 0.7151522, 0.0721750],
        [0.0193339, 0.1191920, 0.9503041],
    ]
)
_WHITE = np.array([0.95047, 1.0, 1.08883])

_LINEAR_LUT = None


def _srgb_to_linear(rgb_u8: np.ndarray) -> np.ndarray:
    global _LINEAR_LUT
    if _LINEAR_LUT is None:
        c = np.arange(256) / 255.0
        _LINEAR_LUT = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    return _LINEAR_LUT[rgb_u8]


def as_uint8(rgb: np.ndarray) -> np.ndarray:
    """``rgb`` as uint8: other dtypes rounded and clipped to 0..255."""
    rgb = np.asarray(rgb)
    return rgb if rgb.dtype == np.uint8 else np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def pack_colours(colours: np.ndarray) -> np.ndarray:
    """``(..., 3)`` uint8 colours as one int per colour: set operations on ints are far
    faster than ``np.unique(axis=0)`` on rows (int32: 24 bits fit, and sort twice as fast as int64)."""
    c = colours.astype(np.int32)
    return (c[..., 0] << 16) | (c[..., 1] << 8) | c[..., 2]


def unpack_colours(keys: np.ndarray) -> np.ndarray:
    """Inverse of :func:`pack_colours`: ``(n,)`` ints -> ``(n, 3)`` uint8."""
    return np.stack([(keys >> 16) & 255, (keys >> 8) & 255, keys & 255], axis=-1).astype(np.uint8)


def rgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """CIELAB (D65) of sRGB colours given as uint8 ``(..., 3)``; returns float64 ``(..., 3)``."""
    xyz = _srgb_to_linear(as_uint8(rgb)) @ _RGB_TO_XYZ.T / _WHITE
    eps = 216 / 24389
    kappa = 24389 / 27
    f = np.where(xyz > eps, np.cbrt(xyz), (kappa * xyz + 16) / 116)
    L = 116 * f[..., 1] - 16
    a = 500 * (f[..., 0] - f[..., 1])
    b = 200 * (f[..., 1] - f[..., 2])
    return np.stack([L, a, b], axis=-1)


def delta_e(lab1: np.ndarray, lab2: np.ndarray) -> np.ndarray:
    """CIE76 colour difference (Euclidean distance in CIELAB); broadcasts."""
    return np.sqrt(((np.asarray(lab1) - np.asarray(lab2)) ** 2).sum(axis=-1))


def unique_colours(rgb: np.ndarray) -> np.ndarray:
    """Distinct colours of an ``(H, W, 3)`` uint8 image as an ``(N, 3)`` uint8 array."""
    flat = np.ascontiguousarray(rgb.reshape(-1, 3))
    return np.unique(flat, axis=0)
