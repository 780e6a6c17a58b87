"""The one image validator: what fedsieve accepts as a batch of images, and in which layout.

fedsieve takes images of any size and channel count. A batch may come as

- ``(N, H, W)``: grey images (one channel);
- ``(N, H, W, C)``: channels last (numpy, PIL, Hugging Face datasets);
- ``(N, C, H, W)``: channels first (torch);

of dtype uint8 (0-255) or float32 in [0, 1]; a torch tensor is treated like its array. The
layout of a 4-D batch is read from its shape by one rule: the channel axis is the one of the
two candidates (axis 1 or axis 3) that holds at most :data:`MAX_AUTO_CHANNELS` entries while
the other holds more. When both or neither do (``(N, 3, 4, 4)``, or 13-band satellite tiles
``(N, 64, 64, 13)``) the layout is ambiguous and must be named: ``layout="NHWC"`` or
``"NCHW"``. Anything else (wrong type, shape or dtype, NaN/inf, out-of-range values, images
smaller than :data:`MIN_SIDE` pixels, an empty batch where one is not allowed) raises
``ValueError`` saying what was wrong and how to fix it.

Whatever came in, :func:`check_images` returns the one canonical form every fedsieve
component computes on: C-contiguous ``(N, C, H, W)``, float32 in [0, 1] (what the detectors
and the classifier use) or uint8 (what the wire protocol and trusted files carry).
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
from numpy.typing import DTypeLike

__all__ = [
    "DEFAULT_IMAGE_SHAPE",
    "LAYOUTS",
    "MAX_AUTO_CHANNELS",
    "MIN_SIDE",
    "check_images",
    "image_digests",
    "image_shape",
    "images_sha256",
    "format_shape",
    "display_rgb",
]

#: (C, H, W) of the images the shipped meta-model and the example task were made for.
DEFAULT_IMAGE_SHAPE = (1, 28, 28)
#: The layouts a 4-D batch may be declared in.
LAYOUTS = ("NCHW", "NHWC")
#: A 4-D axis of at most this many entries is taken for the channel axis (grey, grey+alpha,
#: RGB, RGBA) when the other candidate axis is longer.
MAX_AUTO_CHANNELS = 4
#: Smallest height and width accepted: the detectors' networks halve the image twice.
MIN_SIDE = 8
_OUTPUT_DTYPES = (np.dtype(np.float32), np.dtype(np.uint8))
_FORMS = ("pass uint8 images (0-255) or float32 images in [0, 1], shaped (N, H, W) for grey, "
          "(N, H, W, C) for channels-last or (N, C, H, W) for channels-first")


def format_shape(shape: tuple[int, ...]) -> str:
    """``(3, 32, 32)`` -> ``"3x32x32"``: how messages name an image shape (C x H x W)."""
    return "x".join(str(int(s)) for s in shape)


def _channels_first(X: np.ndarray, name: str, layout: str | None) -> np.ndarray:
    """``X`` as (N, C, H, W) (a view: no copy), by the layout rule of the module docstring."""
    if layout is not None and layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(LAYOUTS)} or None (auto), "
                         f"got {layout!r}")
    if X.ndim == 3:
        return X[:, None]
    if X.ndim != 4:
        raise ValueError(f"{name} has shape {X.shape} ({X.ndim} axes); {_FORMS}")
    if layout is None:
        first, last = X.shape[1] <= MAX_AUTO_CHANNELS, X.shape[3] <= MAX_AUTO_CHANNELS
        if first == last:
            raise ValueError(
                f"{name} has shape {X.shape}: cannot tell whether the channels are axis 1 "
                f"(N, C, H, W) or axis 3 (N, H, W, C); pass layout='NCHW' or layout='NHWC'")
        layout = "NCHW" if first else "NHWC"
    return X if layout == "NCHW" else X.transpose(0, 3, 1, 2)


def check_images(
    X: Any,
    name: str = "X",
    *,
    dtype: DTypeLike = np.float32,
    allow_empty: bool = False,
    layout: str | None = None,
) -> np.ndarray:
    """Validate a batch of images and return it as (N, C, H, W) of ``dtype``.

    Parameters
    ----------
    X : numpy.ndarray or torch.Tensor
        uint8 or float32 in [0, 1], shaped (N, H, W), (N, H, W, C) or (N, C, H, W).
    name : str
        What ``X`` is, for the error messages (e.g. ``"uploaded x"``).
    dtype : {numpy.float32, numpy.uint8}
        float32: values in [0, 1] (uint8 input is divided by 255). uint8: 0-255 (float input
        is rounded to the nearest level).
    allow_empty : bool
        Whether a batch of 0 images is valid.
    layout : {"NCHW", "NHWC"}, optional
        The layout of a 4-D batch; None reads it from the shape (see the module docstring)
        and refuses an ambiguous one.

    Returns
    -------
    numpy.ndarray
        C-contiguous (N, C, H, W) array of ``dtype``; ``X`` itself when it already is one.

    Raises
    ------
    ValueError
        Wrong type, shape or dtype, an ambiguous layout, NaN/inf, values outside [0, 1],
        images under :data:`MIN_SIDE` pixels a side, or no images where some are needed;
        the message names ``name``, says what was wrong and how to fix it.
    """
    out_dtype = np.dtype(dtype)
    if out_dtype not in _OUTPUT_DTYPES:
        raise ValueError(f"check_images returns float32 or uint8 images, not {out_dtype}")
    if hasattr(X, "detach") and hasattr(X, "numpy"):  # a torch tensor, without importing torch
        X = X.detach().cpu().numpy()
    if not isinstance(X, np.ndarray):
        raise ValueError(f"{name} must be a numpy array, got {type(X).__name__}; {_FORMS}")
    X = _channels_first(X, name, layout)
    if min(X.shape[2:]) < MIN_SIDE:
        raise ValueError(f"{name} holds images of {X.shape[2]}x{X.shape[3]} pixels; images "
                         f"must be at least {MIN_SIDE}x{MIN_SIDE} (pad or resize them), and a "
                         "4-D batch needs its channel axis where the layout says")
    if X.shape[1] == 0:
        raise ValueError(f"{name} has 0 channels (shape {X.shape}); {_FORMS}")
    if X.shape[0] == 0 and not allow_empty:
        raise ValueError(f"{name} is empty (0 images); pass at least one image")
    if X.dtype == np.uint8:
        if out_dtype == np.uint8:
            return np.ascontiguousarray(X)
        out = np.ascontiguousarray(X, dtype=np.float32)
        out /= 255.0  # in place: one float copy of a large pool, not two
        return out
    if X.dtype != np.float32:
        raise ValueError(f"{name} has dtype {X.dtype}{_value_range(X)}; {_FORMS} "
                         f"({_conversion(X)})")
    if X.size and not np.isfinite(X).all():
        raise ValueError(f"{name} contains NaN or inf values; clean or drop those images")
    if X.size and (X.min() < 0.0 or X.max() > 1.0):
        raise ValueError(f"{name} has values in [{X.min():.3g}, {X.max():.3g}], outside [0, 1]; "
                         "float images must be scaled to [0, 1] (divide 0-255 data by 255)")
    if out_dtype == np.uint8:
        return np.ascontiguousarray(np.rint(X * 255.0).astype(np.uint8))
    return np.ascontiguousarray(X)


def _finite_range(X: np.ndarray) -> tuple[float, float] | None:
    """(min, max) of the finite values of a real numeric batch; None when it has none."""
    if not X.size or not np.issubdtype(X.dtype, np.number) or np.iscomplexobj(X):
        return None
    finite = X[np.isfinite(X)] if np.issubdtype(X.dtype, np.floating) else X
    return (float(finite.min()), float(finite.max())) if finite.size else None


def _value_range(X: np.ndarray) -> str:
    """`` with values in [lo, hi]`` of a numeric batch (empty when it is not one)."""
    bounds = _finite_range(X)
    return "" if bounds is None else f" with values in [{bounds[0]:.4g}, {bounds[1]:.4g}]"


def _conversion(X: np.ndarray) -> str:
    """How to convert a batch of another dtype: the fix its values call for."""
    bounds = _finite_range(X)
    if bounds is not None and bounds[1] > 1.0:
        return ("0-255 data: convert with x.astype(np.uint8), or to floats with "
                "x.astype(np.float32) / 255")
    if np.issubdtype(X.dtype, np.floating):
        return "data in [0, 1]: convert with x.astype(np.float32)"
    return "convert 0-255 data with x.astype(np.uint8), [0, 1] data with x.astype(np.float32)"


def image_shape(X: Any, name: str = "X", *, layout: str | None = None) -> tuple[int, int, int]:
    """The (C, H, W) of one image of the batch ``X``, by the layout rule of
    :func:`check_images` (which validates the batch's shape, not its values)."""
    if hasattr(X, "detach") and hasattr(X, "numpy"):
        X = X.detach().cpu().numpy()
    if not isinstance(X, np.ndarray):
        raise ValueError(f"{name} must be a numpy array, got {type(X).__name__}; {_FORMS}")
    c, h, w = _channels_first(X, name, layout).shape[1:]
    return int(c), int(h), int(w)


def display_rgb(images: np.ndarray) -> np.ndarray:
    """Images to draw: float32 (N, 3, H, W) in [0, 1] from any batch :func:`check_images`
    reads. Grey images are repeated into 3 channels, RGB(A) keeps its first three; other
    channel counts show their brightness (mean over channels) in grey."""
    x = check_images(images, "images", allow_empty=True)
    c = x.shape[1]
    if c in (3, 4):
        return np.ascontiguousarray(x[:, :3])
    grey = x[:, :1] if c == 1 else x.mean(axis=1, keepdims=True)
    return np.ascontiguousarray(np.repeat(grey, 3, axis=1))


def images_sha256(X: np.ndarray, chunk: int = 4096, *, layout: str | None = None) -> str:
    """SHA-256 of images quantised to uint8 (N, C, H, W), so the same images hash the same in
    either dtype and layout.

    Hashed ``chunk`` images at a time, so that a large float pool is never quantised whole.

    Raises
    ------
    ValueError
        ``X`` is not a valid batch of images (see :func:`check_images`).
    """
    digest = hashlib.sha256()
    for start in range(0, len(X), chunk):
        part = check_images(X[start:start + chunk], dtype=np.uint8, layout=layout)
        digest.update(part.tobytes())
    return digest.hexdigest()


def image_digests(images: np.ndarray) -> np.ndarray:
    """An 8-byte BLAKE2b digest of each image's bytes, as a (N,) ``S8`` array: byte-identical
    images share a digest. ``.view("<u8")`` reads them as 64-bit integers."""
    if len(images) == 0:
        return np.empty(0, dtype="S8")
    flat = np.ascontiguousarray(images).reshape(len(images), -1)
    return np.array([hashlib.blake2b(row.tobytes(), digest_size=8).digest() for row in flat],
                    dtype="S8")
