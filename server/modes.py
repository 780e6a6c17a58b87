"""The screening modes by name: what the run config's ``mode`` selects
(:func:`fedsieve.server.factory.build_strategy`), and, for one release, the deprecated
``AnomalyFilter(..., mode=...)`` keyword."""

from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np

from fedsieve.server.local_screening import LocalScreening
from fedsieve.server.screening_mode import EstimatorOrFactory, ScreeningMode
from fedsieve.server.upload_screening import UploadScreening

__all__ = ["MODES", "make_screening"]

#: Mode name -> the screening class it selects.
MODES: dict[str, type[ScreeningMode]] = {cls.mode: cls
                                         for cls in (UploadScreening, LocalScreening)}
#: Upload options a screening without uploads cannot honour, and their defaults: set to
#: anything else in another mode they are refused, never ignored (labels that nobody checks).
NEED_UPLOADS = {"upload_fraction": 1.0, "label_check": None}


def make_screening(mode: str, detector: EstimatorOrFactory,
                   trusted_images: np.ndarray | str | Path, **options: object) -> ScreeningMode:
    """The screening object of ``mode``, built from the options it takes.

    Parameters
    ----------
    mode : {"upload", "local"}
        A key of :data:`MODES`.
    detector, trusted_images
        As every screening takes them
        (:class:`~fedsieve.server.screening_mode.ScreeningMode`).
    **options
        Options of any mode. Those the mode's class does not take are ignored (a flat run
        config holds every mode's keys), except the :data:`NEED_UPLOADS` options set away
        from their defaults, which are refused.

    Raises
    ------
    ValueError
        An unknown mode, an upload option set for a mode without uploads, or whatever the
        screening class refuses.
    TypeError
        An option that no mode takes.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    takes = {name: set(inspect.signature(cls).parameters) for name, cls in MODES.items()}
    unknown = sorted(set(options) - set.union(*takes.values()))
    if unknown:
        raise TypeError(f"no screening mode takes the option {unknown[0]!r}")
    refused = [name for name, default in NEED_UPLOADS.items()
               if name not in takes[mode] and name in options and options[name] != default]
    if refused:
        one = len(refused) == 1
        raise ValueError(f"{' and '.join(refused)} {'needs' if one else 'need'} uploads: "
                         f"{'it does' if one else 'they do'} not apply with "
                         f"mode={mode!r} ({MODES[mode].__name__}); use mode='upload' "
                         "(UploadScreening) or leave them unset")
    return MODES[mode](detector, trusted_images,
                       **{k: v for k, v in options.items() if k in takes[mode]})
