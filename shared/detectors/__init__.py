"""Anomaly detectors behind one estimator API (scikit-learn/PyOD conventions).

>>> det = make_detector("rtbigan", random_state=0).fit(pool, trusted=trusted_images)
>>> det.labels_, det.decision_function(test), det.predict(test)

Registry names (:data:`DETECTORS`): ``rtbigan``, ``egbad``, ``anogan``, ``iforest``,
``deepsvdd``, and the seed papers' other detectors ``adegan``, ``agad`` and ``anoean``.
Fitted detectors (all but the wrapped peers) are saved and loaded with :func:`save_detector`
and :func:`load_detector`.
"""

from __future__ import annotations

from fedsieve.shared.detectors.adegan import ADeGAN
from fedsieve.shared.detectors.agad import AGAD
from fedsieve.shared.detectors.anoean import AnoEAN
from fedsieve.shared.detectors.base import BaseDetector, RoundRecorder, TorchDetector
from fedsieve.shared.detectors.baselines import EGBAD, AnoGAN, PoolGAN
from fedsieve.shared.detectors.explanation import Explanation
from fedsieve.shared.detectors.gan import GANDetector
from fedsieve.shared.detectors.peers import PeerAdapter
from fedsieve.shared.detectors.persist import load_detector, save_detector
from fedsieve.shared.detectors.registry import DETECTORS, make_detector
from fedsieve.shared.detectors.rtbigan import MetaModelWarning, RtBiGAN
from fedsieve.shared.detectors.threshold import POLICIES, compute_threshold, gmm_threshold
from fedsieve.shared.detectors.training import Training

__all__ = [
    "BaseDetector",
    "RoundRecorder",
    "TorchDetector",
    "GANDetector",
    "PoolGAN",
    "RtBiGAN",
    "Training",
    "Explanation",
    "MetaModelWarning",
    "EGBAD",
    "AnoGAN",
    "ADeGAN",
    "AGAD",
    "AnoEAN",
    "PeerAdapter",
    "DETECTORS",
    "POLICIES",
    "compute_threshold",
    "gmm_threshold",
    "make_detector",
    "save_detector",
    "load_detector",
]
