"""Thin adapter so scikit-learn and PyOD detectors run through the same estimator contract."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from fedsieve.shared.detectors.base import BaseDetector, images_sha256


class PeerAdapter(BaseDetector):
    """Wrap any scikit-learn or PyOD outlier detector working on flattened pixels.

    The wrapped estimator sees float32 images in [0, 1] flattened to (N, 784). Its scores are
    oriented so that higher = more anomalous: PyOD's ``decision_function`` as is, and
    scikit-learn's ``score_samples`` negated. Thresholding uses the fedsieve policies, not
    the estimator's own ``contamination``.

    Parameters
    ----------
    factory : callable
        ``factory(random_state) -> estimator`` with ``fit(X)`` and either
        ``decision_function`` (PyOD) or ``score_samples`` (scikit-learn).
    name : str
        Label used in reports.
    threshold_policy, threshold_value, random_state
        As for every detector.
    """

    def __init__(
        self,
        factory: Callable[[int | None], Any],
        name: str = "peer",
        threshold_policy: str = "gmm",
        threshold_value: float | None = None,
        random_state: int | None = 0,
    ) -> None:
        self.factory = factory
        self.name = name
        self.threshold_policy = threshold_policy
        self.threshold_value = threshold_value
        self.random_state = random_state

    def _fit(self, X: np.ndarray, seed: np.ndarray | None) -> None:
        t0 = time.perf_counter()
        self.estimator_ = self.factory(self.random_state)
        self.estimator_.fit(X.reshape(len(X), -1))
        self.fit_time_ = time.perf_counter() - t0
        self.data_hashes_ = {"pool_sha256": images_sha256(X)}

    def _score(self, X: np.ndarray) -> np.ndarray:
        flat = X.reshape(len(X), -1)
        if hasattr(self.estimator_, "decision_scores_"):  # PyOD: higher = more anomalous
            return np.asarray(self.estimator_.decision_function(flat), dtype=np.float64)
        return -np.asarray(self.estimator_.score_samples(flat), dtype=np.float64)


def iforest_factory(n_estimators: int = 200) -> Callable[[int | None], Any]:
    """scikit-learn IsolationForest on raw pixels."""
    from sklearn.ensemble import IsolationForest

    def make(seed: int | None) -> Any:
        return IsolationForest(n_estimators=n_estimators, random_state=seed, n_jobs=1)

    return make


def deepsvdd_factory(epochs: int = 10, batch_size: int = 128) -> Callable[[int | None], Any]:
    """PyOD DeepSVDD (one-class hypersphere on an MLP) on raw pixels."""
    from pyod.models.deep_svdd import DeepSVDD

    def make(seed: int | None) -> Any:
        return DeepSVDD(n_features=784, epochs=epochs, batch_size=batch_size, verbose=0,
                        random_state=seed, preprocessing=False)

    return make
