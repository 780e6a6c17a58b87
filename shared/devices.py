"""Where fedsieve's torch work runs: the one place a ``device`` setting becomes a torch device.

Every torch detector, federated self-training, local screening's client side and the example
classifier take ``device``: ``"auto"`` (the default: CUDA when torch sees a GPU, else the CPU),
``"cpu"``, ``"cuda"``, ``"cuda:<index>"`` or ``"mps"``. Estimators store the string as given
and resolve it when they fit (scikit-learn style), so a detector built on one machine and
fitted or loaded on another picks that machine's device.

Random draws stay on the CPU wherever the device is: the seeded ``torch.Generator`` objects
are CPU generators and what they draw is moved to the device afterwards, so a seed gives the
same batches and latents on every device, and the CPU path is exactly the one it always was.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["DEVICE_TYPES", "available_devices", "check_device", "context_device",
           "module_device", "resolve_device"]

#: The kinds of device a ``device`` setting may name (besides ``"auto"``).
DEVICE_TYPES = ("cpu", "cuda", "mps")


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def available_devices() -> list[str]:
    """The devices this machine offers, as ``device`` strings (``"cpu"`` first)."""
    found = ["cpu"]
    if torch.cuda.is_available():
        found += ["cuda"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if _mps_available():
        found.append("mps")
    return found


def check_device(device: str | torch.device) -> str:
    """``device`` as a string when it is a well-formed device setting, whether or not this
    machine has that device (a run config is checked where it is read, not where it runs).

    Raises
    ------
    ValueError
        Not ``"auto"`` nor a device of :data:`DEVICE_TYPES` (``"cuda:1"`` is well formed;
        ``"gpu"``, ``"cuda:x"`` and ``"xla"`` are not).
    """
    name = str(device).strip().lower() if isinstance(device, str | torch.device) else None
    if name == "auto":
        return name
    try:
        parsed = torch.device(name) if name else None
    except (RuntimeError, TypeError, ValueError):
        parsed = None
    if parsed is None or parsed.type not in DEVICE_TYPES:
        raise ValueError(f"device must be 'auto' or one of {', '.join(DEVICE_TYPES)} "
                         f"(optionally with an index, e.g. 'cuda:1'), got {device!r}; this "
                         f"machine offers {', '.join(available_devices())}")
    return name


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """The torch device a ``device`` setting means on this machine.

    Parameters
    ----------
    device : str or torch.device, default "auto"
        ``"auto"``: ``cuda`` when ``torch.cuda.is_available()``, else ``cpu``; or a device
        of :data:`DEVICE_TYPES`, e.g. ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``.

    Returns
    -------
    torch.device

    Raises
    ------
    ValueError
        A malformed setting (:func:`check_device`), or a device this machine does not have;
        the message lists the ones it has.
    """
    name = check_device(device)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    parsed = torch.device(name)
    if parsed.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0 or (parsed.index is not None and parsed.index >= count):
            raise ValueError(f"device {name!r} is not available: torch sees "
                             f"{count} CUDA device(s); this machine offers "
                             f"{', '.join(available_devices())} (device='auto' picks one)")
    elif parsed.type == "mps" and not _mps_available():
        raise ValueError(f"device {name!r} is not available (no Apple MPS backend); this "
                         f"machine offers {', '.join(available_devices())}")
    return parsed


def module_device(module: nn.Module) -> torch.device:
    """The device a module's parameters live on (the CPU for one without parameters): what
    the functions that take a trained network move their inputs to."""
    param = next(module.parameters(), None)
    return torch.device("cpu") if param is None else param.device


def context_device(context: Any, run_device: str | None = None) -> str:
    """The ``device`` setting of a Flower node: its ``node_config["device"]`` (one node's own
    hardware, ``flower-supernode --node-config 'device="cuda"'``), else ``run_device``, else
    the run config's ``device``, else ``"auto"``. Checked for spelling (:func:`check_device`),
    resolved by the code that uses it.

    Parameters
    ----------
    context : flwr.app.Context
        The ClientApp's context (anything with ``node_config`` and ``run_config`` mappings).
    run_device : str, optional
        The run's setting when the app holds its settings itself rather than in the run
        config (the example ClientApp built around explicit settings by ``fedsieve
        simulate``).

    Raises
    ------
    ValueError
        A malformed setting.
    """
    node = getattr(context, "node_config", None) or {}
    run = {"device": run_device} if run_device else getattr(context, "run_config", None) or {}
    for config in (node, run):
        if config.get("device"):
            return check_device(str(config["device"]))
    return "auto"
