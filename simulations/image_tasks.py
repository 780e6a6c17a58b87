"""Detection tasks of other image shapes, built from the datasets that ship offline.

No colour dataset ships offline, so the shape tasks are made from Fashion-MNIST and MNIST:

- ``mnist``: the public protocol (MNIST digits normal, Fashion-MNIST pollution), 1x28x28;
- ``fashion``: the reverse protocol (Fashion-MNIST normal, MNIST digits as pollution), 1x28x28;
- ``<either>-tint32``: the same images padded to 32x32 and tinted into 3 channels with a
  random colour per image (normal images and pollution alike, so that colour tells nothing),
  3x32x32.

Every task has a pool (normal training images plus pollution), 10 trusted normal images
disjoint from it, a test set of held-out images from the official test splits (half normal,
half anomalies) and meta-training images of the normal dataset disjoint from both, for a
meta-model of the user's own (``fedsieve meta-train --data``).
"""

from __future__ import annotations

import colorsys
import os
from dataclasses import dataclass, field

import numpy as np

from fedsieve.shared.data.datasets import load_fashion_mnist, load_mnist

__all__ = ["TASKS", "ImageTask", "make_task", "pad_to", "tint"]

#: Task name -> (normal dataset, pollution dataset, tinted 32x32 colour or not).
TASKS = {
    "mnist": ("mnist", "fashion-mnist", False),
    "fashion": ("fashion-mnist", "mnist", False),
    "mnist-tint32": ("mnist", "fashion-mnist", True),
    "fashion-tint32": ("fashion-mnist", "mnist", True),
}
_LOADERS = {"mnist": load_mnist, "fashion-mnist": load_fashion_mnist}


@dataclass(frozen=True)
class ImageTask:
    """One detection task: uint8 (N, C, H, W) images everywhere, ``y`` 1 = anomaly."""

    name: str
    pool: np.ndarray
    pool_y: np.ndarray
    trusted: np.ndarray
    test: np.ndarray
    test_y: np.ndarray
    meta_images: np.ndarray
    meta_labels: np.ndarray
    sources: dict[str, dict] = field(default_factory=dict)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.pool.shape[1:])


def pad_to(images: np.ndarray, size: int) -> np.ndarray:
    """Grey (N, H, W) uint8 images centred on a black ``size`` x ``size`` canvas."""
    n, h, w = images.shape
    if h > size or w > size:
        raise ValueError(f"cannot pad {h}x{w} images to {size}x{size}")
    out = np.zeros((n, size, size), images.dtype)
    top, left = (size - h) // 2, (size - w) // 2
    out[:, top:top + h, left:left + w] = images
    return out


def tint(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Grey (N, H, W) uint8 images as (N, 3, H, W) uint8, each in its own random colour.

    A colour is a random hue at saturation 0.3-1 and full value: the grey level scales it, so
    black stays black and the brightest ink takes the colour.
    """
    hues, sats = rng.random(len(images)), rng.uniform(0.3, 1.0, len(images))
    colours = np.array([colorsys.hsv_to_rgb(h, s, 1.0) for h, s in zip(hues, sats)],
                       np.float32).reshape(-1, 3, 1, 1)
    return np.rint(images[:, None].astype(np.float32) * colours).astype(np.uint8)


def make_task(name: str, seed: int, *, n_normal: int = 4000, contamination: float = 0.2,
              n_test: int = 2000, n_meta: int = 4000, mnist_test_root: str | None = None
              ) -> ImageTask:
    """Build task ``name`` (see :data:`TASKS`) with every draw seeded by ``seed``.

    Parameters
    ----------
    name : str
        A key of :data:`TASKS`.
    seed : int
        Seeds which images are drawn and their colours (the test set is drawn with a fixed
        seed, so every seed is scored on the same test images).
    n_normal, contamination : int, float
        Normal pool images and the pollution's share of the pool.
    n_test : int
        Test images per side (normal, anomalies).
    n_meta : int
        Meta-training images of the normal dataset (disjoint from pool and trusted images).
        When the training split cannot hold both, what is left after the trusted images is
        shared half and half between the pool's normal images and the meta-training images.
    mnist_test_root : str, optional
        Folder of the official MNIST test split (``$FEDSIEVE_MNIST_TEST`` when unset).
    """
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; choose one of {', '.join(TASKS)}")
    normal_name, pollution_name, coloured = TASKS[name]
    rng = np.random.default_rng(seed)
    root = mnist_test_root or os.environ.get("FEDSIEVE_MNIST_TEST")
    roots = {"mnist": root, "fashion-mnist": None}
    normal = _LOADERS[normal_name]("train")
    pollution = _LOADERS[pollution_name]("train")
    normal_test = _LOADERS[normal_name]("test", root=roots[normal_name])
    pollution_test = _LOADERS[pollution_name]("test", root=roots[pollution_name])

    order = rng.permutation(len(normal.images))
    available = len(order) - 10
    if n_normal + n_meta > available:  # a small training split (the packaged MNIST digits)
        n_meta = min(n_meta, available // 2)
        n_normal = min(n_normal, available - n_meta)
    pool_rows, trusted_rows = order[:n_normal], order[n_normal:n_normal + 10]
    meta_rows = order[n_normal + 10:n_normal + 10 + n_meta]
    n_pol = int(round(n_normal * contamination / (1 - contamination)))
    pol_rows = rng.choice(len(pollution.images), n_pol, replace=False)
    test_rng = np.random.default_rng(1234)
    n_test = min(n_test, len(normal_test.images), len(pollution_test.images))
    test_normal = normal_test.images[test_rng.choice(len(normal_test.images), n_test, False)]
    test_pol = pollution_test.images[test_rng.choice(len(pollution_test.images), n_test, False)]

    def shaped(images: np.ndarray) -> np.ndarray:
        if not coloured:
            return images[:, None]
        return tint(pad_to(images, 32), rng)

    pool = shaped(np.concatenate([normal.images[pool_rows], pollution.images[pol_rows]]))
    pool_y = np.r_[np.zeros(len(pool_rows)), np.ones(n_pol)].astype(np.int64)
    test = shaped(np.concatenate([test_normal, test_pol]))
    test_y = np.r_[np.zeros(n_test), np.ones(n_test)].astype(np.int64)
    sources = {f"{normal_name} (normal)": normal.source.to_dict(),
               f"{pollution_name} (pollution)": pollution.source.to_dict(),
               f"{normal_name} test": normal_test.source.to_dict(),
               f"{pollution_name} test": pollution_test.source.to_dict()}
    return ImageTask(name, pool, pool_y, shaped(normal.images[trusted_rows]), test, test_y,
                     shaped(normal.images[meta_rows]), normal.labels[meta_rows].astype(np.int64),
                     sources)
