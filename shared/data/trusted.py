"""The server's trusted images: a handful of normal images the operator vouches for.

The trusted file is an ``.npz`` with ``x`` (uint8 or float in [0, 1], in any layout
:func:`~fedsieve.shared.data.images.check_images` reads; written as uint8 (k, C, H, W)) and an
optional ``y``. :func:`draw_trusted_indices` is the one draw both the simulation harness and
a ServerApp without a trusted file use, so that they are the same images the harness kept
out of every client.
"""

from __future__ import annotations

import warnings
from logging import WARNING
from pathlib import Path

import numpy as np
from flwr.common.logger import log

from fedsieve.shared.data.images import check_images

#: Mixed into the RNG seed so that this draw is independent of every other use of that seed.
TRUSTED_STREAM = 0x5EED
MIN_TRUSTED = 1
#: Fewer trusted images than this draw :class:`FewTrustedImagesWarning`.
RECOMMENDED_TRUSTED = 5
#: What fewer trusted images cost, measured by ``benchmarks/trusted_count.py``
#: (``benchmarks/results/trusted-count.md``): the default Rt-BiGAN on 5,000-image MNIST pools
#: with 20 % pollution, 3 seeds, the smaller trusted sets part of the larger ones.
FEW_TRUSTED_COST = (
    "with 3 trusted digits one of 3 seeds broke down on occluded-digit pollution (test AUC "
    "0.775, 57 % of the normal digits dropped), where 5 and 10 gave test AUC 0.936-0.938 and "
    "dropped 1.5 % of the normal digits on every seed; on Fashion-MNIST pollution 3 cost "
    "nothing measurable (test AUC 0.9996 against 0.9997 with 10, 0.5 % of the normal digits "
    "dropped either way). Default Rt-BiGAN, 5,000-image MNIST pools with 20 % pollution "
    "(benchmarks/results/trusted-count.md)")


class FewTrustedImagesWarning(UserWarning):
    """Fewer than :data:`RECOMMENDED_TRUSTED` trusted images: screening works, less well."""


class TrustedFileError(ValueError):
    """The trusted file is missing, unreadable or holds the wrong arrays."""


def warn_if_few_trusted(count: int, stacklevel: int = 3) -> None:
    """Warn (a :class:`FewTrustedImagesWarning` and a Flower log WARNING) when ``count`` is
    below :data:`RECOMMENDED_TRUSTED`, quoting the measured cost; ``stacklevel`` as in
    :func:`warnings.warn`, counted from this function (3: the caller's caller)."""
    if count >= RECOMMENDED_TRUSTED:
        return
    message = (f"fedsieve: only {count} trusted image{'s' if count != 1 else ''}; give "
               f"{RECOMMENDED_TRUSTED}-10 normal images the operator vouches for. Measured "
               f"cost of fewer: {FEW_TRUSTED_COST}")
    log(WARNING, "%s", message)
    warnings.warn(message, FewTrustedImagesWarning, stacklevel=stacklevel)


def draw_trusted_indices(labels: np.ndarray, size: int, seed: int) -> np.ndarray:
    """Indices of ``size`` trusted images, cycling through the classes so each digit shows.

    Parameters
    ----------
    labels : numpy.ndarray
        Labels of the split the trusted images come from.
    size : int
        Number of trusted images (the paper uses 5-10).
    seed : int
        Seed of the draw.
    """
    if size < 0:
        raise ValueError(f"trusted set size must be >= 0, got {size}")
    rng = np.random.default_rng([seed, TRUSTED_STREAM])
    classes = np.unique(labels)
    by_class = [rng.permutation(np.flatnonzero(labels == c)) for c in classes]
    picks = [by_class[i % len(classes)][i // len(classes)] for i in range(size)]
    return np.asarray(picks, dtype=np.int64)


def save_trusted_file(path: str | Path, images: np.ndarray,
                      labels: np.ndarray | None = None) -> Path:
    """Write a trusted file (``x``, and ``y`` when labels are given).

    ``images`` are validated like every image input: uint8, or float32 in [0, 1] (stored as
    the nearest uint8 level).
    """
    path = Path(path)
    arrays = {"x": check_images(images, "trusted images", dtype=np.uint8)}
    if labels is not None:
        arrays["y"] = np.asarray(labels, dtype=np.int64)
    np.savez_compressed(path, **arrays)
    return path


def load_trusted_file(path: str | Path) -> np.ndarray:
    """Read and validate a trusted file; returns uint8 images (k, C, H, W).

    Raises
    ------
    TrustedFileError
        Missing file, not an ``.npz`` without pickles, no ``x``, wrong shape or dtype, or
        fewer than one image.
    """
    path = Path(path)
    if not path.is_file():
        raise TrustedFileError(f"trusted file {path} does not exist; write one with "
                            "`fedsieve pollute --out DIR` (DIR/trusted.npz) or "
                            "fedsieve.shared.data.trusted.save_trusted_file")
    try:
        with np.load(path, allow_pickle=False) as npz:
            if "x" not in npz.files:
                raise TrustedFileError(f"{path} holds {npz.files}; the trusted images must be "
                                    "stored under 'x'")
            raw = npz["x"]
    except TrustedFileError:
        raise
    except Exception as err:  # corrupt zip, pickled object arrays, not an npz at all
        raise TrustedFileError(f"{path} is not a readable .npz trusted file ({err})") from err
    try:
        images = check_images(raw, f"trusted images in {path}", dtype=np.uint8, allow_empty=True)
    except ValueError as err:
        raise TrustedFileError(str(err)) from err
    if len(images) < MIN_TRUSTED:
        raise TrustedFileError(f"{path} holds no images; give 5-10 trusted normal images")
    return images
