"""Rt-BiGAN: Reptile-initialised BiGAN, adapted on trusted seeds, then self-trained on the pool."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score

from fedsieve.shared.detectors.base import check_images, images_sha256
from fedsieve.shared.detectors.bigan import (
    RowSet,
    batch_sampler,
    init_model,
    to_tensor,
    train_loop,
)
from fedsieve.shared.detectors.gan import GANDetector
from fedsieve.shared.networks import NetConfig


class RtBiGAN(GANDetector):
    """Trusted Rt-BiGAN detector (paper section V) with optional improvements.

    ``fit(pool, trusted)`` (Algorithm 2 then section V.B):

    1. copy the meta-trained weights Phi (``meta_checkpoint``);
    2. run ``adapt_steps`` adversarial steps (D step, then E+G step) on the trusted seeds;
    3. self-training: score the pool with ``A(x) = alpha L_G + (1 - alpha) L_D``, pseudo-label
       it with the threshold policy, train ``steps_per_round`` steps on the pseudo-normal set,
       and repeat. Each round's labels REPLACE the previous ones; it stops after
       ``self_training_rounds`` rounds or when fewer than ``stop_tol`` of the labels change.

    Parameters
    ----------
    meta_checkpoint : str, Path or None
        ``"default"``: the meta-model shipped in ``fedsieve/shared/assets``; a path to a
        meta checkpoint from ``fedsieve meta-train``; None: random initialisation (the
        "no meta-learning" ablation, networks sized by ``z_dim``/``width``/``d_hidden``).
    adapt_steps : int
        K of Algorithm 2 (paper: 20).
    self_training_rounds : int
        Maximum self-training rounds (0 = adapted model only).
    steps_per_round : int
        Adversarial steps on the pseudo-normal set per round.
    stop_tol : float
        Stop when the fraction of pool labels that changed falls below this.
    alpha : float
        Weight of ``L_G`` in the score (0.9 as in EGBAD).
    normalize_scores : bool
        Improvement: divide ``L_G`` and ``L_D`` by their means on the seeds before mixing, so
        ``alpha`` mixes comparable quantities. False = the paper's raw mix.
    trusted_anchors : bool
        Improvement: the seeds are part of the normal set in every round and fill
        ``anchor_fraction`` of every training batch, so "normal" stays defined by them even
        when most of the pseudo-normal set is polluted.
    anchor_fraction : float
        Share of each self-training batch drawn from the seeds when ``trusted_anchors``.
    recon_weight : float
        Weight of an L1 reconstruction (cycle) term ``||x - G(E(x))||_1`` in the E+G step of
        adaptation and self-training. 0 (default) = the paper's pure adversarial objective;
        the benchmark's ``rtbigan+recon`` row shows that 1.0 lowers AUC by ~0.002-0.003 (the
        shipped meta-model is still trained with it, where it speeds up meta-training).
    pixel_weighting : bool
        Improvement: ``L_G`` weights each pixel by the inverse of its mean residual on the
        current pseudo-normal set, so residual ink where normal images have none (e.g. the
        border a digit never reaches) counts more. Off for the adapted-only model.
    batch_size, lr_d, lr_eg : int, float, float
        Shared loop settings (Adam, beta1 = 0.5).
    z_dim, width, d_hidden : int
        Network sizes, used only when ``meta_checkpoint`` is None.
    threshold_policy : {"gmm", "trusted-quantile", "contamination", "fixed"}
        See :mod:`fedsieve.shared.detectors.threshold`.
    threshold_value : float, optional
        Parameter of the policy.
    random_state : int, optional
        Seeds every random draw (batches, latents, initialisation).

    Attributes
    ----------
    history_ : list of dict
        One entry per round (round 0 = adapted only): threshold, flagged count, fraction of
        labels changed, elapsed seconds, and ``auc`` when ``y_true`` was given to ``fit``.
    """

    requires_trusted = True

    def __init__(
        self,
        meta_checkpoint: str | Path | None = "default",
        adapt_steps: int = 20,
        self_training_rounds: int = 3,
        steps_per_round: int = 500,
        stop_tol: float = 0.002,
        alpha: float = 0.9,
        normalize_scores: bool = True,
        trusted_anchors: bool = True,
        anchor_fraction: float = 0.25,
        recon_weight: float = 0.0,
        pixel_weighting: bool = True,
        batch_size: int = 32,
        lr_d: float = 2e-4,
        lr_eg: float = 1e-3,
        z_dim: int = 32,
        width: int = 16,
        d_hidden: int = 128,
        threshold_policy: str = "gmm",
        threshold_value: float | None = None,
        random_state: int | None = 0,
    ) -> None:
        self.meta_checkpoint = meta_checkpoint
        self.adapt_steps = adapt_steps
        self.self_training_rounds = self_training_rounds
        self.steps_per_round = steps_per_round
        self.stop_tol = stop_tol
        self.alpha = alpha
        self.normalize_scores = normalize_scores
        self.trusted_anchors = trusted_anchors
        self.anchor_fraction = anchor_fraction
        self.recon_weight = recon_weight
        self.pixel_weighting = pixel_weighting
        self.batch_size = batch_size
        self.lr_d = lr_d
        self.lr_eg = lr_eg
        self.z_dim = z_dim
        self.width = width
        self.d_hidden = d_hidden
        self.threshold_policy = threshold_policy
        self.threshold_value = threshold_value
        self.random_state = random_state

    def fit(
        self,
        X: Any,
        trusted: Any = None,
        *,
        y_true: Any = None,
        callback: Callable[[RtBiGAN, int], None] | None = None,
    ) -> RtBiGAN:
        """Adapt on ``trusted`` and self-train on the pool ``X``.

        Parameters
        ----------
        X : array-like
            Pool images (see :func:`~fedsieve.shared.detectors.base.check_images`).
        trusted : array-like
            The 5-10 trusted normal images (required).
        y_true : array-like of shape (N,), optional
            Ground truth (1 = anomaly) for ``X``; only used to record ``auc`` in ``history_``.
        callback : callable, optional
            ``callback(self, round)`` after each round, with the detector scoring as it does
            at that round (e.g. to record a test-set AUC per round).

        Returns
        -------
        self
        """
        self._y_true = None if y_true is None else np.asarray(y_true).astype(int).ravel()
        if self._y_true is not None and len(self._y_true) != len(check_images(X)):
            raise ValueError("y_true must have one label per pool image")
        self._callback = callback
        try:
            return super().fit(X, trusted)
        finally:
            del self._y_true, self._callback

    # -- the algorithm -----------------------------------------------------------------------
    def _init_weights(self) -> None:
        from fedsieve.shared.checkpoint import default_meta_checkpoint, load_meta

        if self.meta_checkpoint is None:
            self.model_ = init_model(NetConfig(self.z_dim, self.width, self.d_hidden),
                                     self.random_state)
            self.meta_info_: dict[str, Any] = {}
            return
        path = (default_meta_checkpoint() if str(self.meta_checkpoint) == "default"
                else Path(self.meta_checkpoint))
        self.model_, self.meta_info_ = load_meta(path)

    def _fit(self, X: np.ndarray, seed: np.ndarray | None) -> None:
        assert seed is not None
        t0 = time.perf_counter()
        self._init_weights()
        gen = self._generator()
        cfg = self._loop_config()
        trusted_t = to_tensor(seed)

        # Algorithm 2: K adversarial steps on the trusted seeds (the whole seed set per step).
        train_loop(self.model_, lambda g: trusted_t, int(self.adapt_steps), cfg, gen)
        self.pixel_weight_ = None
        self._set_norm(seed)
        self.adapt_time_ = time.perf_counter() - t0

        self.history_: list[dict[str, Any]] = []
        opts = None
        labels = None
        scores = self._score(X)
        for rnd in range(int(self.self_training_rounds) + 1):
            trusted_scores = self._score(seed)
            thr = self._threshold(scores, trusted_scores)
            new = (scores > thr).astype(np.int64)
            changed = 1.0 if labels is None else float(np.mean(new != labels))
            labels = new  # replace, never accumulate
            self.threshold_ = thr
            self._record(rnd, scores, thr, labels, changed, t0)
            if self._callback is not None:
                self._callback(self, rnd)
            if rnd == int(self.self_training_rounds) or (rnd > 0 and changed < self.stop_tol):
                break
            # The pseudo-normal set is gathered batch by batch: the pool is never copied.
            anchors = trusted_t if self.trusted_anchors else None
            normal = RowSet(X, np.flatnonzero(labels == 0), seed if self.trusted_anchors else None)
            sampler = batch_sampler(normal, cfg.batch_size, anchors, self.anchor_fraction)
            opts = train_loop(self.model_, sampler, int(self.steps_per_round), cfg, gen, opts)
            self._set_pixel_weight(normal)
            self._set_norm(seed)
            scores = self._score(X)
        self.pseudo_labels_ = labels
        self.fit_time_ = time.perf_counter() - t0
        self.data_hashes_ = {"pool_sha256": images_sha256(X), "trusted_sha256": images_sha256(seed)}

    def _record(self, rnd: int, scores: np.ndarray, thr: float, labels: np.ndarray,
                changed: float, t0: float) -> None:
        entry: dict[str, Any] = {
            "round": rnd,
            "threshold": float(thr),
            "n_flagged": int(labels.sum()),
            "changed": changed,
            "elapsed_s": time.perf_counter() - t0,
        }
        if self._y_true is not None and 0 < self._y_true.sum() < len(self._y_true):
            entry["auc"] = float(roc_auc_score(self._y_true, scores))
        self.history_.append(entry)
