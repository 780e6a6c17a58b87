"""The estimator contract every fedsieve detector follows, and the one ``fit`` that runs it.

The contract is scikit-learn's (and PyOD's): the keyword-only constructor only stores
hyper-parameters, declared in ``_parameter_constraints`` and validated when ``fit`` starts;
``fit(X, trusted=None, **fit_params)`` learns and returns ``self``; ``decision_function(X)``
scores new images (higher = more anomalous); ``predict(X)`` returns 1 for anomalies.

A fit runs in rounds. A subclass's ``_fit`` trains and, at the end of each round, hands the
pool scores of its model as it then is to :meth:`RoundRecorder.end_round`, which fits the
threshold on them, sets ``decision_scores_``, ``threshold_`` and ``labels_``, appends to
``history_`` and calls the caller's callback. The last round's scores and threshold are the
fitted ones: nothing scores the pool or fits the threshold again afterwards.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from numbers import Integral, Real
from typing import Any, ClassVar

import numpy as np
import torch
from sklearn.base import BaseEstimator
from sklearn.metrics import roc_auc_score
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted

from fedsieve.shared.data.images import check_images, format_shape, images_sha256
from fedsieve.shared.detectors.explanation import Explanation
from fedsieve.shared.detectors.threshold import (
    DEFAULT_BUDGET,
    POLICIES,
    check_policy_value,
    compute_threshold,
    estimate_contamination,
)
from fedsieve.shared.devices import resolve_device

#: ``callback(detector, round)``, called at the end of every round of a fit.
FitCallback = Callable[["BaseDetector", int], None]


class BaseDetector(BaseEstimator):
    """Base of every fedsieve detector: validation, the rounds of a fit, thresholds, verdicts.

    Not used directly. A subclass declares its hyper-parameters as keyword-only arguments of
    ``__init__`` (stored under the same names) and in ``_parameter_constraints``, implements
    ``_score(X)`` (float32 (N, C, H, W) -> float64 (N,), higher = more anomalous) and either
    ``_train(X, trusted)`` (one round: train, then the pool is scored once) or, for a detector
    that trains in several rounds, ``_fit(X, trusted, rounds)``.

    Parameters
    ----------
    threshold_policy : {"budget", "gmm", "trusted-quantile", "contamination", "fixed"}
        How scores become verdicts; see :mod:`fedsieve.shared.detectors.threshold`.
    threshold_value : float, optional
        Parameter of the policy.
    random_state : int, optional
        Seeds every random draw of the fit, the threshold's mixture included.

    Attributes
    ----------
    decision_scores_ : ndarray of shape (n_pool,)
        Anomaly scores of the fitted pool (float64, higher = more anomalous).
    trusted_scores_ : ndarray of shape (n_trusted,) or None
        Scores of the trusted images; None when ``fit`` got none.
    threshold_ : float
        Scores above it are anomalies.
    labels_ : ndarray of shape (n_pool,)
        Verdicts on the pool (int64, 1 = anomaly).
    contamination_ : dict
        Estimated share of pollution in the pool with a 95 % interval (``estimate``, ``low``,
        ``high``, ``confidence``), from the verdicts corrected for the false-drop budget
        (:func:`~fedsieve.shared.detectors.threshold.estimate_contamination`).
    history_ : list of dict
        One entry per round: ``round``, ``threshold``, ``n_flagged``, ``changed`` (fraction of
        pool labels changed since the previous round, 1.0 in round 0), ``elapsed_s``, and
        ``auc`` on the pool when ``fit`` got ``y_true`` with both classes.
    data_hashes_ : dict
        SHA-256 of the pool (``pool_sha256``) and of the trusted images (``trusted_sha256``).
    fit_time_ : float
        Seconds ``fit`` took.
    n_features_in_ : int
        Values per image (C * H * W).
    image_shape_ : tuple of int
        (C, H, W) of the fitted images; ``decision_function`` scores only that shape.
    """

    #: Whether ``fit`` needs trusted images (a class-level part of each detector's design).
    requires_trusted: ClassVar[bool] = False
    #: Whether ``fit`` learns from labelled anomalies (``anomalies=``); such a detector's
    #: ``_fit`` takes them as a keyword argument ``anomalies`` (None when none were given).
    accepts_anomalies: ClassVar[bool] = False

    _parameter_constraints: ClassVar[dict[str, list[Any]]] = {
        "threshold_policy": [StrOptions(set(POLICIES))],
        "threshold_value": [Real, None],
        "random_state": [Interval(Integral, 0, None, closed="left"), None],
    }

    threshold_policy: str
    threshold_value: float | None
    random_state: int | None

    # -- public API ------------------------------------------------------------------------
    def fit(
        self,
        X: Any,
        trusted: Any = None,
        *,
        y_true: Any = None,
        anomalies: Any = None,
        callback: FitCallback | None = None,
        layout: str | None = None,
    ) -> BaseDetector:
        """Fit on the (possibly polluted) pool ``X``.

        Parameters
        ----------
        X : array-like
            Pool images of any one shape: uint8 or float32 in [0, 1], (N, H, W), (N, H, W, C)
            or (N, C, H, W) (see :func:`fedsieve.shared.data.images.check_images`).
        trusted : array-like, optional
            The 5-10 trusted normal images. Required by detectors with ``requires_trusted``;
            the others use them only for the threshold.
        y_true : array-like of shape (N,), optional
            Ground truth of ``X`` (1 = anomaly). Only recorded: ``auc`` in ``history_``.
        anomalies : array-like, optional
            A few known anomalies of the pool's shape, for detectors that learn from them
            (``accepts_anomalies``; AnoEAN, AGAD); the others refuse them.
        callback : callable, optional
            ``callback(detector, round)`` at the end of each round, with the detector scoring
            as it does at that round (one call for single-round detectors).
        layout : {"NCHW", "NHWC"}, optional
            Layout of 4-D ``X`` and ``trusted`` when their shape leaves it ambiguous (e.g.
            13-band tiles); read from the shape when None.

        Returns
        -------
        self

        Raises
        ------
        sklearn.utils._param_validation.InvalidParameterError
            A hyper-parameter outside its valid range (a ``ValueError``).
        ValueError
            Invalid images, ``y_true`` of another length, a threshold value the policy cannot
            use, or no trusted images for a detector that needs them.
        """
        self._validate_params()
        check_policy_value(self.threshold_policy, self.threshold_value)
        self._start_fit()
        pool = check_images(X, "X", layout=layout)
        trusted_x = None if trusted is None else check_images(trusted, "trusted", layout=layout)
        if self.requires_trusted and trusted_x is None:
            raise ValueError(
                f"{type(self).__name__} needs trusted normal images: pass trusted= "
                "(5-10 known-normal images)"
            )
        if self.threshold_policy == "trusted-quantile" and trusted_x is None:
            raise ValueError("threshold_policy='trusted-quantile' needs trusted images: pass "
                             "trusted= to fit()")
        if trusted_x is not None and trusted_x.shape[1:] != pool.shape[1:]:
            raise ValueError(
                f"the trusted images are {format_shape(trusted_x.shape[1:])} (C x H x W) but "
                f"the pool's are {format_shape(pool.shape[1:])}; give trusted images of the "
                "pool's shape")
        known = None
        if anomalies is not None:
            if not self.accepts_anomalies:
                raise ValueError(f"{type(self).__name__} does not learn from labelled "
                                 "anomalies: drop anomalies=")
            known = check_images(anomalies, "anomalies", layout=layout)
            if known.shape[1:] != pool.shape[1:]:
                raise ValueError(
                    f"the anomalies are {format_shape(known.shape[1:])} (C x H x W) but the "
                    f"pool's are {format_shape(pool.shape[1:])}; give anomalies of the pool's "
                    "shape")
        truth = _check_y_true(y_true, len(pool))
        rounds = RoundRecorder(self, trusted_x, truth, callback)
        self.image_shape_ = tuple(int(s) for s in pool.shape[1:])
        self.n_features_in_ = int(np.prod(pool.shape[1:]))
        self.data_hashes_ = {"pool_sha256": images_sha256(pool, layout="NCHW")}
        if trusted_x is not None:
            self.data_hashes_["trusted_sha256"] = images_sha256(trusted_x, layout="NCHW")
        self.history_: list[dict[str, Any]] = []
        if self.accepts_anomalies:
            self._fit(pool, trusted_x, rounds, anomalies=known)
        else:
            self._fit(pool, trusted_x, rounds)
        if not self.history_:
            raise RuntimeError(f"{type(self).__name__}._fit ended no round")
        self.fit_time_ = rounds.elapsed()
        return self

    def decision_function(self, X: Any, *, layout: str | None = None) -> np.ndarray:
        """Anomaly scores, higher = more anomalous, float64 of shape (N,).

        ``X`` must hold images of the fitted shape (:attr:`image_shape_`), in any form
        :func:`~fedsieve.shared.data.images.check_images` reads (``layout`` as there).

        Raises
        ------
        sklearn.exceptions.NotFittedError
            The detector is not fitted.
        """
        check_is_fitted(self, "threshold_")
        return self._score(self._check_shape(check_images(X, "X", layout=layout)))

    def predict(self, X: Any, *, layout: str | None = None) -> np.ndarray:
        """Verdicts, int64 of shape (N,): 1 = anomaly, 0 = normal."""
        return (self.decision_function(X, layout=layout) > self.threshold_).astype(np.int64)

    def fit_predict(self, X: Any, trusted: Any = None, **fit_params: Any) -> np.ndarray:
        """``fit`` then return ``labels_``."""
        return self.fit(X, trusted, **fit_params).labels_

    # -- local screening: the evidence where the data lives, the cut where it meets -----------
    def score_evidence(self, X: Any, *, layout: str | None = None) -> np.ndarray:
        """What the cut is fitted on, per image: float64 of shape (N, K).

        In local screening each client computes this on its own images and sends it instead
        of the images; the server pools it from every client and refits the cut on it
        (:meth:`fit_cut`), exactly as a fit on the pooled images would have cut them. For
        most detectors it is the score itself (K = 1); Rt-BiGAN sends each piece of its
        evidence before the pool's calibration.

        Raises
        ------
        sklearn.exceptions.NotFittedError
            The detector is not fitted.
        """
        check_is_fitted(self, "threshold_")
        return self._score_evidence(self._check_shape(check_images(X, "X", layout=layout)))

    def fit_cut(self, evidence: Any, trusted: Any = None, *,
                layout: str | None = None) -> BaseDetector:
        """Refit what the verdicts learn from the pool (a calibration, the threshold) on
        pooled :meth:`score_evidence`, keeping the trained model.

        Sets ``decision_scores_``, ``trusted_scores_``, ``threshold_``, ``labels_`` and
        ``contamination_`` for the pooled rows, and appends one ``history_`` entry.

        Parameters
        ----------
        evidence : array-like of shape (N, K)
            :meth:`score_evidence` of the pool, from every client, in any order.
        trusted : array-like, optional
            The trusted images (the policies anchor the cut on them).

        Returns
        -------
        self

        Raises
        ------
        ValueError
            Evidence of another width than this detector's, or non-finite values.
        """
        check_is_fitted(self, "threshold_")
        ev = np.asarray(evidence, dtype=np.float64)
        width = self._evidence_width()
        if ev.ndim != 2 or ev.shape[1] != width or not np.isfinite(ev).all():
            raise ValueError(f"evidence must be finite numbers of shape (N, {width}), got "
                             f"{ev.dtype} {ev.shape}")
        trusted_x = None if trusted is None else self._check_shape(
            check_images(trusted, "trusted", layout=layout))
        self._fit_cut(ev, trusted_x)
        RoundRecorder(self, trusted_x, None, None).end_round(self._scores_from_evidence(ev))
        if getattr(self, "decision_evidence_", None) is not None:
            self.decision_evidence_ = ev
        return self

    def explain(self, X: Any, *, layout: str | None = None) -> Explanation:
        """Why each image gets its verdict: every piece of evidence's value and cut, and the
        piece that decided (:class:`~fedsieve.shared.detectors.explanation.Explanation`).

        A detector scored by one number explains itself with one piece, ``"score"``, cut at
        its threshold; Rt-BiGAN names its pieces (``explanation.flagged_by()`` counts the
        flagged images each piece decided).

        Raises
        ------
        sklearn.exceptions.NotFittedError
            The detector is not fitted.
        """
        return self.explain_evidence(self.score_evidence(X, layout=layout))

    def explain_fitted(self) -> Explanation:
        """:meth:`explain` for the fitted pool (its ``decision_scores_``), without scoring it
        again: from the evidence of the last round where the detector keeps it
        (``decision_evidence_``)."""
        check_is_fitted(self, "threshold_")
        evidence = getattr(self, "decision_evidence_", None)
        if evidence is None:
            return Explanation.single(self.decision_scores_, self.threshold_)
        return self._explain_evidence(evidence)

    def explain_evidence(self, evidence: Any) -> Explanation:
        """:meth:`explain` for :meth:`score_evidence` rows (local screening's server side,
        which sees the evidence and never the images)."""
        check_is_fitted(self, "threshold_")
        return self._explain_evidence(np.asarray(evidence, dtype=np.float64))

    @property
    def evidence_width(self) -> int:
        """K, the columns of :meth:`score_evidence` (what a client's report must hold)."""
        check_is_fitted(self, "threshold_")
        return self._evidence_width()

    def check_images(self, X: Any, *, layout: str | None = None) -> np.ndarray:
        """``X`` as float32 (N, C, H, W) in [0, 1] when its images have the fitted shape;
        else a ``ValueError`` naming both shapes."""
        check_is_fitted(self, "threshold_")
        return self._check_shape(check_images(X, "X", layout=layout))

    def scores_from_evidence(self, evidence: Any) -> np.ndarray:
        """The anomaly scores (as :meth:`decision_function`) of :meth:`score_evidence` rows."""
        check_is_fitted(self, "threshold_")
        return self._scores_from_evidence(np.asarray(evidence, dtype=np.float64))

    @property
    def false_drop_budget(self) -> float:
        """The share of normal images the verdicts may drop (``threshold_value`` of the
        ``"budget"`` policy, else the default); it also corrects the pollution estimate
        (:func:`~fedsieve.shared.detectors.threshold.estimate_contamination`)."""
        return self._budget()

    def local_screening_params(self) -> dict[str, Any]:
        """The parameters local screening sets before the server fits this detector on the
        trusted images alone and ships it to the clients (none by default). Rt-BiGAN's:
        no self-training (the server has no pool) and no evidence that would carry pool
        images' features to every client."""
        return {}

    # -- what subclasses implement ----------------------------------------------------------
    def _start_fit(self) -> None:
        """Resolve what the fit needs from the hyper-parameters beyond their validation (the
        torch detectors' device); nothing by default."""

    def _fit(self, X: np.ndarray, trusted: np.ndarray | None, rounds: RoundRecorder) -> None:
        """Train, ending each round with ``rounds.end_round(pool scores)``.

        The default is a single round: :meth:`_train`, then the pool is scored once.
        """
        self._train(X, trusted)
        rounds.end_round(self._score(X))

    def _train(self, X: np.ndarray, trusted: np.ndarray | None) -> None:  # pragma: no cover
        raise NotImplementedError

    def _score(self, X: np.ndarray) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError

    def _score_evidence(self, X: np.ndarray) -> np.ndarray:
        """:meth:`score_evidence` of validated images; the score alone by default."""
        return self._score(X)[:, None]

    def _evidence_width(self) -> int:
        """K, the columns of :meth:`score_evidence`."""
        return 1

    def _fit_cut(self, evidence: np.ndarray, trusted: np.ndarray | None) -> None:
        """Refit the pool-dependent part of the score on pooled evidence (nothing by default:
        the score does not depend on the pool)."""

    def _scores_from_evidence(self, evidence: np.ndarray) -> np.ndarray:
        return evidence[:, 0]

    def _explain_evidence(self, evidence: np.ndarray) -> Explanation:
        return Explanation.single(self._scores_from_evidence(evidence), self.threshold_)

    # -- the state a checkpoint holds (see fedsieve.shared.detectors.persist) ----------------
    def _state_tensors(self) -> dict[str, Any]:
        """Everything scoring needs, as named torch tensors (weights, score state).
        Detectors that can be saved override this."""
        raise NotImplementedError(f"{type(self).__name__} cannot be saved")

    def _state_header(self) -> dict[str, Any]:
        """JSON-able fitted state beside the tensors: threshold, image shape, data hashes,
        history. Subclasses add their own (network sizes, ...)."""
        return {"threshold": float(self.threshold_), "image_shape": list(self.image_shape_),
                "data": self.data_hashes_, "history": self.history_}

    def _restore_state(self, tensors: dict[str, Any], header: dict[str, Any]) -> None:
        """Take back what :meth:`_state_tensors` and :meth:`_state_header` saved, so that the
        detector scores as it did when saved."""
        self.threshold_ = float(header["threshold"])
        self.data_hashes_ = header.get("data", {})
        self.history_ = header.get("history", [])
        if "image_shape" in header:
            self.image_shape_ = tuple(int(s) for s in header["image_shape"])
            self.n_features_in_ = int(np.prod(self.image_shape_))

    # -- helpers -----------------------------------------------------------------------------
    def _check_shape(self, X: np.ndarray) -> np.ndarray:
        """``X`` (validated, (N, C, H, W)) when its images have the fitted shape; else a
        ``ValueError`` naming both shapes."""
        fitted = tuple(self.image_shape_)
        if tuple(X.shape[1:]) != fitted:
            raise ValueError(
                f"X holds {format_shape(X.shape[1:])} images (C x H x W) but this "
                f"{type(self).__name__} was fitted on {format_shape(fitted)} images; resize "
                "them, or fit a detector on images of this shape")
        return X

    def _scores_calibrated(self) -> bool:
        """True when the scores are already cut by the false-drop budget at 0 (the
        ``"budget"`` policy then keeps 0 as the threshold)."""
        return False

    def _budget(self) -> float:
        """The false-drop budget (``threshold_value`` of the ``"budget"`` policy, else the
        default), also used to correct the contamination estimate."""
        if self.threshold_policy == "budget" and self.threshold_value is not None:
            return float(self.threshold_value)
        return DEFAULT_BUDGET

    def _threshold(self, pool_scores: np.ndarray, trusted_scores: np.ndarray | None) -> float:
        if self.threshold_policy == "budget" and self._scores_calibrated():
            return 0.0
        return compute_threshold(
            self.threshold_policy,
            pool_scores,
            trusted_scores,
            self.threshold_value,
            random_state=0 if self.random_state is None else int(self.random_state),
        )


class TorchDetector(BaseDetector):
    """Base of the detectors that train torch networks: the ``device`` they run on.

    Not used directly. ``device`` is stored as given and resolved when ``fit`` starts
    (:func:`~fedsieve.shared.devices.resolve_device`; ``"auto"`` is CUDA when torch sees a
    GPU, else the CPU) into ``device_``, where the networks train and score. Images go in and
    scores come out as numpy arrays on every device; seeded draws stay on the CPU, so a seed
    gives the same batches and latents everywhere and CPU results are unchanged. A
    checkpoint holds CPU tensors and loads onto the device of the loading side.

    Parameters
    ----------
    device : str, default "auto"
        ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:<index>"`` or ``"mps"``.

    Attributes
    ----------
    device_ : torch.device
        Where the fitted (or loaded) networks live.
    """

    _parameter_constraints: ClassVar[dict[str, list[Any]]] = {
        **BaseDetector._parameter_constraints,
        "device": [str, torch.device],
    }

    device: str

    def _start_fit(self) -> None:
        super()._start_fit()
        self.device_ = resolve_device(self.device)

    def _restore_state(self, tensors: dict[str, Any], header: dict[str, Any]) -> None:
        self.device_ = resolve_device(self.device)
        super()._restore_state(tensors, header)


class RoundRecorder:
    """The end of each round of one ``fit``: threshold, fitted attributes, history, callback.

    ``fit`` makes one and hands it to the detector's ``_fit``, so that what a fit needs
    besides data (the trusted images, ``y_true``, the callback) travels as arguments, never as
    temporary attributes of the detector.

    Parameters
    ----------
    detector : BaseDetector
        The detector being fitted; :meth:`end_round` sets its fitted attributes.
    trusted : ndarray or None
        Validated trusted images, scored at the end of each round for the threshold.
    y_true : ndarray or None
        Ground truth of the pool (1 = anomaly), for ``auc`` in ``history_``.
    callback : callable or None
        ``callback(detector, round)`` after each round.
    """

    def __init__(self, detector: BaseDetector, trusted: np.ndarray | None,
                 y_true: np.ndarray | None, callback: FitCallback | None) -> None:
        self.detector = detector
        self.trusted = trusted
        self.y_true = y_true
        self.callback = callback
        self._t0 = time.perf_counter()
        self._labels: np.ndarray | None = None

    def elapsed(self) -> float:
        """Seconds since the fit started."""
        return time.perf_counter() - self._t0

    def end_round(self, pool_scores: np.ndarray) -> tuple[np.ndarray, float]:
        """Close a round on the pool scores of the detector as it now is.

        Scores the trusted images, fits the threshold, sets ``decision_scores_``,
        ``trusted_scores_``, ``threshold_`` and ``labels_``, appends to ``history_`` and calls
        the callback.

        Returns
        -------
        labels : ndarray of shape (n_pool,)
            The round's verdicts (int64, 1 = anomaly); they replace the previous round's.
        changed : float
            Fraction of the pool whose verdict changed since the previous round (1.0 first).
        """
        det = self.detector
        trusted_scores = None if self.trusted is None else det._score(self.trusted)
        threshold = det._threshold(pool_scores, trusted_scores)
        labels = (pool_scores > threshold).astype(np.int64)
        changed = 1.0 if self._labels is None else float(np.mean(labels != self._labels))
        self._labels = labels
        det.decision_scores_ = pool_scores
        det.trusted_scores_ = trusted_scores
        det.threshold_ = threshold
        det.labels_ = labels
        det.contamination_ = estimate_contamination(int(labels.sum()), len(labels),
                                                    det._budget())
        entry: dict[str, Any] = {
            "round": len(det.history_),
            "threshold": float(threshold),
            "n_flagged": int(labels.sum()),
            "changed": changed,
            "contamination": det.contamination_["estimate"],
            "elapsed_s": self.elapsed(),
        }
        if self.y_true is not None and 0 < self.y_true.sum() < len(self.y_true):
            entry["auc"] = float(roc_auc_score(self.y_true, pool_scores))
        det.history_.append(entry)
        if self.callback is not None:
            self.callback(det, entry["round"])
        return labels, changed


def _check_y_true(y_true: Any, n: int) -> np.ndarray | None:
    if y_true is None:
        return None
    y = np.asarray(y_true).astype(int).ravel()
    if len(y) != n:
        raise ValueError(f"y_true must have one label per pool image ({n}), got {len(y)}")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("y_true must hold 0 (normal) and 1 (anomaly) only")
    return y
