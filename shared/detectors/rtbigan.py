"""Rt-BiGAN: Reptile-initialised BiGAN, adapted on trusted images, then self-trained on the pool."""

from __future__ import annotations

import os
import time
import warnings
from dataclasses import replace
from numbers import Integral, Real
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from sklearn.utils._param_validation import Interval

from fedsieve.shared.checkpoint import default_meta_checkpoint, load_meta, load_meta_atlas
from fedsieve.shared.detectors.base import RoundRecorder
from fedsieve.shared.detectors.bigan import (
    SCORE_BATCH,
    LoopConfig,
    RowSet,
    as_batch,
    batch_sampler,
    bigan_losses,
    init_model,
    train_loop,
)
from fedsieve.shared.detectors.evidence import (
    EvidenceCalibration,
    detachment,
    image_statistics,
    robust_center_scale,
    typicality,
)
from fedsieve.shared.detectors.gan import GANDetector
from fedsieve.shared.detectors.latent_push import LatentPush
from fedsieve.shared.detectors.reachability import Reachability, atlas_fits
from fedsieve.shared.detectors.threshold import log_scores, normal_mode_cut
from fedsieve.shared.images import DEFAULT_IMAGE_SHAPE, format_shape
from fedsieve.shared.networks import Encoder, NetConfig

#: Added to the per-pixel normal residual before inverting it, so that pixels that are
#: always empty in normal data weigh at most ~1/PIXEL_EPS times an average pixel.
PIXEL_EPS = 0.01
#: AnoEAN steps of the latent push per self-training round, and the flagged images a round
#: needs before the push learns from them.
PUSH_STEPS = 300
PUSH_MIN_FLAGGED = 10


class MetaModelWarning(UserWarning):
    """The meta-model does not fit the images: Rt-BiGAN starts from random weights (no
    meta-model of their shape), or leaves the reachability evidence out (its atlas does not
    look like the trusted images)."""


class RtBiGAN(GANDetector):
    """Trusted Rt-BiGAN detector (paper section V) with optional improvements.

    ``fit(pool, trusted)`` (Algorithm 2 then section V.B):

    1. copy the meta-trained weights Phi (``meta_checkpoint``);
    2. run ``adapt_steps`` adversarial steps (D step, then E+G step) on the trusted images;
    3. self-training: score the pool with ``A(x) = alpha L_G + (1 - alpha) L_D``, pseudo-label
       it with the threshold policy, train ``steps_per_round`` steps on the pseudo-normal set,
       and repeat. Each round's labels REPLACE the previous ones; it stops after
       ``self_training_rounds`` rounds or when fewer than ``stop_tol`` of the labels change.

    The last round's pool scores, threshold and labels are the fitted ones.

    Beyond the paper, the score weighs up to seven pieces of evidence
    (:mod:`fedsieve.shared.detectors.evidence`): the paper's global score ``A(x)``, the same
    score read from below (``two_sided``; images simpler than any normal one), the
    largest local residual (``local_window``; small defects), the image's typicality
    (``typicality``; blank, over-exposed, blurred, noisy frames), its detached ink
    (``detached_ink``; stickers, trigger patches, specks, occluders), its reachability from
    known-normal images through the pool (``reachability``; pollution of another kind,
    however simple, :mod:`fedsieve.shared.detectors.reachability`) and AnoEAN's pushed
    latent code (``latent_push``). Each
    round calibrates every piece on the pool so that its false-drop cut is 0, and the
    score is the largest calibrated piece: with the default ``"budget"`` policy an image is
    dropped when any piece passes its cut. With ``two_sided=False``, ``local_window=0``,
    ``typicality=False``, ``detached_ink=False`` and ``reachability=False`` the score is the
    paper's ``A(x)`` alone.

    Parameters
    ----------
    meta_checkpoint : str, Path or None, default="default"
        ``"default"``: the meta-model shipped in ``fedsieve/shared/assets``; a path to a
        meta checkpoint from ``fedsieve meta-train``; None: random initialisation (the
        "no meta-learning" ablation, networks sized by ``z_dim``/``width``/``d_hidden``).
        The shipped meta-model takes 1x28x28 images; for another shape "default" starts
        from random weights with a :class:`MetaModelWarning`, and a named meta-model must
        have been made for the images' shape (``fedsieve meta-train --data``).
    adapt_steps : int, default=20
        K of Algorithm 2 (paper: 20).
    self_training_rounds : int, default=3
        Maximum self-training rounds (0 = adapted model only).
    steps_per_round : int, default=500
        Adversarial steps on the pseudo-normal set per round.
    stop_tol : float, default=0.002
        Stop when the fraction of pool labels that changed falls below this.
    alpha : float, default=0.9
        Weight of ``L_G`` in the score, in [0, 1] (0.9 as in EGBAD).
    normalize_scores : bool, default=True
        Improvement: divide ``L_G`` and ``L_D`` by their means on the trusted images before
        mixing, so ``alpha`` mixes comparable quantities. False = the paper's raw mix.
    trusted_anchors : bool, default=True
        Improvement: the trusted images are part of the normal set in every round and fill
        ``anchor_fraction`` of every training batch, so "normal" stays defined by them even
        when most of the pseudo-normal set is polluted.
    anchor_fraction : float, default=0.25
        Share of each self-training batch drawn from the trusted images when
        ``trusted_anchors`` (at least one image per batch).
    recon_weight : float, default=0.0
        Weight of an L1 reconstruction (cycle) term ``||x - G(E(x))||_1`` in the E+G step of
        adaptation and self-training. 0 = the paper's pure adversarial objective; the
        benchmark's ``rtbigan+recon`` row shows that 1.0 lowers AUC by ~0.002-0.003 (the
        shipped meta-model is still trained with it, where it speeds up meta-training).
    pixel_weighting : bool, default=True
        Improvement: ``L_G`` weights each pixel by the inverse of its mean residual on the
        current pseudo-normal set, so residual ink where normal images have none (e.g. the
        border a digit never reaches) counts more. Off for the adapted-only model.
    two_sided : bool, default=False
        Whether an image whose global score lies far *below* the normal images' is
        anomalous too (the typicality test of Nalisnick et al., 2019, on ``A(x)``). A
        reconstruction error grows with an image's ink and complexity, so pollution that
        is simpler than the normal data (digits among clothes, sketches among photos)
        reconstructs better than any normal image and a one-sided score ranks it as the
        most normal of all. The negated global score is cut like every other piece: at the
        valley before a second population, else at the pool's budget quantile. Measured
        (seed 0): on the reverse protocol (Fashion-MNIST normal, 20 % MNIST digits) test
        AUC 0.16 -> 0.77 from the shipped meta-model, but 0.47 -> 0.35 from a Fashion-MNIST
        meta-model (``benchmarks/shapes.py``); public protocol 0.9996 -> 0.9992. Off by
        default: the digits overlap the simplest clothes (no valley), so its verdicts still
        flag almost none of them, and the gain does not hold across meta-models.
    local_window : int, default=0
        Side of the patches of the local evidence (0 = off).
    typicality : bool, default=True
        Whether the image-statistics evidence is part of the score.
    detached_ink : bool, default=True
        Whether the detached-ink evidence (ink outside the image's largest blob: stickers,
        trigger patches, specks, occluders) is part of the score.
    reachability : bool, default=True
        Whether the reachability evidence is part of the score: a random walk over the
        pool's nearest-neighbour graph from the trusted images and the meta-model's atlas
        (a sample of the normal images it was trained on, saved by ``fedsieve
        meta-train``), scored ``-log`` of the walk's share per edge. Pollution that forms a
        region of its own is seldom reached, however simple it is. It needs a meta-model
        with an atlas that looks like the trusted images (``fedsieve meta-train`` writes
        one; the shipped meta-model has none, so the default detector is unchanged);
        otherwise it is left out, with a :class:`MetaModelWarning` when the atlas and the
        trusted images differ. Measured with a meta-model of the task's normal data
        (``benchmarks/shapes.py``): reverse protocol (Fashion-MNIST normal, 20 % MNIST
        digits) test AUC 0.47 -> 0.99, 98 % of the digits and 0.8 % of the normal images
        flagged (0 % of the digits without it).
    trim_fraction : float, default=0.0
        Self-training leaves out the highest-scoring ``trim_fraction`` of the pool besides
        the flagged images, so that pollution just under the cut (or a round that flags
        almost nothing) is not learned as normal.
    core_width : float or None, default=1.0
        The first self-training round learns only from the pool's normal core: the
        unflagged images whose every piece of evidence lies at most ``core_width`` robust
        SDs (of the normal mode's left side, see
        :func:`~fedsieve.shared.detectors.threshold.normal_mode_cut`) above the normal mode.
        The adapted model has seen 5-10 images, so pollution it cannot yet separate (an
        ink-matched or majority pool) would otherwise be learned as normal; later rounds
        learn from every unflagged image, as in the paper (learning only the core every
        round narrows the model until the normal images outside it score like a second
        population). The verdicts are unchanged. None = every unflagged image from round 0.
    latent_push : bool, default=False
        AnoEAN's encoder as one more piece of evidence
        (:mod:`fedsieve.shared.detectors.latent_push`): after each self-training round with
        at least 10 flagged images, a copy of the encoder learns (up to 300 steps) to map the
        pseudo-normal images onto N(0, I) and the flagged ones out of it; the piece is the
        Mahalanobis distance of its code. Off by default: in the pollution benchmark it
        raised the ranking of kinds the other pieces only partly flag (occluded digits: test
        AUC 0.92-0.94 -> 0.95-0.98) but changed no verdict, and it adds up to 2x fit time.
    batch_size : int, default=32
        Images per self-training step (adaptation uses all trusted images in every step).
    lr_d, lr_eg : float, default=2e-4, 1e-3
        Adam learning rates of D and of E+G (beta1 = 0.5).
    z_dim, width, d_hidden : int, default=32, 16, 128
        Network sizes, used only when the networks start from random weights.
    threshold_policy : {"budget", "gmm", "trusted-quantile", "contamination", "fixed"}
        Default "budget".
        See :mod:`fedsieve.shared.detectors.threshold`. The evidence is always calibrated
        with the false-drop budget (``threshold_value`` under ``"budget"``, else 0.01); the
        other policies then cut the combined score.
    threshold_value : float, optional
        Parameter of the policy.
    random_state : int, optional, default=0
        Seeds every random draw (batches, latents, initialisation).
    device : str, default="auto"
        Where the networks train and score: ``"auto"`` (CUDA when torch sees a GPU, else
        the CPU), ``"cpu"``, ``"cuda"``, ``"cuda:<index>"`` or ``"mps"``; resolved when
        ``fit`` starts (:func:`~fedsieve.shared.devices.resolve_device`). The random draws
        are the same on every device; on the CPU the scores are exactly those of earlier
        versions. The image statistics and the reachability graph are numpy work on the
        CPU wherever the networks run.

    Attributes
    ----------
    model_ : fedsieve.shared.networks.BiGAN
        The adapted and self-trained networks, on ``device_``.
    device_ : torch.device
        The resolved ``device``.
    meta_info_ : dict
        Header of the meta checkpoint the fit started from (empty without one); a loaded
        detector keeps only its ``weights_sha256``.
    adapt_time_ : float
        Seconds spent loading the meta-model and adapting on the trusted images.
    pixel_weight_ : torch.Tensor of shape (C, H, W) or None
        Per-pixel weight of ``L_G`` (None without ``pixel_weighting`` or self-training).
    score_norm_ : ndarray of shape (2,) or None
        Means of ``L_G`` and ``L_D`` on the trusted images that divide them before mixing
        (None without ``normalize_scores``).
    statistics_center_, statistics_scale_ : ndarray of shape (9,) or None
        Robust centre and scale of the normal images' statistics (None without
        ``typicality`` and ``detached_ink``).
    reachability_ : Reachability or None
        The graph's nodes and their scores (None when the evidence is left out).
    atlas_fit_ : dict or None
        ``fits``, ``distance`` and ``reference`` of the atlas check
        (:func:`~fedsieve.shared.detectors.reachability.atlas_fits`; None without an atlas).
    latent_push_ : LatentPush or None
        The pushed encoder and its normal codes' Gaussian (None without ``latent_push``,
        or while no round has flagged enough images).
    calibration_ : EvidenceCalibration or None
        The last round's cut and normal mode of each piece of evidence (None when the score
        is the global score alone).
    decision_scores_ : ndarray of shape (n_pool,)
        Scores of the pool after the last round (float64, higher = more anomalous).
    trusted_scores_ : ndarray of shape (n_trusted,)
        Scores of the trusted images after the last round.
    threshold_ : float
        The last round's threshold: scores above it are anomalies.
    labels_ : ndarray of shape (n_pool,)
        The last round's verdicts on the pool (int64, 1 = anomaly).
    contamination_ : dict
        Estimated pollution share of the pool with a 95 % interval (see BaseDetector).
    history_ : list of dict
        One entry per round (round 0 = adapted only): threshold, flagged count, fraction of
        labels changed, elapsed seconds, and ``auc`` when ``y_true`` was given to ``fit``.
    data_hashes_ : dict
        SHA-256 of the pool and of the trusted images.
    fit_time_ : float
        Seconds ``fit`` took.
    n_features_in_ : int
        Values per image (C * H * W).
    image_shape_ : tuple of int
        (C, H, W) of the fitted images; ``decision_function`` scores only that shape.
    """

    requires_trusted = True

    _parameter_constraints: ClassVar[dict[str, list[Any]]] = {
        **GANDetector._parameter_constraints,
        "meta_checkpoint": [str, os.PathLike, None],
        "adapt_steps": [Interval(Integral, 0, None, closed="left")],
        "self_training_rounds": [Interval(Integral, 0, None, closed="left")],
        "steps_per_round": [Interval(Integral, 0, None, closed="left")],
        "stop_tol": [Interval(Real, 0, 1, closed="both")],
        "normalize_scores": ["boolean"],
        "trusted_anchors": ["boolean"],
        "anchor_fraction": [Interval(Real, 0, 1, closed="both")],
        "recon_weight": [Interval(Real, 0, None, closed="left")],
        "pixel_weighting": ["boolean"],
        "two_sided": ["boolean"],
        "local_window": [Interval(Integral, 0, None, closed="left")],
        "typicality": ["boolean"],
        "detached_ink": ["boolean"],
        "trim_fraction": [Interval(Real, 0, 1, closed="left")],
        "core_width": [Interval(Real, 0, None, closed="neither"), None],
        "reachability": ["boolean"],
        "latent_push": ["boolean"],
    }

    def __init__(
        self,
        *,
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
        two_sided: bool = False,
        local_window: int = 0,
        typicality: bool = True,
        detached_ink: bool = True,
        reachability: bool = True,
        trim_fraction: float = 0.0,
        core_width: float | None = 1.0,
        latent_push: bool = False,
        batch_size: int = 32,
        lr_d: float = 2e-4,
        lr_eg: float = 1e-3,
        z_dim: int = 32,
        width: int = 16,
        d_hidden: int = 128,
        threshold_policy: str = "budget",
        threshold_value: float | None = None,
        random_state: int | None = 0,
        device: str = "auto",
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
        self.two_sided = two_sided
        self.local_window = local_window
        self.typicality = typicality
        self.detached_ink = detached_ink
        self.reachability = reachability
        self.trim_fraction = trim_fraction
        self.core_width = core_width
        self.latent_push = latent_push
        self.batch_size = batch_size
        self.lr_d = lr_d
        self.lr_eg = lr_eg
        self.z_dim = z_dim
        self.width = width
        self.d_hidden = d_hidden
        self.threshold_policy = threshold_policy
        self.threshold_value = threshold_value
        self.random_state = random_state
        self.device = device

    # -- the algorithm -----------------------------------------------------------------------
    def _fit(self, X: np.ndarray, trusted: np.ndarray | None, rounds: RoundRecorder) -> None:
        if trusted is None:  # BaseDetector.fit enforces requires_trusted
            raise ValueError("RtBiGAN needs trusted images")
        if int(self.local_window) > min(X.shape[2:]):
            raise ValueError(f"local_window={self.local_window} is larger than the "
                             f"{X.shape[2]}x{X.shape[3]} images; use at most {min(X.shape[2:])}")
        t0 = time.perf_counter()
        meta_path = self._init_weights(tuple(X.shape[1:]))
        gen = self._generator()
        cfg = self._loop_config()
        trusted_t = as_batch(trusted)  # on the CPU, as the pool batches it anchors
        adapt_batch = trusted_t.to(self.device_)  # moved once: it is every adaptation batch

        # Algorithm 2: K adversarial steps on the trusted images (all of them in every step).
        train_loop(self.model_, lambda g: adapt_batch, int(self.adapt_steps), cfg, gen)
        self.pixel_weight_ = None
        self.latent_push_: LatentPush | None = None
        self._set_norm(trusted)
        # The images' statistics do not change between rounds: computed once.
        stats = self._fit_statistics(X, trusted)
        self.adapt_time_ = time.perf_counter() - t0
        # Nor does the graph: the pool's and the trusted images' reachability, once.
        reach = self._fit_reachability(X, trusted, meta_path)

        opts = None
        scores, evidence = self._calibrate(X, trusted, stats, reach)
        for rnd in range(int(self.self_training_rounds) + 1):
            labels, changed = rounds.end_round(scores)
            if rnd == int(self.self_training_rounds) or (rnd > 0 and changed < self.stop_tol):
                return
            # Trimmed pseudo-normal set: unflagged and not among the highest-scoring share,
            # gathered batch by batch (the pool is never copied).
            keep = labels == 0
            if self.trim_fraction > 0:
                keep &= scores <= np.quantile(scores, 1.0 - float(self.trim_fraction))
            if self.core_width is not None and rnd == 0:
                keep &= self._normal_core(scores, evidence)
            anchors = trusted_t if self.trusted_anchors else None
            normal = RowSet(X, np.flatnonzero(keep),
                            trusted if self.trusted_anchors else None)
            sampler = batch_sampler(normal, cfg.batch_size, anchors, self.anchor_fraction)
            opts = train_loop(self.model_, sampler, int(self.steps_per_round), cfg, gen, opts)
            self._set_pixel_weight(normal)
            self._set_norm(trusted)
            self._push(X, normal, labels, gen)
            scores, evidence = self._calibrate(X, trusted, stats, reach)

    def _push(self, X: np.ndarray, normal: RowSet, labels: np.ndarray,
              gen: torch.Generator) -> None:
        """``latent_push``: AnoEAN steps with this round's flagged images as the anomalies."""
        flagged = np.flatnonzero(labels == 1)
        if not self.latent_push or len(flagged) < PUSH_MIN_FLAGGED:
            return
        if self.latent_push_ is None:
            seed = int(torch.randint(2**31 - 1, (1,), generator=gen))
            self.latent_push_ = LatentPush.from_encoder(self.model_.E, seed)  # model_'s device
        self.latent_push_.train(normal, RowSet(X, flagged),
                                min(PUSH_STEPS, int(self.steps_per_round)), gen)

    def _init_weights(self, shape: tuple[int, int, int]) -> Path | None:
        """Start from the meta-model made for ``shape`` (C, H, W); return its path (None
        from random weights).

        The shipped meta-model was trained on 1x28x28 digits. For images of another shape
        (and no meta-model of the user's own) the networks start from a seeded random
        initialisation, sized by ``z_dim``/``width``/``d_hidden``, with a warning: a
        meta-model made for the data (``fedsieve meta-train --data``) adapts from 5-10
        images far better. A meta-model the user named explicitly must fit the images.
        """
        self.meta_info_: dict[str, Any] = {}
        default = self.meta_checkpoint is not None and str(self.meta_checkpoint) == "default"
        if default and shape != DEFAULT_IMAGE_SHAPE:
            warnings.warn(
                f"the shipped meta-model was made for {format_shape(DEFAULT_IMAGE_SHAPE)} "
                f"images, these are {format_shape(shape)} (C x H x W): starting from random "
                "weights. Meta-train one for your data (fedsieve meta-train --data ...) and "
                "pass meta_checkpoint=<path> for a better start", MetaModelWarning,
                stacklevel=4)
        if self.meta_checkpoint is None or (default and shape != DEFAULT_IMAGE_SHAPE):
            self.model_ = init_model(NetConfig(self.z_dim, self.width, self.d_hidden,
                                               image_shape=shape), self.random_state,
                                     self.device_)
            return None
        path = default_meta_checkpoint() if default else Path(self.meta_checkpoint)
        self.model_, self.meta_info_ = load_meta(path, self.device_)
        made_for = tuple(self.model_.cfg.image_shape)
        if made_for != shape:
            raise ValueError(
                f"the meta-model {path} was made for {format_shape(made_for)} images "
                f"(C x H x W), but these are {format_shape(shape)}; meta-train one for them "
                "(fedsieve meta-train --data ...) or resize the images")
        return path

    def _loop_config(self) -> LoopConfig:
        return replace(super()._loop_config(), recon_weight=float(self.recon_weight))

    # -- the evidence and its calibration ---------------------------------------------------
    def _scores_calibrated(self) -> bool:
        return getattr(self, "calibration_", None) is not None

    def _uses_evidence(self) -> bool:
        return (bool(self.two_sided) or bool(self.local_window) or self._uses_statistics()
                or getattr(self, "reachability_", None) is not None or bool(self.latent_push))

    def _uses_statistics(self) -> bool:
        return bool(self.typicality) or bool(self.detached_ink)

    def _fit_statistics(self, X: np.ndarray, trusted: np.ndarray
                        ) -> tuple[np.ndarray, np.ndarray] | tuple[None, None]:
        """Fit the normal statistics' centre and scale; return the pool's and the trusted
        images' statistics (None, None when no evidence reads them)."""
        self.statistics_center_ = self.statistics_scale_ = None
        if not self._uses_statistics():
            return None, None
        pool_stats, trusted_stats = image_statistics(X), image_statistics(trusted)
        self.statistics_center_, self.statistics_scale_ = robust_center_scale(
            pool_stats, trusted_stats)
        return pool_stats, trusted_stats

    def _fit_reachability(self, X: np.ndarray, trusted: np.ndarray, meta_path: Path | None
                          ) -> tuple[np.ndarray, np.ndarray] | tuple[None, None]:
        """Build the reachability graph when the atlas of the meta-model at ``meta_path``
        fits the trusted images; return the pool's and the trusted images' reachability
        (None, None without)."""
        self.reachability_: Reachability | None = None
        self.atlas_fit_: dict[str, Any] | None = None
        atlas = (load_meta_atlas(meta_path)
                 if self.reachability and meta_path is not None else None)
        if atlas is None:
            return None, None
        atlas = atlas.astype(np.float32) / np.float32(255)
        fits, distance, reference = atlas_fits(trusted, atlas)
        self.atlas_fit_ = {"fits": fits, "distance": distance, "reference": reference}
        if not fits:
            warnings.warn(
                f"the trusted images do not look like the meta-model's normal images (median "
                f"distance {distance:.2f} to its atlas, whose own images lie within "
                f"{reference:.2f} of each other): the reachability evidence is left out. "
                "Meta-train one on your normal data (fedsieve meta-train --data ...) and pass "
                "meta_checkpoint=<path>", MetaModelWarning, stacklevel=4)
            return None, None
        seed = 0 if self.random_state is None else int(self.random_state)
        self.reachability_ = Reachability.fit(X, np.concatenate([trusted, atlas]), seed=seed)
        return self.reachability_.score(X), self.reachability_.score(trusted)

    def _evidence_names(self) -> list[str]:
        """Names of the columns of :meth:`_evidence`, in order."""
        names = ["global"] + ["global-from-below"] * bool(self.two_sided)
        names += ["local"] * bool(self.local_window) + ["typicality"] * bool(self.typicality)
        names += ["detached-ink"] * bool(self.detached_ink)
        names += ["reachability"] * (getattr(self, "reachability_", None) is not None)
        return names + ["latent-push"] * (getattr(self, "latent_push_", None) is not None)

    def _evidence(self, X: np.ndarray, stats: np.ndarray | None = None,
                  reach: np.ndarray | None = None) -> np.ndarray:
        """Log of each piece of evidence, float64 of shape (N, K), in the order of
        :meth:`_evidence_names`. ``stats`` and ``reach`` are ``X``'s image statistics and
        reachability when already known."""
        window = int(self.local_window)
        losses = bigan_losses(self.model_, X, self.pixel_weight_, local_window=window)
        pieces = [np.log(np.maximum(self._combine(losses[0], losses[1]), 1e-12))]
        if self.two_sided:
            pieces.append(-pieces[0])
        if window:
            pieces.append(np.log(np.maximum(losses[2], 1e-12)))
        if self._uses_statistics() and stats is None:
            stats = image_statistics(X)
        # log1p, not log, for the distances: 0 is the most typical image, and log would
        # stretch the near-0 distances into a long left tail that widens the normal mode's
        # estimated spread.
        if self.typicality:
            pieces.append(np.log1p(typicality(stats, self.statistics_center_,
                                              self.statistics_scale_)))
        if self.detached_ink:
            pieces.append(np.log1p(detachment(stats, self.statistics_center_,
                                              self.statistics_scale_)))
        graph = getattr(self, "reachability_", None)
        if graph is not None:  # -log of a share already: a log scale
            pieces.append(graph.score(X) if reach is None else reach)
        if self.latent_push_ is not None:
            pieces.append(np.log(np.maximum(self.latent_push_.distance(X), 1e-12)))
        return np.stack(pieces, axis=1)

    def _calibrate(self, X: np.ndarray, trusted: np.ndarray,
                   stats: tuple[np.ndarray | None, np.ndarray | None],
                   reach: tuple[np.ndarray | None, np.ndarray | None] = (None, None)
                   ) -> tuple[np.ndarray, np.ndarray | None]:
        """Fit this round's calibration on the pool; return the pool's scores and its
        log-evidence (None when the score is the global score alone). ``stats`` and
        ``reach``: the pool's and the trusted images' statistics and reachability."""
        self.calibration_ = None
        if not self._uses_evidence():
            return self._score(X), None
        pool = self._evidence(X, stats[0], reach[0])
        self.calibration_ = EvidenceCalibration.fit(
            pool, self._evidence(trusted, stats[1], reach[1]), self._budget())
        return self.calibration_.combine(pool), pool

    # -- local screening: the evidence before the pool's calibration ------------------------
    def _score_evidence(self, X: np.ndarray) -> np.ndarray:
        if self.calibration_ is None:
            return super()._score_evidence(X)
        return self._evidence(X)

    def _evidence_width(self) -> int:
        return 1 if self.calibration_ is None else len(self._evidence_names())

    def _fit_cut(self, evidence: np.ndarray, trusted: np.ndarray | None) -> None:
        if self.calibration_ is not None:
            self.calibration_ = EvidenceCalibration.fit(
                evidence, None if trusted is None else self._evidence(trusted), self._budget())

    def _scores_from_evidence(self, evidence: np.ndarray) -> np.ndarray:
        if self.calibration_ is None:
            return super()._scores_from_evidence(evidence)
        return self.calibration_.combine(evidence)

    def _normal_core(self, scores: np.ndarray, evidence: np.ndarray | None) -> np.ndarray:
        """The pool's normal core (bool): see ``core_width``."""
        width = float(self.core_width)
        if evidence is not None:
            return self.calibration_.core(evidence, width)
        logs = log_scores(scores)
        found = normal_mode_cut(logs, log_scores(self.trusted_scores_, scores), self._budget())
        return logs <= found.mode + width * found.spread

    def _score(self, X: np.ndarray) -> np.ndarray:
        if self.calibration_ is None:
            return super()._score(X)
        return self.calibration_.combine(self._evidence(X))

    # -- the global score's two improvements -------------------------------------------------
    def _losses(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return bigan_losses(self.model_, X, self.pixel_weight_)

    def _pixel_weight(self) -> torch.Tensor | None:
        return self.pixel_weight_

    def _combine(self, lg: np.ndarray, ld: np.ndarray) -> np.ndarray:
        if self.score_norm_ is not None:
            lg = lg / self.score_norm_[0]
            ld = ld / self.score_norm_[1]
        return super()._combine(lg, ld)

    def _set_norm(self, trusted: np.ndarray) -> None:
        """Divide L_G and L_D by their means on the trusted images (scale-free mixing)."""
        self.score_norm_ = None
        if self.normalize_scores:
            lg, ld = self._losses(trusted)
            self.score_norm_ = np.array([max(lg.mean(), 1e-8), max(ld.mean(), 1e-8)])

    @torch.no_grad()
    def _set_pixel_weight(self, reference: RowSet) -> None:
        """Weight each pixel's residual by the inverse of its mean residual on ``reference``
        (the current normal set), so ink where normal images never have any counts more."""
        self.pixel_weight_ = None
        if not self.pixel_weighting:
            return
        total = torch.zeros(self.model_.cfg.image_shape, device=self.device_)
        for x in reference.chunks(SCORE_BATCH):
            x = x.to(self.device_)
            total += (x - self.model_.G(self.model_.E(x))).abs().sum(0)
        self._weigh_pixels(total / len(reference))

    def _weigh_pixels(self, mean_residual: torch.Tensor) -> None:
        w = 1.0 / (mean_residual.to(self.device_) + PIXEL_EPS)
        self.pixel_weight_ = w / w.mean()

    def _local_core(self, evidence: np.ndarray) -> np.ndarray:
        if self.core_width is None or self.calibration_ is None:
            return super()._local_core(evidence)
        return self.calibration_.core(evidence, float(self.core_width))

    def _merged(self, mean_residual: torch.Tensor, trusted: np.ndarray | None) -> None:
        self.pixel_weight_ = None
        if self.pixel_weighting:
            self._weigh_pixels(mean_residual)
        if trusted is not None:
            self._set_norm(trusted)

    # -- checkpoint state --------------------------------------------------------------------
    def _state_tensors(self) -> dict[str, torch.Tensor]:
        state = super()._state_tensors()
        if self.pixel_weight_ is not None:
            state["score.pixel_weight"] = self.pixel_weight_.detach().clone()
        if self.score_norm_ is not None:
            state["score.norm"] = torch.tensor(self.score_norm_, dtype=torch.float64)
        if self.calibration_ is not None:
            state["score.calibration"] = torch.tensor(self.calibration_.as_array())
        if self.statistics_center_ is not None:
            state["score.statistics"] = torch.tensor(
                np.stack([self.statistics_center_, self.statistics_scale_]))
        reach = getattr(self, "reachability_", None)
        if reach is not None:
            state["reach.features"] = torch.from_numpy(reach.features.copy())
            state["reach.scores"] = torch.from_numpy(reach.node_scores.astype(np.float64))
            state["reach.neighbours"] = torch.tensor(reach.neighbours, dtype=torch.int64)
        push = getattr(self, "latent_push_", None)
        if push is not None:
            state |= {f"push.encoder.{k}": v.detach().clone()
                      for k, v in push.encoder.state_dict().items()}
            state["push.center"] = torch.tensor(push.center)
            state["push.precision"] = torch.tensor(push.precision)
        return state

    def _state_header(self) -> dict[str, Any]:
        return {**super()._state_header(),
                "meta_checkpoint": self.meta_info_.get("weights_sha256"),
                "atlas_fit": getattr(self, "atlas_fit_", None)}

    def _restore_state(self, tensors: dict[str, torch.Tensor], header: dict[str, Any]) -> None:
        super()._restore_state(tensors, header)
        model = self.model_
        sha = header.get("meta_checkpoint")
        self.meta_info_ = {} if sha is None else {"weights_sha256": sha}
        weight = tensors.get("score.pixel_weight")
        self.pixel_weight_ = None if weight is None else weight.to(self.device_)
        norm = tensors.get("score.norm")
        self.score_norm_ = None if norm is None else norm.numpy().astype(np.float64)
        cal = tensors.get("score.calibration")
        self.calibration_ = None if cal is None else EvidenceCalibration.from_array(
            cal.numpy().astype(np.float64))
        stats = tensors.get("score.statistics")
        self.statistics_center_, self.statistics_scale_ = (
            (None, None) if stats is None else tuple(stats.numpy().astype(np.float64)))
        self.atlas_fit_ = header.get("atlas_fit")
        self.reachability_ = None
        if "reach.features" in tensors:
            self.reachability_ = Reachability(tensors["reach.features"].numpy(),
                                              tensors["reach.scores"].numpy(),
                                              int(tensors["reach.neighbours"]))
        self.latent_push_ = None
        if "push.center" in tensors:
            encoder = Encoder(model.cfg)
            encoder.load_state_dict({k.removeprefix("push.encoder."): v for k, v in tensors.items()
                                     if k.startswith("push.encoder.")})
            self.latent_push_ = LatentPush(encoder.to(self.device_).eval())
            self.latent_push_.center = tensors["push.center"].numpy().astype(np.float64)
            self.latent_push_.precision = tensors["push.precision"].numpy().astype(np.float64)
