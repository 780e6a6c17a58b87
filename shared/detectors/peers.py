"""scikit-learn and PyOD outlier detectors behind the fedsieve estimator contract."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
from sklearn.base import BaseEstimator, clone
from sklearn.ensemble import IsolationForest
from sklearn.utils._param_validation import HasMethods

from fedsieve.shared.detectors.base import BaseDetector


class PeerAdapter(BaseDetector):
    """Run a scikit-learn or PyOD outlier detector on flattened pixels, as a fedsieve detector.

    A meta-estimator: the wrapped ``estimator`` is a parameter (``get_params(deep=True)``
    shows its own as ``estimator__<name>``) and is never fitted itself; ``fit`` fits a fresh
    copy, ``estimator_``, built with this adapter's ``random_state`` when the estimator has
    one. The estimator sees float32 images in [0, 1] flattened to (N, C * H * W). Its scores are
    oriented so that higher = more anomalous: PyOD's ``decision_function`` as is,
    scikit-learn's ``score_samples`` negated. Verdicts come from the fedsieve threshold
    policies, not from the estimator's own ``contamination``. One round, trusted images only
    inform the threshold.

    Parameters
    ----------
    estimator : estimator, optional
        Unfitted outlier detector with ``fit(X)`` and either ``decision_function`` (PyOD) or
        ``score_samples`` (scikit-learn). None: ``IsolationForest(n_estimators=200,
        n_jobs=1)``.
    name : str, optional
        Label used in reports (the registry name, e.g. ``"iforest"``).
    threshold_policy : {"gmm", "budget", "trusted-quantile", "contamination", "fixed"}
        Default "gmm".
        See :mod:`fedsieve.shared.detectors.threshold`.
    threshold_value : float, optional
        Parameter of the policy.
    random_state : int, optional, default=0
        Given to the estimator's copy (overriding its own) and to the threshold's mixture.

    Attributes
    ----------
    estimator_ : estimator
        The fitted copy of ``estimator``.
    decision_scores_ : ndarray of shape (n_pool,)
        Scores of the pool (float64, higher = more anomalous).
    trusted_scores_ : ndarray of shape (n_trusted,) or None
        Scores of the trusted images, when ``fit`` got some.
    threshold_ : float
        Scores above it are anomalies.
    labels_ : ndarray of shape (n_pool,)
        Verdicts on the pool (int64, 1 = anomaly).
    contamination_ : dict
        Estimated pollution share of the pool with a 95 % interval (see BaseDetector).
    history_ : list of dict
        One entry (round 0): threshold, flagged count, elapsed seconds, ``auc`` with ``y_true``.
    data_hashes_ : dict
        SHA-256 of the pool and of the trusted images.
    fit_time_ : float
        Seconds ``fit`` took.
    n_features_in_ : int
        Values per image (C * H * W).
    image_shape_ : tuple of int
        (C, H, W) of the fitted images; ``decision_function`` scores only that shape.

    Examples
    --------
    >>> from sklearn.ensemble import IsolationForest
    >>> det = PeerAdapter(estimator=IsolationForest(n_estimators=50), name="iforest")
    >>> det.get_params()["estimator__n_estimators"]
    50
    """

    _parameter_constraints: ClassVar[dict[str, list[Any]]] = {
        **BaseDetector._parameter_constraints,
        "estimator": [HasMethods(["fit"]), None],
        "name": [str, None],
    }

    def __init__(
        self,
        *,
        estimator: Any = None,
        name: str | None = None,
        threshold_policy: str = "gmm",
        threshold_value: float | None = None,
        random_state: int | None = 0,
    ) -> None:
        self.estimator = estimator
        self.name = name
        self.threshold_policy = threshold_policy
        self.threshold_value = threshold_value
        self.random_state = random_state

    def _train(self, X: np.ndarray, trusted: np.ndarray | None) -> None:
        template = self.estimator if self.estimator is not None else isolation_forest()
        self.estimator_ = _seeded_copy(template, self.random_state, int(X[0].size))
        self.estimator_.fit(X.reshape(len(X), -1))

    def _score(self, X: np.ndarray) -> np.ndarray:
        flat = X.reshape(len(X), -1)
        if hasattr(self.estimator_, "decision_scores_"):  # PyOD: higher = more anomalous
            return np.asarray(self.estimator_.decision_function(flat), dtype=np.float64)
        return -np.asarray(self.estimator_.score_samples(flat), dtype=np.float64)


def isolation_forest() -> IsolationForest:
    """The default wrapped estimator (and the registry's ``iforest``): scikit-learn's
    IsolationForest with 200 trees on one core."""
    return IsolationForest(n_estimators=200, n_jobs=1)


def _seeded_copy(estimator: BaseEstimator, random_state: int | None,
                 n_features: int | None = None) -> BaseEstimator:
    """An unfitted copy of ``estimator`` constructed with ``random_state`` and, for an
    estimator sized by an ``n_features`` parameter (PyOD's DeepSVDD), ``n_features`` (when
    it has them).

    Through the constructor rather than ``set_params``: PyOD's DeepSVDD seeds torch in its
    ``__init__``, so a seed set afterwards would not reach its weight initialisation.
    """
    params = clone(estimator).get_params(deep=False)
    if "random_state" in params:
        params["random_state"] = random_state
    if n_features is not None and "n_features" in params:  # PyOD's deep models size by it
        params["n_features"] = n_features
    return type(estimator)(**params)
