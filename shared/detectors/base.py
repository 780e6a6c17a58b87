"""Input validation and the estimator contract every fedsieve detector follows.

The contract follows scikit-learn/PyOD: the constructor only stores hyper-parameters;
``fit(X, trusted=None)`` learns and returns ``self`` and sets ``decision_scores_`` (scores
of the fitted pool), ``threshold_`` and ``labels_``; ``decision_function(X)`` scores new
images (higher = more anomalous); ``predict(X)`` returns 1 for anomalies.
"""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np

from fedsieve.shared.detectors.threshold import _check_policy, compute_threshold
from fedsieve.shared.images import as_float_images, as_uint8_images


def check_images(X: Any, name: str = "X", allow_empty: bool = False) -> np.ndarray:
    """Validate images and return them as float32 in [0, 1] of shape (N, 28, 28).

    See :mod:`fedsieve.shared.images` for what is accepted; a torch tensor is treated like
    its array.

    Raises
    ------
    ValueError
        Wrong type, shape or dtype, NaN/inf, values outside [0, 1], or no images; the message
        says what was wrong and how to fix it.
    """
    return as_float_images(X, name, allow_empty)


def images_sha256(X: np.ndarray, chunk: int = 4096) -> str:
    """SHA-256 of validated images quantised back to uint8 (stable across input dtypes).

    Hashed ``chunk`` images at a time, so a large float pool is never quantised whole.
    """
    import hashlib

    digest = hashlib.sha256()
    for start in range(0, len(X), chunk):
        digest.update(np.ascontiguousarray(as_uint8_images(X[start:start + chunk])).tobytes())
    return digest.hexdigest()


class BaseDetector:
    """Shared estimator plumbing: parameters, validation, thresholding, ``predict``.

    Subclasses implement ``_fit(X, seed)`` (float32 (N, 28, 28) arrays) and ``_score(X)``
    (float32 array -> float64 scores) and declare their hyper-parameters as keyword
    arguments of ``__init__`` stored under the same attribute names.
    """

    #: Whether ``fit`` requires trusted normal seeds.
    requires_trusted: bool = False
    threshold_policy: str
    threshold_value: float | None
    random_state: int | None

    # -- scikit-learn style parameter handling --------------------------------------------
    @classmethod
    def _param_names(cls) -> list[str]:
        sig = inspect.signature(cls.__init__)
        return [p for p in sig.parameters if p != "self"]

    def get_params(self, deep: bool = False) -> dict[str, Any]:
        """Constructor parameters, as in scikit-learn."""
        return {k: getattr(self, k) for k in self._param_names()}

    def set_params(self, **params: Any) -> BaseDetector:
        """Set constructor parameters, as in scikit-learn."""
        for k, v in params.items():
            if k not in self._param_names():
                raise ValueError(f"{type(self).__name__} has no parameter {k!r}")
            setattr(self, k, v)
        return self

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"

    # -- public API ------------------------------------------------------------------------
    def fit(self, X: Any, trusted: Any = None) -> BaseDetector:
        """Fit on the (possibly polluted) pool ``X``.

        Parameters
        ----------
        X : array-like
            Pool images, uint8 (N, 28, 28) or float32 in [0, 1] ((N, 28, 28) or (N, 1, 28, 28)).
        trusted : array-like, optional
            The 5-10 trusted normal images. Required by detectors with ``requires_trusted``;
            others use them only for the ``"trusted-quantile"`` threshold.

        Returns
        -------
        self
        """
        _check_policy(self.threshold_policy, self.threshold_value)
        pool = check_images(X, "X")
        seed = None if trusted is None else check_images(trusted, "trusted")
        if self.requires_trusted and seed is None:
            raise ValueError(
                f"{type(self).__name__} needs trusted normal images: pass trusted= "
                "(5-10 known-normal images)"
            )
        self._fit(pool, seed)
        self.decision_scores_ = self._score(pool)
        self.trusted_scores_ = None if seed is None else self._score(seed)
        self.threshold_ = self._threshold(self.decision_scores_, self.trusted_scores_)
        self.labels_ = (self.decision_scores_ > self.threshold_).astype(np.int64)
        self.n_features_in_ = 784
        return self

    def decision_function(self, X: Any) -> np.ndarray:
        """Anomaly scores, higher = more anomalous, float64 of shape (N,)."""
        self._check_fitted()
        return self._score(check_images(X, "X"))

    def predict(self, X: Any) -> np.ndarray:
        """Verdicts, int64 of shape (N,): 1 = anomaly, 0 = normal."""
        return (self.decision_function(X) > self.threshold_).astype(np.int64)

    def fit_predict(self, X: Any, trusted: Any = None) -> np.ndarray:
        """``fit`` then return ``labels_``."""
        return self.fit(X, trusted).labels_

    # -- helpers for subclasses -------------------------------------------------------------
    def _threshold(self, pool_scores: np.ndarray, trusted_scores: np.ndarray | None) -> float:
        return compute_threshold(
            self.threshold_policy,
            pool_scores,
            trusted_scores,
            self.threshold_value,
            random_state=0 if self.random_state is None else int(self.random_state),
        )

    def _check_fitted(self) -> None:
        if not hasattr(self, "threshold_"):
            raise ValueError(f"this {type(self).__name__} is not fitted yet; call fit() first")

    def _fit(self, X: np.ndarray, seed: np.ndarray | None) -> None:  # pragma: no cover
        raise NotImplementedError

    def _score(self, X: np.ndarray) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError
