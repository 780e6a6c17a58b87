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

from fedsieve.shared.data.datasets import load_fashion_mnist, load_mnist
from fedsieve.simulations.zoo import Material, PollutionKind, parse_pollution

#: Test AUC of the paper's Table I: method -> (trained on clean data, on polluted data).
PAPER_TABLE_1 = {"AnoGAN": (0.99, 0.46), "EGBAD": (0.98, 0.52), "Rt-BiGAN": (0.98, 0.84)}
#: The contamination of the paper's polluted training set and of its Fig. 4.
PAPER_CONTAMINATION = 0.2
#: Test images per side (MNIST digits, Fashion-MNIST) of the benchmark test set.
TEST_PER_SIDE = 2000
#: Seed of the test-set draw; each side is drawn with its own generator from it.
TEST_SEED = 1234
#: The peers' settings in the detection, pollution and shape benchmarks, where every detector
#: fits hundreds of pools: each sized to fit a 4,000-5,000-image pool in about a minute on one
#: thread. The paper benchmarks (``benchmarks/papers_*.py``) use each paper's own settings.
PEER_SETTINGS: dict[str, dict] = {
    "egbad": {"steps": 1000},
    "anogan": {"steps": 1000, "latent_steps": 20},
    "iforest": {},
    "deepsvdd": {"estimator__epochs": 5},
    # The paper detectors at a fraction of their defaults' steps (2,500, 600 + 2 x 200 and
    # 2 x 1,500), which fit one pool in 3-5 minutes.
    "adegan": {"steps": 600},
    "agad": {"width": 16, "steps": 200, "refine_steps": 100},
    "anoean": {"steps": 300},
}

#: ``fitted(detector, contamination)``: the :func:`detection_test_set` scores of an identical
#: detector already fitted on that pool (e.g. by a sweep cell), or None.
FittedScores = Callable[[object, float], "np.ndarray | None"]


class DetectionTestSet(NamedTuple):
    """Normal MNIST test digits, then as many anomalies (Fashion-MNIST test images by default)."""

    x: np.ndarray  #: uint8 (2n, 28, 28)
    y: np.ndarray  #: 0 = MNIST digit, 1 = anomaly
    sources: dict[str, dict]  #: where each half came from (:class:`DataSource` dicts)
    kinds: np.ndarray | None = None  #: the anomalies' pollution kinds ("" for normal)


def detection_test_set(mnist_root: str | os.PathLike | None = None,
                       fashion_root: str | os.PathLike | None = None,
                       per_side: int = TEST_PER_SIDE,
                       pollution: str | PollutionKind = "fashion") -> DetectionTestSet:
    """Up to ``per_side`` MNIST test digits (normal) and as many anomalies of ``pollution``.

    The anomalies are made from the test splits the way the harness makes pollution from the
    training splits (:mod:`fedsieve.simulations.zoo`): Fashion-MNIST test images, corrupted
    copies of the normal test digits, blank frames, ... With a held-out class, the normal side
    holds no digit of that class and the anomalies are test digits of it.

    Parameters
    ----------
    mnist_root, fashion_root : path, optional
        Data folders searched first for each dataset (e.g. the official MNIST test split for
        the digits); the loaders' usual order otherwise. With the packaged MNIST sample the
        digit side holds its 1,000 hold-out digits. They are separate because a folder that
        holds IDX files directly would be read as either dataset.
    per_side : int
        Images per side at most.
    pollution : str or PollutionKind
        The anomalies (default ``"fashion"``: the paper's test set).
    """
    mix = parse_pollution(pollution)
    digits = load_mnist("test", root=mnist_root)
    held = mix.held_out_class
    normal = np.ones(len(digits.labels), bool) if held is None else digits.labels != held
    candidates = np.flatnonzero(normal)
    sources = {"mnist": digits.source.to_dict()}
    fashion_images = None
    n = min(per_side, len(candidates))
    if mix.needs_fashion:
        fashion = load_fashion_mnist("test", root=fashion_root)
        sources["fashion-mnist"] = fashion.source.to_dict()
        n = min(n, len(fashion.images))
        pick_fashion = np.random.default_rng(TEST_SEED).choice(len(fashion.images), n,
                                                               replace=False)
        fashion_images = fashion.images[pick_fashion]
    pick = candidates[np.random.default_rng(TEST_SEED).choice(len(candidates), n, replace=False)]
    made = mix.sample_with_kinds(n, np.random.default_rng(TEST_SEED + 1), Material(
        digits.images[pick], digits.labels[pick].astype(np.int64), fashion_images,
        digits.images[~normal], digits.labels[~normal].astype(np.int64)))
    x = np.concatenate([digits.images[pick], made.images])
    y = np.r_[np.zeros(n), np.ones(n)].astype(int)
    return DetectionTestSet(x, y, sources, np.concatenate([np.full(n, ""), made.kinds]))
