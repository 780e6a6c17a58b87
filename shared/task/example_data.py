"""The example task's datasets: the built-in MNIST / Fashion-MNIST, or the user's own.

The example ServerApp, ClientApp and the simulation harness name their data by one string:

- ``"mnist"`` or ``"fashion-mnist"``: the offline loaders of :mod:`fedsieve.shared.data.datasets`,
  their ``"train"`` and official ``"test"`` splits;
- anything else: a labelled source :func:`fedsieve.shared.data.sources.load_images` reads (an
  ``.npz`` with ``x`` and ``y``, an ImageFolder directory, a Hugging Face dataset saved with
  ``save_to_disk``), of any image shape. Such a source has no splits: the test set is a
  second source.

Images come back as uint8 ``(N, C, H, W)`` for a user's source and as the loaders give them
(``(N, 28, 28)``) for the built-in ones; everything downstream takes either
(:func:`fedsieve.shared.data.images.check_images`).
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from fedsieve.shared.data.datasets import ImageSet, image_set, load_fashion_mnist, load_mnist
from fedsieve.shared.data.images import check_images, format_shape, image_shape

if TYPE_CHECKING:  # torch is imported only when a classifier is built: settings stay light
    from torch import nn

#: Built-in dataset names and their loaders.
BUILTIN = {"mnist": load_mnist, "fashion-mnist": load_fashion_mnist}

__all__ = ["BUILTIN", "dataset_classes", "example_classifier", "example_test_set", "load_dataset",
           "match_shape", "other_builtin"]


def load_dataset(spec: str, split: str = "train", *,
                 root: str | os.PathLike | None = None) -> ImageSet:
    """Load dataset ``spec`` (a built-in name or a labelled source, see the module docstring).

    Parameters
    ----------
    spec : str
        ``"mnist"``, ``"fashion-mnist"`` or a path :func:`~fedsieve.shared.data.sources.load_images`
        reads.
    split : {"train", "test"}
        The split of a built-in dataset; a path has none and is read whole.
    root : path, optional
        Data folder the built-in loaders search first.

    Raises
    ------
    ValueError
        A source without labels (the example task trains a classifier on them).
    """
    if spec in BUILTIN:
        return BUILTIN[spec](split, root=root)
    return _load_source(os.path.abspath(spec))


@lru_cache(maxsize=4)
def _load_source(path: str) -> ImageSet:
    from fedsieve.shared.data.sources import load_images

    loaded = load_images(path)
    if loaded.labels is None:
        raise ValueError(f"{path} holds no labels; the example task trains a classifier, so "
                         "give it labelled images (an .npz with x and y, or an ImageFolder)")
    images = check_images(loaded.images, path, dtype=np.uint8)
    return image_set(Path(path).name, "all", "path", path, images, loaded.labels)


def other_builtin(spec: str) -> str:
    """The built-in dataset that pollutes ``spec`` by default: Fashion-MNIST for everything
    but Fashion-MNIST itself, whose pollution is MNIST digits (the reverse protocol)."""
    return "mnist" if spec == "fashion-mnist" else "fashion-mnist"


def dataset_classes(labels: np.ndarray) -> int:
    """Number of classes of a labelled training set: its largest label plus one (at least 2)."""
    return max(int(np.max(labels)) + 1 if len(labels) else 0, 2)


def match_shape(images: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """``images`` (any accepted layout) as uint8 (N, C, H, W) of ``shape`` (C, H, W).

    Sizes are matched by bilinear (antialiased) resizing; one grey channel is repeated into C,
    and C channels become one grey channel by their mean. Other channel counts cannot be
    converted and raise ValueError. Images of the shape already come back unchanged.
    """
    from fedsieve.shared.data.sources import resize_images

    x = check_images(images, "images", dtype=np.uint8)
    c, h, w = (int(s) for s in shape)
    have = image_shape(x)
    if have == (c, h, w):
        return x
    if have[0] != c and 1 not in (have[0], c):
        raise ValueError(f"cannot turn {format_shape(have)} images into {format_shape(shape)} "
                         "ones: only 1 <-> C channels convert; give pollution of the "
                         "dataset's channel count")
    # A copy: the loaders' cached arrays are read-only, and torch wants writable memory.
    x = resize_images(np.array(x), (h, w))
    if have[0] == c:
        return x
    if have[0] == 1:
        return np.ascontiguousarray(np.repeat(x, c, axis=1))
    return np.rint(x.mean(axis=1, keepdims=True)).astype(np.uint8)


def example_classifier(task) -> nn.Module:
    """The example task's classifier (:class:`~fedsieve.shared.task.classifier.DigitNet`), sized
    from the images and classes of ``task.dataset`` (a :class:`~fedsieve.shared.config.
    TaskSettings`), so that the server and every client build the same network."""
    from fedsieve.shared.task.classifier import DigitNet

    if task.dataset == "mnist":
        return DigitNet()
    train = load_dataset(task.dataset, "train", root=task.data_root or None)
    return DigitNet(dataset_classes(train.labels), image_shape(train.images))


def example_test_set(task) -> ImageSet:
    """The server's test set: ``task.test_dataset``, or the built-in dataset's test split."""
    return load_dataset(task.test_dataset or task.dataset, "test", root=task.data_root or None)
