"""Checkpoints: safetensors for weights, a JSON file beside them for everything else.

A checkpoint at ``PATH`` is the pair ``PATH.safetensors`` + ``PATH.json`` (a ``PATH`` given
with either suffix means the same pair). The JSON holds the format name and version, the kind
(``"meta"`` for a Reptile meta-model, ``"detector"`` for a fitted detector), the detector
class and parameters, network sizes, the threshold, data hashes and the SHA-256 of the weights
file, which is checked before the weights are read. Loading never unpickles anything: weights
go through :func:`safetensors.torch.load_file` only.
"""

from __future__ import annotations

import hashlib
import json
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from fedsieve.shared.networks import BiGAN, NetConfig

FORMAT = "fedsieve-checkpoint"
FORMAT_VERSION = 1
DEFAULT_META_NAME = "rtbigan-meta"


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt, truncated, of another format version, or unsafe."""


def _pair(path: str | Path) -> tuple[Path, Path]:
    p = Path(path)
    if p.suffix in (".safetensors", ".json"):
        p = p.with_suffix("")
    return p.with_name(p.name + ".safetensors"), p.with_name(p.name + ".json")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def default_meta_checkpoint() -> Path:
    """Path (JSON) of the meta-model shipped in ``fedsieve/shared/assets``."""
    return Path(str(resources.files("fedsieve.shared") / "assets" / f"{DEFAULT_META_NAME}.json"))


def write_checkpoint(path: str | Path, tensors: dict[str, torch.Tensor],
                     header: dict[str, Any]) -> Path:
    """Write weights and JSON header; returns the JSON path."""
    wpath, jpath = _pair(path)
    wpath.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(wpath))
    doc = {"format": FORMAT, "format_version": FORMAT_VERSION, **header,
           "weights_file": wpath.name, "weights_sha256": _sha256(wpath)}
    jpath.write_text(json.dumps(doc, indent=2, sort_keys=True, default=str) + "\n")
    return jpath


def read_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read and verify a checkpoint pair; returns ``(tensors, header)``.

    Raises
    ------
    CheckpointError
        Missing files, invalid JSON, another format or version, weights whose hash does not
        match the header (corrupt or truncated), or an unreadable safetensors file.
    """
    wpath, jpath = _pair(path)
    if not jpath.is_file():
        raise CheckpointError(f"checkpoint config {jpath} not found")
    try:
        header = json.loads(jpath.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{jpath} is not valid JSON (corrupt or truncated): {exc}") from exc
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise CheckpointError(f"{jpath} is not a {FORMAT} file")
    if header.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{jpath} has format_version {header.get('format_version')!r}; this fedsieve reads "
            f"version {FORMAT_VERSION}: re-create it with this version (fedsieve meta-train / "
            "detector.save)"
        )
    if not wpath.is_file():
        raise CheckpointError(f"checkpoint weights {wpath} not found")
    if _sha256(wpath) != header.get("weights_sha256"):
        raise CheckpointError(
            f"{wpath} does not match the hash recorded in {jpath.name}: the file is corrupt, "
            "truncated or was replaced"
        )
    try:
        tensors = load_file(str(wpath))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{wpath} is not a readable safetensors file: {exc}") from exc
    return tensors, header


# -- meta-models ----------------------------------------------------------------------------
def save_meta(model: BiGAN, path: str | Path, info: dict[str, Any]) -> Path:
    """Save a meta-trained BiGAN (``info``: training command, config, data hash, ...)."""
    tensors = {f"model.{k}": v.detach().clone() for k, v in model.state_dict().items()}
    return write_checkpoint(path, tensors, {"kind": "meta", "net": model.cfg.to_dict(), **info})


def load_meta(path: str | Path) -> tuple[BiGAN, dict[str, Any]]:
    """Load a meta-model saved by :func:`save_meta`; returns ``(model, header)``."""
    tensors, header = read_checkpoint(path)
    if header.get("kind") != "meta":
        raise CheckpointError(f"{path} is a {header.get('kind')!r} checkpoint, not a meta-model")
    model = _build(tensors, header)
    return model, header


def _build(tensors: dict[str, torch.Tensor], header: dict[str, Any]) -> BiGAN:
    try:
        model = BiGAN(NetConfig(**header["net"]))
        model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")},
                              strict=True)
    except (KeyError, TypeError, RuntimeError) as exc:
        msg = f"checkpoint weights do not fit the recorded networks: {exc}"
        raise CheckpointError(msg) from exc
    model.eval()
    return model


# -- fitted detectors -----------------------------------------------------------------------
def save_detector(det: Any, path: str | Path) -> Path:
    """Save a fitted GAN detector (RtBiGAN, EGBAD, AnoGAN); returns the JSON path."""
    det._check_fitted()
    params = {k: (str(v) if isinstance(v, Path) else v) for k, v in det.get_params().items()}
    header = {
        "kind": "detector",
        "detector": type(det).__name__,
        "params": params,
        "net": det.model_.cfg.to_dict(),
        "threshold": float(det.threshold_),
        "data": getattr(det, "data_hashes_", {}),
        "meta_checkpoint": getattr(det, "meta_info_", {}).get("weights_sha256"),
        **det._extra_json(),
    }
    return write_checkpoint(path, det._state_tensors(), header)


def load_detector(path: str | Path) -> Any:
    """Load a detector saved by :func:`save_detector`."""
    from fedsieve.shared.detectors import EGBAD, AnoGAN, RtBiGAN

    classes = {c.__name__: c for c in (RtBiGAN, EGBAD, AnoGAN)}
    tensors, header = read_checkpoint(path)
    if header.get("kind") != "detector" or header.get("detector") not in classes:
        raise CheckpointError(f"{path} is not a saved RtBiGAN/EGBAD/AnoGAN detector")
    cls = classes[header["detector"]]
    try:
        det = cls(**header["params"])
    except TypeError as exc:
        raise CheckpointError(f"{path} has parameters this version does not know: {exc}") from exc
    _build(tensors, header)  # validates shapes with a clear error before restoring
    det._restore_state(tensors, header["net"])
    det.threshold_ = float(header["threshold"])
    det.data_hashes_ = header.get("data", {})
    det.history_ = header.get("history", [])
    return det
