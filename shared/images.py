"""The one image validator: what fedsieve accepts as a batch of 28x28 grey images.

Accepted: uint8 of shape (N, 28, 28), or float32 in [0, 1] of shape (N, 28, 28) or
(N, 1, 28, 28). Anything else (wrong type, shape or dtype, NaN/inf, out-of-range values, an
empty batch where one is not allowed) raises ``ValueError`` saying what was wrong and how to
fix it. Detectors take the float form, the wire protocol and seed files the uint8 form.
"""

from __future__ import annotations

from typing import Any

import numpy as np

IMAGE_SHAPE = (28, 28)
_FIX = ("pass uint8 images of shape (N, 28, 28), or float32 in [0, 1] of shape (N, 28, 28) "
        "or (N, 1, 28, 28)")


def validate_image_array(x: Any, name: str = "X", allow_empty: bool = False) -> np.ndarray:
    """Check ``x`` and return it as (N, 28, 28), still uint8 or float32 (no copy when possible)."""
    if hasattr(x, "detach") and hasattr(x, "numpy"):  # a torch tensor, without importing torch
        x = x.detach().cpu().numpy()
    if not isinstance(x, np.ndarray):
        raise ValueError(f"{name} must be a numpy array, got {type(x).__name__}; {_FIX}")
    if x.ndim == 4 and x.shape[1] == 1:
        x = x[:, 0]
    if x.ndim != 3 or x.shape[1:] != IMAGE_SHAPE:
        raise ValueError(f"{name} has shape {x.shape}; {_FIX}")
    if x.shape[0] == 0 and not allow_empty:
        raise ValueError(f"{name} is empty (0 images); pass at least one image")
    if x.dtype == np.uint8:
        return x
    if x.dtype != np.float32:
        raise ValueError(f"{name} has dtype {x.dtype}; {_FIX} (convert with "
                         "x.astype(np.float32) / 255 for 0-255 data)")
    if x.size and not np.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or inf values; clean or drop those images")
    if x.size and (x.min() < 0.0 or x.max() > 1.0):
        raise ValueError(f"{name} has values in [{x.min():.3g}, {x.max():.3g}], outside [0, 1]; "
                         "float images must be scaled to [0, 1] (divide 0-255 data by 255)")
    return x


def as_float_images(x: Any, name: str = "X", allow_empty: bool = False) -> np.ndarray:
    """Validated images as float32 in [0, 1], (N, 28, 28)."""
    x = validate_image_array(x, name, allow_empty)
    if x.dtype == np.uint8:
        out = x.astype(np.float32)
        out /= 255.0  # in place: one float copy of a large pool, not two
        return out
    return np.ascontiguousarray(x, dtype=np.float32)


def as_uint8_images(x: Any, name: str = "X", allow_empty: bool = False) -> np.ndarray:
    """Validated images as uint8, (N, 28, 28); float pixels are rounded to the nearest level."""
    x = validate_image_array(x, name, allow_empty)
    if x.dtype == np.uint8:
        return np.ascontiguousarray(x)
    return np.rint(x * 255.0).astype(np.uint8)
