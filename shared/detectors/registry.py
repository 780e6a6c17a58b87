"""The one registry of detectors: registry name -> builder of an unfitted detector."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

from pyod.models.deep_svdd import DeepSVDD

from fedsieve.shared.detectors.adegan import ADeGAN
from fedsieve.shared.detectors.agad import AGAD
from fedsieve.shared.detectors.anoean import AnoEAN
from fedsieve.shared.detectors.base import BaseDetector
from fedsieve.shared.detectors.baselines import EGBAD, AnoGAN
from fedsieve.shared.detectors.peers import PeerAdapter, isolation_forest
from fedsieve.shared.detectors.rtbigan import RtBiGAN


def _iforest(**params: Any) -> PeerAdapter:
    """scikit-learn IsolationForest on raw pixels."""
    return PeerAdapter(estimator=isolation_forest(), name="iforest").set_params(**params)


def _deepsvdd(**params: Any) -> PeerAdapter:
    """PyOD DeepSVDD (one-class hypersphere on an MLP) on raw pixels."""
    # n_features is set to the images' size when the adapter fits a copy.
    estimator = DeepSVDD(n_features=784, epochs=10, batch_size=128, preprocessing=False,
                         verbose=0)
    return PeerAdapter(estimator=estimator, name="deepsvdd").set_params(**params)


#: Registry name -> builder: ``DETECTORS[name](**params)`` is an unfitted detector. The peers'
#: wrapped estimators take nested parameters, e.g. ``estimator__n_estimators``.
DETECTORS: Mapping[str, Callable[..., BaseDetector]] = MappingProxyType({
    "rtbigan": RtBiGAN,
    "egbad": EGBAD,
    "anogan": AnoGAN,
    "iforest": _iforest,
    "deepsvdd": _deepsvdd,
    "adegan": ADeGAN,
    "agad": AGAD,
    "anoean": AnoEAN,
})


def make_detector(name: str, **params: Any) -> BaseDetector:
    """Build an unfitted detector by registry name.

    Parameters
    ----------
    name : {"rtbigan", "egbad", "anogan", "iforest", "deepsvdd", "adegan", "agad", "anoean"}
        Registry name (case, ``-`` and ``_`` are ignored).
    **params
        Hyper-parameters (validated at ``fit``). For ``iforest``/``deepsvdd`` the wrapped
        estimator's are nested: ``estimator__n_estimators``, ``estimator__epochs``.

    Raises
    ------
    ValueError
        Unknown name (the message lists the registry) or, for the peers, an unknown parameter.
    TypeError
        An unknown parameter of a GAN detector.
    """
    key = name.lower().replace("-", "").replace("_", "")
    if key not in DETECTORS:
        raise ValueError(f"unknown detector {name!r}; choose one of {', '.join(DETECTORS)}")
    return DETECTORS[key](**params)
