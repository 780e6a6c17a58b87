"""Saving and loading fitted GAN detectors as checkpoints (safetensors + JSON, never pickle).

The file format is :mod:`fedsieve.shared.detectors.checkpoint`'s, kind ``"detector"``: the
weights and score state as tensors; the class name, constructor parameters, network sizes,
threshold, data hashes and history in the JSON header. Parameters are stored by name, so a
checkpoint loads as long as the class keeps their meaning (else ``FORMAT_VERSION`` is bumped).

What a detector saves is its own business (``_state_tensors``, ``_state_header`` and
``_restore_state`` of :class:`~fedsieve.shared.detectors.base.BaseDetector`); a class becomes
savable by joining :data:`SAVABLE`.
"""

from __future__ import annotations

import inspect
import json
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors
from sklearn.base import BaseEstimator
from sklearn.utils._param_validation import InvalidParameterError
from sklearn.utils.validation import check_is_fitted

from fedsieve.shared.detectors.adegan import ADeGAN
from fedsieve.shared.detectors.agad import AGAD
from fedsieve.shared.detectors.anoean import AnoEAN
from fedsieve.shared.detectors.base import BaseDetector
from fedsieve.shared.detectors.baselines import EGBAD, AnoGAN
from fedsieve.shared.detectors.checkpoint import (
    CheckpointError,
    cpu_tensors,
    read_checkpoint,
    write_checkpoint,
)
from fedsieve.shared.detectors.evidence import EvidencePiece
from fedsieve.shared.detectors.rtbigan import RtBiGAN
from fedsieve.shared.devices import resolve_device

#: The detectors a checkpoint can hold, by the class name its header records.
SAVABLE: dict[str, type[BaseDetector]] = {
    c.__name__: c for c in (RtBiGAN, EGBAD, AnoGAN, ADeGAN, AGAD, AnoEAN)}


def save_detector(detector: BaseDetector, path: str | Path) -> Path:
    """Write a fitted detector of a :data:`SAVABLE` class to ``<path>.safetensors`` +
    ``<path>.json``.

    Returns
    -------
    Path
        The JSON path.

    Raises
    ------
    sklearn.exceptions.NotFittedError
        ``detector`` is not fitted.
    TypeError
        ``detector`` is not one of the savable classes.
    """
    return write_checkpoint(path, *_payload(detector))


def detector_to_bytes(detector: BaseDetector) -> tuple[bytes, str]:
    """A fitted detector as ``(weights, header)``: the safetensors bytes of its state and
    its JSON header, what :func:`save_detector` writes to the two files. This is how local
    screening ships the detector to clients in a Flower message.

    Raises
    ------
    sklearn.exceptions.NotFittedError, TypeError
        As :func:`save_detector`.
    """
    tensors, header = _payload(detector)
    weights = save_tensors(cpu_tensors(tensors))
    return weights, json.dumps(header, sort_keys=True, default=str)


def detector_from_bytes(weights: bytes, header: str,
                        expected: type[BaseDetector] = BaseDetector, *,
                        device: str | None = None) -> BaseDetector:
    """Load a detector from :func:`detector_to_bytes`' output, ready to score. Untrusted
    input is read as safetensors and JSON only (never unpickled).

    ``device`` as in :func:`load_detector`: a client scores the shipped detector on its own
    device, whatever the server's was.

    Raises
    ------
    CheckpointError
        Unreadable weights or header, or as :func:`load_detector`.
    """
    try:
        doc = json.loads(header)
        tensors = load_tensors(bytes(weights))
    except (json.JSONDecodeError, SafetensorError, ValueError, TypeError) as exc:
        raise CheckpointError(f"the shipped detector is unreadable: {exc}") from exc
    if not isinstance(doc, dict) or not all(isinstance(t, torch.Tensor)
                                            for t in tensors.values()):
        raise CheckpointError("the shipped detector's header is not a JSON object")
    return _restore(tensors, doc, "the shipped detector", expected, device)


def _payload(detector: BaseDetector) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The tensors and header a checkpoint of ``detector`` holds."""
    if type(detector).__name__ not in SAVABLE:
        raise TypeError(f"cannot save a {type(detector).__name__}; savable detectors: "
                        f"{', '.join(SAVABLE)}")
    check_is_fitted(detector, "threshold_")
    params = {k: _jsonable(v) for k, v in detector.get_params(deep=False).items()}
    header: dict[str, Any] = {
        "kind": "detector",
        "detector": type(detector).__name__,
        "params": params,
        **detector._state_header(),
    }
    return detector._state_tensors(), header


def _jsonable(value: Any) -> Any:
    """A constructor parameter as JSON: paths as text, evidence pieces as their spec,
    settings objects (Rt-BiGAN's ``Training``) as their settings."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, EvidencePiece):
        return value.spec()
    if isinstance(value, BaseEstimator):
        return {k: _jsonable(v) for k, v in value.get_params(deep=False).items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def _from_json(cls: type[BaseDetector], params: dict[str, Any]) -> dict[str, Any]:
    """Constructor parameters read back from JSON: a list where the class's default is a
    tuple (Rt-BiGAN's ``evidence``) becomes a tuple again, so ``get_params`` round-trips."""
    defaults = {name: p.default for name, p in inspect.signature(cls).parameters.items()}
    return {k: tuple(v) if isinstance(v, list) and isinstance(defaults.get(k), tuple) else v
            for k, v in params.items()}


def load_detector(path: str | Path, expected: type[BaseDetector] = BaseDetector, *,
                  device: str | None = None) -> BaseDetector:
    """Load a detector written by :func:`save_detector`, ready to score.

    Parameters
    ----------
    path : str or Path
        The checkpoint (either file of the pair, or the path without suffix).
    expected : type, optional
        The class the caller needs, e.g. ``RtBiGAN``; any savable detector by default.
    device : str, optional
        Where the loaded detector scores (its ``device`` parameter; see
        :func:`~fedsieve.shared.devices.resolve_device`). The weights are stored as CPU
        tensors, so a detector fitted on a GPU loads on a CPU with ``"cpu"`` or ``"auto"``.
        None keeps the ``device`` it was saved with.

    Raises
    ------
    CheckpointError
        As :func:`fedsieve.shared.detectors.checkpoint.read_checkpoint`, or the file holds no
        detector,
        another class than ``expected``, parameters this version does not accept, or weights
        that do not fit the recorded networks.
    ValueError
        ``device`` (or, without one, the saved ``device``) is not available here; the message
        lists the devices that are.
    """
    tensors, header = read_checkpoint(path)
    return _restore(tensors, header, str(path), expected, device)


def _restore(tensors: dict[str, torch.Tensor], header: dict[str, Any], source: str,
             expected: type[BaseDetector], device: str | None = None) -> BaseDetector:
    name = header.get("detector")
    if header.get("kind") != "detector" or name not in SAVABLE:
        raise CheckpointError(f"{source} is not a saved {'/'.join(SAVABLE)} detector")
    cls = SAVABLE[name]
    if not issubclass(cls, expected):
        raise CheckpointError(f"{source} holds a {name}, not a {expected.__name__}")
    try:
        with warnings.catch_warnings():  # a 0.2 checkpoint's keywords: translated silently
            warnings.simplefilter("ignore", FutureWarning)
            detector = cls(**_from_json(cls, header["params"]))
        if device is not None:
            detector.set_params(device=device)
        detector._validate_params()
    except (KeyError, TypeError, InvalidParameterError) as exc:
        raise CheckpointError(f"{source} has parameters this version does not accept: {exc}") \
            from exc
    # Where it scores is the loading side's business: a device it lacks is said as such,
    # never as a broken checkpoint.
    resolve_device(detector.device)
    try:
        detector._restore_state(tensors, header)
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{source} has an incomplete detector header: {exc}") from exc
    return detector
