"""The one image validator: what fedsieve accepts as a batch of 28x28 grey images.

Accepted: uint8 of shape (N, 28, 28), or float32 in [0, 1] of shape (N, 28, 28) or
(N, 1, 28, 28); a torch tensor is treated like its array. Anything else (wrong type, shape or
dtype, NaN/inf, out-of-range values, an empty batch where one is not allowed) raises
``ValueError`` saying what was wrong and how to fix it. :func:`check_images` returns the
float form (what the detectors and the classifier compute on) or the uint8 form (what the wire
protocol and trusted files carry), as asked.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
from numpy.typing import DTypeLike

__all__ = ["IMAGE_SHAPE", "check_images", "image_digests", "images_sha256"]

IMAGE_SHAPE = (28, 28)
_FIX = ("pass uint8 images of shape (N, 28, 28), or float32 in [0, 1] of shape (N, 28, 28) "
        "or (N, 1, 28, 28)")
_OUTPUT_DTYPES = (np.dtype(np.float32), np.dtype(np.uint8))


def check_images(
    X: Any,
    name: str = "X",
    *,
    dtype: DTypeLike = np.float32,
    allow_empty: bool = False,
) -> np.ndarray:
    """Validate a batch of images and return it as (N, 28, 28) of ``dtype``.

    Parameters
    ----------
    X : numpy.ndarray or torch.Tensor
        uint8 (N, 28, 28), or float32 in [0, 1] of shape (N, 28, 28) or (N, 1, 28, 28).
    name : str
        What ``X`` is, for the error messages (e.g. ``"uploaded x"``).
    dtype : {numpy.float32, numpy.uint8}
        float32: values in [0, 1] (uint8 input is divided by 255). uint8: 0-255 (float input
        is rounded to the nearest level).
    allow_empty : bool
        Whether a batch of 0 images is valid.

    Returns
    -------
    numpy.ndarray
        C-contiguous (N, 28, 28) array of ``dtype``; ``X`` itself when it already is one.

    Raises
    ------
    ValueError
        Wrong type, shape or dtype, NaN/inf, values outside [0, 1], or no images where some
        are needed; the message names ``name``, says what was wrong and how to fix it.
    """
    out_dtype = np.dtype(dtype)
    if out_dtype not in _OUTPUT_DTYPES:
        raise ValueError(f"check_images returns float32 or uint8 images, not {out_dtype}")
    if hasattr(X, "detach") and hasattr(X, "numpy"):  # a torch tensor, without importing torch
        X = X.detach().cpu().numpy()
    if not isinstance(X, np.ndarray):
        raise ValueError(f"{name} must be a numpy array, got {type(X).__name__}; {_FIX}")
    if X.ndim == 4 and X.shape[1] == 1:
        X = X[:, 0]
    if X.ndim != 3 or X.shape[1:] != IMAGE_SHAPE:
        raise ValueError(f"{name} has shape {X.shape}; {_FIX}")
    if X.shape[0] == 0 and not allow_empty:
        raise ValueError(f"{name} is empty (0 images); pass at least one image")
    if X.dtype == np.uint8:
        if out_dtype == np.uint8:
            return np.ascontiguousarray(X)
        out = X.astype(np.float32)
        out /= 255.0  # in place: one float copy of a large pool, not two
        return out
    if X.dtype != np.float32:
        raise ValueError(f"{name} has dtype {X.dtype}; {_FIX} (convert with "
                         "x.astype(np.float32) / 255 for 0-255 data)")
    if X.size and not np.isfinite(X).all():
        raise ValueError(f"{name} contains NaN or inf values; clean or drop those images")
    if X.size and (X.min() < 0.0 or X.max() > 1.0):
        raise ValueError(f"{name} has values in [{X.min():.3g}, {X.max():.3g}], outside [0, 1]; "
                         "float images must be scaled to [0, 1] (divide 0-255 data by 255)")
    if out_dtype == np.uint8:
        return np.rint(X * 255.0).astype(np.uint8)
    return np.ascontiguousarray(X)


def images_sha256(X: np.ndarray, chunk: int = 4096) -> str:
    """SHA-256 of images quantised to uint8, so the same images hash the same in either dtype.

    Hashed ``chunk`` images at a time, so that a large float pool is never quantised whole.

    Raises
    ------
    ValueError
        ``X`` is not a valid batch of images (see :func:`check_images`).
    """
    digest = hashlib.sha256()
    for start in range(0, len(X), chunk):
        part = check_images(X[start:start + chunk], dtype=np.uint8)
        digest.update(part.tobytes())
    return digest.hexdigest()


def image_digests(images: np.ndarray) -> np.ndarray:
    """An 8-byte BLAKE2b digest of each image's bytes, as a (N,) ``S8`` array: byte-identical
    images share a digest. ``.view("<u8")`` reads them as 64-bit integers."""
    flat = np.ascontiguousarray(images).reshape(len(images), -1)
    return np.array([hashlib.blake2b(row.tobytes(), digest_size=8).digest() for row in flat],
                    dtype="S8")
