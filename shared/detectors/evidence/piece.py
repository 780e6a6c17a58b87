"""The protocol every piece of Rt-BiGAN's evidence follows, and the batch of images it reads.

A piece of evidence is one question asked of an image (is it reconstructed well? are its
plain statistics typical? can a walk from normal images reach it?), answered by one number
on a log scale, higher = more anomalous. Rt-BiGAN is composed from a list of pieces: it fits
each on the pool and the trusted images, calibrates all of them on the pool every
self-training round (:class:`~fedsieve.shared.detectors.evidence.calibration.
EvidenceCalibration`) and drops an image when any piece passes its cut. Adding a piece is one
class in one module: subclass :class:`EvidencePiece`, give it a ``name`` and ``values``, and
pass it in ``RtBiGAN(evidence=[..., MyPiece()])``; :func:`register` makes it known by name
too (checkpoints and run configs name pieces).

What several pieces read is computed once per batch of images (:class:`Batch`): the
detector's reconstruction of it (the paper's score ``A(x)`` and the largest patch residual)
and anything a piece remembers under a key (the image statistics two pieces share, the
reachability of the pool, which does not change between rounds).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import numpy as np
import torch
from sklearn.base import BaseEstimator

#: Registry name -> piece class, filled by :func:`register`.
PIECES: dict[str, type[EvidencePiece]] = {}


class Reconstruction(NamedTuple):
    """What the detector's networks say about a batch: the paper's score ``A(x)`` (float64,
    shape (N,), mixed and normalised as the detector does) and, when a piece asked for a
    window, the largest mean residual over any window x window patch (else None)."""

    score: np.ndarray
    local: np.ndarray | None


class Batch:
    """A batch of images (float32 (N, C, H, W) in [0, 1]) and what pieces read from them,
    each computed at most once.

    Parameters
    ----------
    images : ndarray
        The images.
    reconstruct : callable
        ``reconstruct(images, window)`` -> :class:`Reconstruction` of the detector's current
        networks.
    window : int
        Patch side of the local residual (0 = none); the largest any piece asks for.
    """

    def __init__(self, images: np.ndarray,
                 reconstruct: Callable[[np.ndarray, int], Reconstruction], window: int = 0):
        self.images = images
        self._reconstruct = reconstruct
        self._window = int(window)
        self._remembered: dict[str, Any] = {}
        self._reconstruction: Reconstruction | None = None

    def __len__(self) -> int:
        return len(self.images)

    def reconstruction(self) -> Reconstruction:
        """The current networks' reconstruction of the images (computed once per model)."""
        if self._reconstruction is None:
            self._reconstruction = self._reconstruct(self.images, self._window)
        return self._reconstruction

    def model_changed(self) -> None:
        """Forget the reconstruction: the networks were trained further."""
        self._reconstruction = None

    def remember(self, key: str, compute: Callable[[np.ndarray], Any]) -> Any:
        """``compute(images)``, computed once for this batch under ``key``: for values that
        do not depend on the networks (statistics, the pool's reachability)."""
        if key not in self._remembered:
            self._remembered[key] = compute(self.images)
        return self._remembered[key]


@dataclass
class FitContext:
    """What a piece may use when it is fitted, beside the images.

    Attributes
    ----------
    meta_path : Path or None
        The meta checkpoint the networks started from (None: random weights).
    model : torch.nn.Module
        The detector's BiGAN (after adaptation; it keeps training in place).
    seed : int
        The detector's random state (0 when None).
    """

    meta_path: Path | None
    model: torch.nn.Module
    seed: int


@dataclass
class RoundResult:
    """One self-training round, as pieces that learn from its verdicts see it.

    Attributes
    ----------
    pool : ndarray
        The pool's images.
    normal : object
        The round's pseudo-normal set (a :class:`~fedsieve.shared.detectors.bigan.RowSet`).
    flagged : ndarray of int
        Rows of the pool the round flagged.
    steps : int
        Adversarial steps the round trained the networks for.
    generator : torch.Generator
        The fit's generator (draws continue the fit's sequence).
    """

    pool: np.ndarray
    normal: Any
    flagged: np.ndarray
    steps: int
    generator: torch.Generator


class EvidencePiece(BaseEstimator):
    """Base of every piece of evidence: an estimator whose constructor stores its settings.

    Subclasses set :attr:`name` and implement :meth:`values`; a piece that learns overrides
    :meth:`fit` (once per detector fit), :meth:`update` (after every self-training round)
    and :meth:`state` / :meth:`restore` (what a checkpoint keeps). Fitted state ends in ``_``.
    """

    #: The piece's name in verdict explanations, audit logs and checkpoints.
    name: ClassVar[str]
    #: Whether the fitted piece keeps features of pool images (a graph over them): local
    #: screening leaves such a piece out, since the detector is shipped to every client.
    holds_pool_images: ClassVar[bool] = False

    @property
    def residual_window(self) -> int:
        """Side of the patches whose residual :meth:`values` reads from the batch's
        reconstruction (0 = none)."""
        return 0

    @property
    def ready(self) -> bool:
        """Whether the piece takes part in the score now (a piece that first learns from a
        round's verdicts joins after it)."""
        return True

    def fit(self, pool: Batch, trusted: Batch, context: FitContext) -> bool:
        """Learn what the piece needs from the pool and the trusted images; return whether
        it takes part in this fit (False leaves it out, after a warning saying why)."""
        return True

    def update(self, result: RoundResult) -> None:
        """Learn from one self-training round's verdicts (nothing by default)."""

    def values(self, batch: Batch) -> np.ndarray:  # pragma: no cover - abstract
        """The piece's value per image: float64 of shape (N,), log scale, higher = more
        anomalous."""
        raise NotImplementedError

    def state(self) -> dict[str, torch.Tensor]:
        """Fitted state as named tensors for a checkpoint (names unique across pieces)."""
        return {}

    def header(self) -> dict[str, Any]:
        """Fitted facts worth keeping beside the tensors, as JSON (none by default)."""
        return {}

    def restore(self, tensors: dict[str, torch.Tensor], header: dict[str, Any],
                model: torch.nn.Module) -> bool:
        """Take back :meth:`state` and :meth:`header`; return whether the piece took part in
        the score when saved. ``model`` is the detector's restored BiGAN (on its device)."""
        return True

    def spec(self) -> dict[str, Any]:
        """The piece as JSON: its registry name and settings."""
        return {"name": self.name, **self.get_params(deep=False)}


def register(cls: type[EvidencePiece]) -> type[EvidencePiece]:
    """Class decorator: make a piece known by its ``name`` (to :func:`make_piece`)."""
    PIECES[cls.name] = cls
    return cls


def make_piece(spec: str | dict[str, Any] | EvidencePiece) -> EvidencePiece:
    """A piece from its name, its :meth:`EvidencePiece.spec` or itself (a fresh copy).

    Raises
    ------
    ValueError
        An unknown name; the message lists the known ones.
    """
    if isinstance(spec, EvidencePiece):
        from sklearn.base import clone
        return clone(spec)
    if isinstance(spec, str):
        name, params = spec, {}
    elif isinstance(spec, dict) and "name" in spec:
        params = dict(spec)
        name = params.pop("name")
    else:
        raise ValueError(f"an evidence piece is a name, a dict with 'name' or an "
                         f"EvidencePiece, got {spec!r}")
    if name not in PIECES:
        raise ValueError(f"unknown evidence piece {name!r}; known: {', '.join(sorted(PIECES))}")
    return PIECES[name](**params)
