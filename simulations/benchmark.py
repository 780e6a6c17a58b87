"""The fixed references of the detection figures: the benchmark test set and the paper's Table I.

The sweep's detector-only runs, the paper figures (:mod:`fedsieve.simulations.paper_figures`)
and ``benchmarks/detection.py`` all score on :func:`detection_test_set` and quote
:data:`PAPER_TABLE_1` from here.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from fedsieve.shared.data import load_fashion_mnist, load_mnist

#: Test AUC of the paper's Table I: method -> (trained on clean data, on polluted data).
PAPER_TABLE_1 = {"AnoGAN": (0.99, 0.46), "EGBAD": (0.98, 0.52), "Rt-BiGAN": (0.98, 0.84)}
#: The contamination of the paper's polluted training set and of its Fig. 4.
PAPER_CONTAMINATION = 0.2
#: Test images per side (MNIST digits, Fashion-MNIST) of the benchmark test set.
TEST_PER_SIDE = 2000
#: Seed of the test-set draw; each side is drawn with its own generator from it.
TEST_SEED = 1234

#: ``fitted(detector, contamination)``: the :func:`detection_test_set` scores of an identical
#: detector already fitted on that pool (e.g. by a sweep cell), or None.
FittedScores = Callable[[object, float], "np.ndarray | None"]


class DetectionTestSet(NamedTuple):
    """Normal MNIST test digits, then as many Fashion-MNIST test images (the anomalies)."""

    x: np.ndarray  #: uint8 (2n, 28, 28)
    y: np.ndarray  #: 0 = MNIST digit, 1 = Fashion-MNIST
    sources: dict[str, dict]  #: where each half came from (:class:`DataSource` dicts)


def detection_test_set(mnist_root: str | os.PathLike | None = None,
                       fashion_root: str | os.PathLike | None = None,
                       per_side: int = TEST_PER_SIDE) -> DetectionTestSet:
    """Up to ``per_side`` MNIST test digits (normal) and as many Fashion-MNIST test images.

    Parameters
    ----------
    mnist_root, fashion_root : path, optional
        Data folders searched first for each dataset (e.g. the official MNIST test split for
        the digits); the loaders' usual order otherwise. With the packaged MNIST sample the
        digit side holds its 1,000 hold-out digits. They are separate because a folder that
        holds IDX files directly would be read as either dataset.
    per_side : int
        Images per side at most.
    """
    digits = load_mnist("test", root=mnist_root)
    fashion = load_fashion_mnist("test", root=fashion_root)
    n = min(per_side, len(digits.images), len(fashion.images))
    pick_digits = np.random.default_rng(TEST_SEED).choice(len(digits.images), n, replace=False)
    pick_fashion = np.random.default_rng(TEST_SEED).choice(len(fashion.images), n, replace=False)
    x = np.concatenate([digits.images[pick_digits], fashion.images[pick_fashion]])
    y = np.r_[np.zeros(n), np.ones(n)].astype(int)
    return DetectionTestSet(x, y, {"mnist": digits.source.to_dict(),
                                   "fashion-mnist": fashion.source.to_dict()})
