"""Checkpoints: safetensors for weights, a JSON file beside them for everything else.

A checkpoint at ``PATH`` is the pair ``PATH.safetensors`` + ``PATH.json`` (a ``PATH`` given
with either suffix means the same pair). The JSON holds the format name and version, the kind
(``"meta"`` for a Reptile meta-model, ``"detector"`` for a fitted detector), network sizes, the
SHA-256 of the weights file, which is checked before the weights are read, and what the kind
adds (a detector's class, parameters, threshold and data hashes). Loading never unpickles
anything: weights go through :func:`safetensors.torch.load_file` only.

This module holds the file format and the meta-models; fitted detectors are saved and loaded
by :mod:`fedsieve.shared.detectors.persist`.
"""

from __future__ import annotations

import hashlib
import json
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from fedsieve.shared.detectors.networks import BiGAN, NetConfig

FORMAT = "fedsieve-checkpoint"
FORMAT_VERSION = 1
DEFAULT_META_NAME = "rtbigan-meta"


class MetaModelWarning(UserWarning):
    """The meta-model does not fit the images: Rt-BiGAN starts from random weights (no
    meta-model of their shape), or leaves the reachability evidence out (its atlas does not
    look like the trusted images)."""


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
    """Write weights and JSON header; returns the JSON path.

    The weights are written from CPU copies whatever device they live on, so a checkpoint
    made on a GPU loads on any machine."""
    wpath, jpath = _pair(path)
    wpath.parent.mkdir(parents=True, exist_ok=True)
    save_file(cpu_tensors(tensors), str(wpath))
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
            "save_detector)"
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
def save_meta(model: BiGAN, path: str | Path, info: dict[str, Any],
              atlas: np.ndarray | None = None) -> Path:
    """Save a meta-trained BiGAN (``info``: training command, config, data hash, ...).

    ``atlas``: a sample of the normal images it was trained on, uint8 (N, C, H, W), kept
    beside the weights for Rt-BiGAN's reachability evidence
    (:mod:`fedsieve.shared.detectors.evidence.reachability`).
    """
    tensors = model_tensors(model)
    if atlas is not None:
        atlas = np.asarray(atlas)
        if atlas.dtype != np.uint8 or atlas.ndim != 4:
            raise ValueError(f"the atlas must be uint8 (N, C, H, W) images, got {atlas.dtype} "
                             f"of shape {atlas.shape}")
        tensors["atlas"] = torch.from_numpy(np.array(atlas, order="C"))
    return write_checkpoint(path, tensors,
                            {"kind": "meta", "net": model.cfg.to_dict(), **info})


def load_meta(path: str | Path, device: torch.device | None = None
              ) -> tuple[BiGAN, dict[str, Any]]:
    """Load a meta-model saved by :func:`save_meta` onto ``device`` (the CPU when None);
    returns ``(model, header)``.

    Raises
    ------
    CheckpointError
        As :func:`read_checkpoint`, or the file is not a meta-model, or its weights do not
        fit the networks its header describes.
    """
    tensors, header = read_checkpoint(path)
    if header.get("kind") != "meta":
        raise CheckpointError(f"{path} is a {header.get('kind')!r} checkpoint, not a meta-model")
    model = bigan_from_tensors(tensors, header.get("net"))
    return (model if device is None else model.to(device)), header


def load_meta_atlas(path: str | Path) -> np.ndarray | None:
    """The atlas (uint8 (N, C, H, W) normal images) saved with a meta-model, or None when it
    has none (made before atlases, or without one)."""
    tensors, header = read_checkpoint(path)
    if header.get("kind") != "meta":
        raise CheckpointError(f"{path} is a {header.get('kind')!r} checkpoint, not a meta-model")
    atlas = tensors.get("atlas")
    return None if atlas is None else atlas.numpy()


# -- networks <-> tensors -------------------------------------------------------------------
def cpu_tensors(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Contiguous CPU versions of ``tensors`` (the tensors themselves where they already
    are), what safetensors writes: checkpoints and shipped detectors never hold device
    tensors."""
    return {k: v.detach().cpu().contiguous() for k, v in tensors.items()}


def model_tensors(model: BiGAN) -> dict[str, torch.Tensor]:
    """A BiGAN's weights as checkpoint tensors (its ``state_dict`` under ``model.``), CPU
    copies whatever device the model is on."""
    return {f"model.{k}": v.detach().cpu().clone() for k, v in model.state_dict().items()}


def bigan_from_tensors(tensors: dict[str, torch.Tensor], net: Any) -> BiGAN:
    """The BiGAN sized by ``net`` (a :class:`NetConfig` dict) holding the ``model.`` tensors,
    in eval mode.

    Raises
    ------
    CheckpointError
        ``net`` is not a network config, or the weights do not fit the networks exactly.
    """
    try:
        model = BiGAN(NetConfig(**net))
        model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")},
                              strict=True)
    except (KeyError, TypeError, RuntimeError) as exc:
        msg = f"checkpoint weights do not fit the recorded networks: {exc}"
        raise CheckpointError(msg) from exc
    model.eval()
    return model
