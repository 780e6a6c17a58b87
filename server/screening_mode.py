"""ScreeningMode: what the two ways of screening share (the base of
:class:`~fedsieve.server.upload_screening.UploadScreening` and
:class:`~fedsieve.server.local_screening.LocalScreening`).

A screening object holds the detector, the trusted images and the options of one way of
screening, checks them once when it is built, and runs a screening when
:class:`~fedsieve.server.AnomalyFilter` asks for one (:meth:`ScreeningMode.screen`): it returns
the per-node verdicts (:class:`~fedsieve.server.screening.Screening`) that the wrapper turns
into drops and exclusions.
"""

from __future__ import annotations

import math
import numbers
import os
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from flwr.serverapp import Grid
from sklearn.base import clone

from fedsieve.server.screening import Screening
from fedsieve.shared.data.images import check_images, format_shape
from fedsieve.shared.data.trusted import load_trusted_file, warn_if_few_trusted

__all__ = ["ScreeningMode"]

#: An unfitted detector (or label check), or a zero-argument callable returning one.
EstimatorOrFactory = Any | Callable[[], Any]


class ScreeningMode(ABC):
    """The detector, the trusted images and the options both ways of screening use.

    Parameters
    ----------
    detector : estimator or callable
        An unfitted fedsieve detector (copied fresh for every screening) or a zero-argument
        callable returning one. It must offer ``fit(X, trusted=...)`` and the fitted
        ``decision_scores_`` and ``threshold_``
        (:func:`fedsieve.shared.detectors.make_detector` builds one by name).
    trusted_images : numpy.ndarray or path
        The server's trusted normal images (5-10), in any form
        :func:`~fedsieve.shared.data.images.check_images` reads, or the path of a trusted file
        (read with :func:`~fedsieve.shared.data.trusted.load_trusted_file`). Their shape (C, H, W)
        is the one the federation's samples must have: it travels in every screening request,
        and a client whose images have another shape is excluded for the round with a reason
        naming both. Fewer than 5 draws a warning with the measured cost
        (:data:`~fedsieve.shared.data.trusted.FEW_TRUSTED_COST`).
    max_upload : int, default 1_000_000
        Most samples accepted from one client: uploaded (upload mode) or reported (local
        mode); a client over it fails screening.
    timeout : float, default 600
        Seconds to wait for each round of the clients' screening replies.
    random_state : int, default 0
        Seed of the screening's draws (which samples are uploaded or fitted on, the spot
        checks, the clients' self-training).

    Attributes
    ----------
    trusted_images : numpy.ndarray
        The trusted images as uint8 (k, C, H, W).

    Raises
    ------
    TypeError
        ``detector`` is neither an estimator nor a factory of one (a detector's name, say).
    ValueError
        A value out of its range, or unusable trusted images (the message names them).
    """

    #: The run config's ``mode`` value that selects this way of screening.
    mode: ClassVar[str]

    def __init__(self, detector: EstimatorOrFactory, trusted_images: np.ndarray | str | Path,
                 *, max_upload: int = 1_000_000, timeout: float = 600.0,
                 random_state: int = 0) -> None:
        if detector is None:
            raise ValueError(f"{type(self).__name__} needs a detector, e.g. "
                             "fedsieve.shared.detectors.make_detector('rtbigan')")
        if not _is_estimator(detector):
            raise TypeError(
                f"detector must be an unfitted detector or a zero-argument callable returning "
                f"one, got {detector!r}; build one by name with "
                f"fedsieve.shared.detectors.make_detector({detector!r})"
                if isinstance(detector, str) else
                f"detector must be an unfitted detector or a zero-argument callable returning "
                f"one, got {type(detector).__name__}")
        require_count("max_upload", max_upload)
        if not (isinstance(timeout, numbers.Real) and timeout > 0 and math.isfinite(timeout)):
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
        if not isinstance(random_state, numbers.Integral) or isinstance(random_state, bool):
            raise ValueError(f"random_state must be an integer seed, got {random_state!r}")
        self.detector = detector
        # Canonical uint8 (k, C, H, W): their shape is the one every sample must have.
        self.trusted_images = _read_trusted(trusted_images)
        # Pointing at the line that builds the screening (through its subclass's __init__).
        warn_if_few_trusted(len(self.trusted_images), stacklevel=4)
        self.max_upload = int(max_upload)
        self.timeout = float(timeout)
        self.random_state = int(random_state)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the trusted images: the shape every client's samples must have."""
        return tuple(int(s) for s in self.trusted_images.shape[1:])

    def make_detector(self) -> Any:
        """A fresh, unfitted copy of the detector (what each screening fits)."""
        return fresh(self.detector)

    @abstractmethod
    def screen(self, grid: Grid, nodes: list[int], server_round: int) -> Screening:
        """Screen the samples of ``nodes`` and return their verdicts.

        Parameters
        ----------
        grid : flwr.serverapp.Grid
            Where the nodes are.
        nodes : list of int
            The nodes to screen, sorted.
        server_round : int
            The round that screens (seeds its draws).

        Returns
        -------
        Screening
            The verdicts per node, the threshold, the pool's estimated contamination, the
            failures and the timings.
        """

    @abstractmethod
    def describe(self) -> str:
        """One line of this screening's options, for the strategy's summary."""

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(detector={self.detector!r}, trusted_images="
                f"{len(self.trusted_images)} of {format_shape(self.image_shape)})")


def fresh(estimator: EstimatorOrFactory) -> Any:
    """An unfitted copy of ``estimator`` with the same hyper-parameters (a deep copy for
    non-sklearn ones), or what a zero-argument factory returns."""
    if callable(estimator) and not hasattr(estimator, "fit"):
        return estimator()
    return clone(estimator, safe=False)


def _is_estimator(value: object) -> bool:
    return hasattr(value, "fit") or callable(value)


def require_count(name: str, value: object) -> None:
    """``value`` must be an integer of at least 1."""
    if (not isinstance(value, numbers.Integral) or isinstance(value, bool)
            or int(value) < 1):
        raise ValueError(f"{name} must be an integer of at least 1, got {value!r}")


def _read_trusted(trusted: object) -> np.ndarray:
    """The trusted images as uint8 (k, C, H, W), from images or a trusted file's path."""
    if isinstance(trusted, str | os.PathLike):
        return load_trusted_file(trusted)
    if not isinstance(trusted, np.ndarray) and not hasattr(trusted, "detach"):
        raise ValueError(
            f"trusted_images must be a numpy array of images or the path of a trusted file "
            f"(read with fedsieve.shared.data.trusted.load_trusted_file), got "
            f"{type(trusted).__name__}")
    return check_images(trusted, "trusted_images", dtype=np.uint8)
