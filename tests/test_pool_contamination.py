"""The screening's pool contamination estimate: one estimator, from the verdicts."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedsieve.server.screening import ClientUpload, score_pool
from fedsieve.shared.detectors.threshold import DEFAULT_BUDGET, estimate_contamination


class FlagBright:
    """A stand-in detector: flags images brighter than 100 on average; no ``contamination_``
    unless given one."""

    def __init__(self, contamination: dict | None = None) -> None:
        self.contamination = contamination

    def fit(self, X: np.ndarray, trusted: np.ndarray | None = None) -> FlagBright:
        self.decision_scores_ = X.reshape(len(X), -1).mean(axis=1)
        self.threshold_ = 100.0
        self.labels_ = (self.decision_scores_ > self.threshold_).astype(np.int64)
        if self.contamination is not None:
            self.contamination_ = self.contamination
        return self


def uploads() -> dict[int, ClientUpload]:
    """Two nodes, 40 images each; 10 of the 80 are bright."""
    x = np.zeros((80, 28, 28), np.uint8)
    x[::8] = 255
    return {node: ClientUpload(node, x[i * 40:(i + 1) * 40], np.arange(40, dtype=np.int64), 40)
            for i, node in enumerate((5, 9))}


def test_detector_without_an_estimate_gets_one_from_its_verdicts():
    scoring = score_pool(uploads(), np.zeros((2, 28, 28), np.uint8), FlagBright)
    assert sum(int(v.verdicts.sum()) for v in scoring.verdicts.values()) == 10
    assert scoring.contamination == estimate_contamination(10, 80, DEFAULT_BUDGET)
    low, estimate, high = (scoring.contamination[k] for k in ("low", "estimate", "high"))
    assert low <= estimate <= high and estimate == pytest.approx((10 / 80 - 0.01) / 0.99)


def test_the_estimate_is_the_verdicts_with_the_detectors_budget():
    # A detector's own contamination_ is not copied: every path (whole pool, bounded fit,
    # local screening) estimates from the verdicts with the detector's false-drop budget.
    scoring = score_pool(uploads(), np.zeros((2, 28, 28), np.uint8),
                         lambda: FlagBright({"estimate": 0.9, "low": 0.8, "high": 1.0,
                                             "confidence": 0.95}))
    assert scoring.contamination == estimate_contamination(10, 80, DEFAULT_BUDGET)

    class Budgeted(FlagBright):
        false_drop_budget = 0.05

    scoring = score_pool(uploads(), np.zeros((2, 28, 28), np.uint8), Budgeted)
    assert scoring.contamination == pytest.approx(estimate_contamination(10, 80, 0.05))
    assert all(type(v) is float for v in scoring.contamination.values())
    assert set(scoring.verdicts) == {5, 9}


def test_empty_pool_knows_nothing():
    scoring = score_pool({}, np.zeros((2, 28, 28), np.uint8), FlagBright)
    assert scoring.verdicts == {} and math.isnan(scoring.threshold)
    assert (scoring.contamination["low"], scoring.contamination["high"]) == (0.0, 1.0)
