"""Common plumbing of the GAN detectors: hyper-parameters, scoring state, save/load."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedsieve.shared.detectors.base import BaseDetector
from fedsieve.shared.detectors.bigan import SCORE_BATCH, LoopConfig, RowSet, bigan_losses
from fedsieve.shared.networks import BiGAN, NetConfig

#: Added to the per-pixel normal residual before inverting it, so that pixels that are
#: always empty in normal data weigh at most ~1/PIXEL_EPS times an average pixel.
PIXEL_EPS = 0.01


class GANDetector(BaseDetector):
    """Base of RtBiGAN, EGBAD and AnoGAN: holds ``model_`` and the score state.

    Fitted attributes shared by all: ``model_`` (:class:`~fedsieve.shared.networks.BiGAN`),
    ``pixel_weight_`` ((28, 28) tensor or None), ``score_norm_`` (``[mean L_G, mean L_D]`` on
    the seeds, or None), ``decision_scores_``, ``threshold_``, ``labels_``, ``data_hashes_``.
    """

    alpha: float
    recon_weight: float
    batch_size: int
    lr_d: float
    lr_eg: float

    def _loop_config(self, joint: bool = True, recon: bool = True) -> LoopConfig:
        return LoopConfig(
            batch_size=int(self.batch_size),
            lr_d=float(self.lr_d),
            lr_eg=float(self.lr_eg),
            beta1=0.5,
            recon_weight=float(self.recon_weight) if recon else 0.0,
            joint=joint,
        )

    def _generator(self, offset: int = 0) -> torch.Generator:
        seed = 0 if self.random_state is None else int(self.random_state)
        return torch.Generator().manual_seed(seed * 1000 + offset)

    def _losses(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return bigan_losses(self.model_, X, self.pixel_weight_)

    def _combine(self, lg: np.ndarray, ld: np.ndarray) -> np.ndarray:
        if self.score_norm_ is not None:
            lg = lg / self.score_norm_[0]
            ld = ld / self.score_norm_[1]
        return self.alpha * lg + (1.0 - self.alpha) * ld

    def _score(self, X: np.ndarray) -> np.ndarray:
        return self._combine(*self._losses(X))

    def _set_norm(self, seed: np.ndarray | None) -> None:
        """Divide L_G and L_D by their means on the trusted seeds (scale-free mixing)."""
        self.score_norm_ = None
        if seed is not None and getattr(self, "normalize_scores", False):
            lg, ld = self._losses(seed)
            self.score_norm_ = np.array([max(lg.mean(), 1e-8), max(ld.mean(), 1e-8)])

    @torch.no_grad()
    def _set_pixel_weight(self, reference: RowSet | None) -> None:
        """Weight each pixel's residual by the inverse of its mean residual on ``reference``
        (the current normal set), so ink where normal images never have any counts more."""
        self.pixel_weight_ = None
        if reference is None or not getattr(self, "pixel_weighting", False):
            return
        total = torch.zeros(1, 28, 28)
        for x in reference.chunks(SCORE_BATCH):
            total += (x - self.model_.G(self.model_.E(x))).abs().sum(0)
        w = 1.0 / (total / len(reference) + PIXEL_EPS)
        self.pixel_weight_ = w / w.mean()

    # -- persistence -----------------------------------------------------------------------
    def _state_tensors(self) -> dict[str, torch.Tensor]:
        state = {f"model.{k}": v.detach().clone() for k, v in self.model_.state_dict().items()}
        if self.pixel_weight_ is not None:
            state["score.pixel_weight"] = self.pixel_weight_.detach().clone()
        if self.score_norm_ is not None:
            state["score.norm"] = torch.tensor(self.score_norm_, dtype=torch.float64)
        return state

    def _restore_state(self, tensors: dict[str, torch.Tensor], net: dict[str, int]) -> None:
        self.model_ = BiGAN(NetConfig(**net))
        model_state = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
        self.model_.load_state_dict(model_state, strict=True)
        self.model_.eval()
        self.pixel_weight_ = tensors.get("score.pixel_weight")
        norm = tensors.get("score.norm")
        self.score_norm_ = None if norm is None else norm.numpy().astype(np.float64)

    def save(self, path: str | Path) -> Path:
        """Write ``<path>.safetensors`` (weights) and ``<path>.json`` (config, threshold,
        format version, data hashes); returns the JSON path.

        See :mod:`fedsieve.shared.checkpoint` for the format.
        """
        from fedsieve.shared.checkpoint import save_detector

        return save_detector(self, path)

    @classmethod
    def load(cls, path: str | Path) -> GANDetector:
        """Load a detector written by :meth:`save` (never unpickles anything)."""
        from fedsieve.shared.checkpoint import load_detector

        det = load_detector(path)
        if not isinstance(det, cls):
            raise ValueError(f"{path} holds a {type(det).__name__}, not a {cls.__name__}")
        return det

    def _extra_json(self) -> dict[str, Any]:
        return {"history": getattr(self, "history_", [])}
