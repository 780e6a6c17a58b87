"""Anomaly detectors behind one estimator API (scikit-learn/PyOD conventions).

>>> det = make_detector("rtbigan", random_state=0).fit(pool, trusted=seeds)
>>> det.labels_, det.decision_function(test), det.predict(test)

Registry names: ``rtbigan``, ``egbad``, ``anogan``, ``iforest``, ``deepsvdd``.
"""

from __future__ import annotations

from typing import Any

from fedsieve.shared.detectors.base import BaseDetector, check_images
from fedsieve.shared.detectors.baselines import EGBAD, AnoGAN
from fedsieve.shared.detectors.gan import GANDetector
from fedsieve.shared.detectors.peers import PeerAdapter, deepsvdd_factory, iforest_factory
from fedsieve.shared.detectors.rtbigan import RtBiGAN
from fedsieve.shared.detectors.threshold import POLICIES, compute_threshold, gmm_threshold

__all__ = [
    "BaseDetector",
    "GANDetector",
    "RtBiGAN",
    "EGBAD",
    "AnoGAN",
    "PeerAdapter",
    "DETECTORS",
    "POLICIES",
    "check_images",
    "compute_threshold",
    "gmm_threshold",
    "make_detector",
]

DETECTORS = ("rtbigan", "egbad", "anogan", "iforest", "deepsvdd")


def make_detector(name: str, **kw: Any) -> BaseDetector:
    """Build a detector by registry name.

    Parameters
    ----------
    name : {"rtbigan", "egbad", "anogan", "iforest", "deepsvdd"}
    **kw
        Constructor parameters. For ``iforest``/``deepsvdd``, ``n_estimators`` resp.
        ``epochs``/``batch_size`` go to the wrapped estimator; the rest to :class:`PeerAdapter`.

    Raises
    ------
    ValueError
        Unknown name.
    """
    key = name.lower().replace("-", "").replace("_", "")
    if key == "rtbigan":
        return RtBiGAN(**kw)
    if key == "egbad":
        return EGBAD(**kw)
    if key == "anogan":
        return AnoGAN(**kw)
    if key == "iforest":
        fkw = {k: kw.pop(k) for k in ("n_estimators",) if k in kw}
        return PeerAdapter(iforest_factory(**fkw), name="iforest", **kw)
    if key == "deepsvdd":
        fkw = {k: kw.pop(k) for k in ("epochs", "batch_size") if k in kw}
        return PeerAdapter(deepsvdd_factory(**fkw), name="deepsvdd", **kw)
    raise ValueError(f"unknown detector {name!r}; choose one of {', '.join(DETECTORS)}")
