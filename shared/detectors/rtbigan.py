"""Rt-BiGAN: Reptile-initialised BiGAN, adapted on trusted images, then self-trained on the pool."""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Sequence
from numbers import Integral, Real
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from sklearn.utils._param_validation import Interval

from fedsieve.shared.data.images import DEFAULT_IMAGE_SHAPE, format_shape
from fedsieve.shared.detectors.base import RoundRecorder, TorchDetector
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
from fedsieve.shared.detectors.checkpoint import (
    MetaModelWarning,
    default_meta_checkpoint,
    load_meta,
)
from fedsieve.shared.detectors.evidence import (
    DEFAULT_EVIDENCE,
    Batch,
    EvidenceCalibration,
    EvidencePiece,
    FitContext,
    Reconstruction,
    RoundResult,
    make_piece,
)
from fedsieve.shared.detectors.explanation import Explanation
from fedsieve.shared.detectors.gan import GANDetector
from fedsieve.shared.detectors.networks import NetConfig
from fedsieve.shared.detectors.threshold import log_scores, normal_mode_cut
from fedsieve.shared.detectors.training import Training, as_training

__all__ = ["MetaModelWarning", "RtBiGAN"]

#: Added to the per-pixel normal residual before inverting it, so that pixels that are
#: always empty in normal data weigh at most ~1/PIXEL_EPS times an average pixel.
PIXEL_EPS = 0.01


class RtBiGAN(GANDetector):
    """Trusted Rt-BiGAN detector (paper section V), its score composed of pieces of evidence.

    ``fit(pool, trusted)`` (Algorithm 2 then section V.B):

    1. copy the meta-trained weights Phi (``meta_checkpoint``);
    2. run ``adapt_steps`` adversarial steps (D step, then E+G step) on the trusted images;
    3. fit every piece of ``evidence`` on the pool and the trusted images;
    4. self-training: score the pool, pseudo-label it, train ``steps_per_round`` steps on the
       pseudo-normal set, and repeat. Each round's labels REPLACE the previous ones; it stops
       after ``self_training_rounds`` rounds or when few labels change
       (``Training.stop_tol``).

    Each round calibrates every piece on the pool so that its false-drop cut is 0
    (:class:`~fedsieve.shared.detectors.evidence.EvidenceCalibration`), and the score is the
    largest calibrated piece: with the default ``"budget"`` policy an image is dropped when
    any piece passes its cut, and :meth:`explain` says which. With ``evidence=["global"]``
    the score is the paper's ``A(x)`` alone, cut by the threshold policy. The last round's
    pool scores, threshold and labels are the fitted ones.

    Parameters
    ----------
    meta_checkpoint : str, Path or None, default="default"
        ``"default"``: the meta-model shipped in ``fedsieve/shared/assets``; a path to a
        meta checkpoint from ``fedsieve meta-train``; None: random initialisation (the
        "no meta-learning" ablation, networks sized by ``Training``'s ``z_dim``, ``width``,
        ``d_hidden``). The shipped meta-model takes 1x28x28 images; for another shape
        "default" starts from random weights with a :class:`MetaModelWarning`, and a named
        meta-model must have been made for the images' shape (``fedsieve meta-train
        --data``).
    evidence : sequence of str, dict or EvidencePiece, default=DEFAULT_EVIDENCE
        The pieces of evidence, in column order, by name (``"global"``, ``"typicality"``,
        ``"detached-ink"``, ``"reachability"``, ``"global-from-below"``, ``"local"``,
        ``"latent-push"``), as ``{"name": ..., **settings}`` or as piece objects
        (:mod:`fedsieve.shared.detectors.evidence`; the table there says what each sees).
        The default is ``("global", "typicality", "detached-ink", "reachability")``;
        reachability leaves itself out without a meta-model atlas that fits the trusted
        images.
    adapt_steps : int, default=20
        K of Algorithm 2 (paper: 20).
    self_training_rounds : int, default=3
        Maximum self-training rounds (0 = adapted model only).
    steps_per_round : int, default=500
        Adversarial steps on the pseudo-normal set per round.
    alpha : float, default=0.9
        Weight of ``L_G`` in the score, in [0, 1] (0.9 as in EGBAD).
    training : Training, dict or None, default=None
        Loop and self-training settings (:class:`~fedsieve.shared.detectors.training.
        Training`: batch size, learning rates, trusted anchors, the first round's normal
        core, the score's normalisation and pixel weights, ...); None = the defaults.
    threshold_policy : {"budget", "gmm", "trusted-quantile", "contamination", "fixed"}
        Default "budget". See :mod:`fedsieve.shared.detectors.threshold`. The evidence is
        always calibrated with the false-drop budget (``threshold_value`` under
        ``"budget"``, else 0.01); the other policies then cut the combined score.
    threshold_value : float, optional
        Parameter of the policy.
    random_state : int, optional, default=0
        Seeds every random draw (batches, latents, initialisation).
    device : str, default="auto"
        Where the networks train and score: ``"auto"`` (CUDA when torch sees a GPU, else
        the CPU), ``"cpu"``, ``"cuda"``, ``"cuda:<index>"`` or ``"mps"``; resolved when
        ``fit`` starts (:func:`~fedsieve.shared.devices.resolve_device`). The random draws
        are the same on every device. The image statistics and the reachability graph are
        numpy work on the CPU wherever the networks run.
    **deprecated
        The keywords of fedsieve 0.2 (``two_sided``, ``local_window``, ``typicality``,
        ``detached_ink``, ``reachability``, ``latent_push`` and the settings now in
        ``Training``) still work for one release, with a ``FutureWarning`` naming the new
        spelling.

    Attributes
    ----------
    model_ : fedsieve.shared.detectors.networks.BiGAN
        The adapted and self-trained networks, on ``device_``.
    device_ : torch.device
        The resolved ``device``.
    evidence_ : dict of str to EvidencePiece
        The fitted pieces that take part, by name, in column order (a piece that learns
        from a round's verdicts, as ``latent-push``, joins the score once it is ready).
    left_out_ : dict of str to EvidencePiece
        The pieces that left themselves out of this fit, with what they found (the
        reachability piece's ``atlas_fit_`` when its atlas does not fit the trusted images).
    evidence_names_ : list of str
        The pieces in the score now, in column order.
    training_ : Training
        The validated ``training``.
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
    calibration_ : EvidenceCalibration or None
        The last round's cut and normal mode of each piece (None when the score is the
        global score alone).
    decision_evidence_ : ndarray of shape (n_pool, K) or None
        The pool's evidence in the last round (None when the score is the global score
        alone): :meth:`explain_fitted` reads it.
    decision_scores_, trusted_scores_, threshold_, labels_, contamination_, history_
        As for every detector (:class:`~fedsieve.shared.detectors.base.BaseDetector`); one
        history entry per round (round 0 = adapted only), with ``auc`` when ``fit`` got
        ``y_true``.
    data_hashes_, fit_time_, n_features_in_, image_shape_
        SHA-256 of the pool and trusted images, fit seconds, values per image, (C, H, W).
    """

    requires_trusted = True

    _parameter_constraints: ClassVar[dict[str, list[Any]]] = {
        **TorchDetector._parameter_constraints,
        "meta_checkpoint": [str, os.PathLike, None],
        "evidence": [list, tuple],
        "adapt_steps": [Interval(Integral, 0, None, closed="left")],
        "self_training_rounds": [Interval(Integral, 0, None, closed="left")],
        "steps_per_round": [Interval(Integral, 0, None, closed="left")],
        "alpha": [Interval(Real, 0, 1, closed="both")],
        "training": [Training, dict, None],
    }

    def __init__(
        self,
        *,
        meta_checkpoint: str | Path | None = "default",
        evidence: Sequence[str | dict[str, Any] | EvidencePiece] = DEFAULT_EVIDENCE,
        adapt_steps: int = 20,
        self_training_rounds: int = 3,
        steps_per_round: int = 500,
        alpha: float = 0.9,
        training: Training | dict[str, Any] | None = None,
        threshold_policy: str = "budget",
        threshold_value: float | None = None,
        random_state: int | None = 0,
        device: str = "auto",
        **deprecated: Any,
    ) -> None:
        if deprecated:  # fedsieve 0.2's keywords, for one release
            evidence, training = _translate_deprecated(deprecated, evidence, training)
        self.meta_checkpoint = meta_checkpoint
        self.evidence = evidence
        self.adapt_steps = adapt_steps
        self.self_training_rounds = self_training_rounds
        self.steps_per_round = steps_per_round
        self.alpha = alpha
        self.training = training
        self.threshold_policy = threshold_policy
        self.threshold_value = threshold_value
        self.random_state = random_state
        self.device = device

    # -- the algorithm -----------------------------------------------------------------------
    def _fit(self, X: np.ndarray, trusted: np.ndarray | None, rounds: RoundRecorder) -> None:
        if trusted is None:  # BaseDetector.fit enforces requires_trusted
            raise ValueError("RtBiGAN needs trusted images")
        self.training_ = training = as_training(self.training)
        pieces = self._make_pieces()
        t0 = time.perf_counter()
        meta_path = self._init_weights(tuple(X.shape[1:]))
        gen = self._generator()
        cfg = self._loop_config()
        trusted_t = as_batch(trusted)  # on the CPU, as the pool batches it anchors
        adapt_batch = trusted_t.to(self.device_)  # moved once: it is every adaptation batch

        # Algorithm 2: K adversarial steps on the trusted images (all of them in every step).
        train_loop(self.model_, lambda g: adapt_batch, int(self.adapt_steps), cfg, gen)
        self.pixel_weight_ = None
        self._set_norm(trusted)
        self.adapt_time_ = time.perf_counter() - t0
        pool_b, trusted_b = self._batch(X, pieces), self._batch(trusted, pieces)
        seed = 0 if self.random_state is None else int(self.random_state)
        context = FitContext(meta_path, self.model_, seed)
        self._fit_pieces(pieces, pool_b, trusted_b, context)

        opts = None
        scores, evidence = self._calibrate(pool_b, trusted_b)
        for rnd in range(int(self.self_training_rounds) + 1):
            labels, changed = rounds.end_round(scores)
            if rnd == int(self.self_training_rounds) or (rnd > 0 and changed < training.stop_tol):
                return
            # Trimmed pseudo-normal set: unflagged and not among the highest-scoring share,
            # gathered batch by batch (the pool is never copied).
            keep = labels == 0
            if training.trim_fraction > 0:
                keep &= scores <= np.quantile(scores, 1.0 - float(training.trim_fraction))
            if training.core_width is not None and rnd == 0:
                keep &= self._normal_core(scores, evidence)
            anchored = bool(training.trusted_anchors)
            normal = RowSet(X, np.flatnonzero(keep), trusted if anchored else None)
            sampler = batch_sampler(normal, cfg.batch_size, trusted_t if anchored else None,
                                    training.anchor_fraction)
            opts = train_loop(self.model_, sampler, int(self.steps_per_round), cfg, gen, opts)
            self._set_pixel_weight(normal)
            self._set_norm(trusted)
            pool_b.model_changed()
            trusted_b.model_changed()
            result = RoundResult(X, normal, np.flatnonzero(labels == 1),
                                 int(self.steps_per_round), gen)
            for piece in self.evidence_.values():
                piece.update(result)
            scores, evidence = self._calibrate(pool_b, trusted_b)

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
            t = self.training_
            self.model_ = init_model(NetConfig(t.z_dim, t.width, t.d_hidden, image_shape=shape),
                                     self.random_state, self.device_)
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
        t = self.training_
        return LoopConfig(batch_size=int(t.batch_size), lr_d=float(t.lr_d),
                          lr_eg=float(t.lr_eg), beta1=0.5, recon_weight=float(t.recon_weight),
                          joint=self._joint)

    # -- the evidence ------------------------------------------------------------------------
    def _make_pieces(self) -> list[EvidencePiece]:
        """Fresh pieces from ``evidence``, checked: at least one, names unique, one patch
        side."""
        pieces = [make_piece(spec) for spec in self.evidence]
        names = [p.name for p in pieces]
        if not pieces:
            raise ValueError("RtBiGAN needs at least one piece of evidence, e.g. "
                             "evidence=['global']")
        if len(set(names)) != len(names):
            raise ValueError(f"each piece of evidence may appear once, got {names}")
        if len({p.residual_window for p in pieces} - {0}) > 1:
            raise ValueError("the pieces read local residuals of different patch sides; use "
                             "one side")
        return pieces

    def _fit_pieces(self, pieces: list[EvidencePiece], pool: Batch, trusted: Batch,
                    context: FitContext) -> None:
        """Fit every piece: ``evidence_`` holds those that take part, ``left_out_`` those
        that left themselves out (no atlas that fits the trusted images)."""
        used = {p.name: p.fit(pool, trusted, context) for p in pieces}
        self.evidence_ = {p.name: p for p in pieces if used[p.name]}
        self.left_out_ = {p.name: p for p in pieces if not used[p.name]}

    def _ready(self) -> list[EvidencePiece]:
        return [p for p in self.evidence_.values() if p.ready]

    @property
    def evidence_names_(self) -> list[str]:
        """Names of the pieces that take part in the score, in column order."""
        return [p.name for p in self._ready()]

    def _calibrated(self) -> bool:
        """Whether the pieces are calibrated (anything beyond the paper's global score)."""
        return list(self.evidence_) != ["global"]

    def _batch(self, X: np.ndarray, pieces: list[EvidencePiece] | None = None) -> Batch:
        pieces = list(self.evidence_.values()) if pieces is None else pieces
        window = max((p.residual_window for p in pieces), default=0)
        return Batch(X, self._reconstruct, window)

    def _reconstruct(self, X: np.ndarray, window: int) -> Reconstruction:
        """The networks' score ``A(x)`` (mixed and normalised) and, with ``window``, the
        largest patch residual."""
        losses = bigan_losses(self.model_, X, self.pixel_weight_, local_window=window)
        return Reconstruction(self._combine(losses[0], losses[1]),
                              losses[2] if window else None)

    def _evidence(self, X: np.ndarray | Batch) -> np.ndarray:
        """Each ready piece's value, float64 of shape (N, K), in column order."""
        batch = X if isinstance(X, Batch) else self._batch(X)
        return np.stack([p.values(batch) for p in self._ready()], axis=1)

    def _calibrate(self, pool: Batch, trusted: Batch) -> tuple[np.ndarray, np.ndarray | None]:
        """Fit this round's calibration on the pool; return the pool's scores and its
        evidence (None when the score is the global score alone)."""
        self.calibration_ = self.decision_evidence_ = None
        if not self._calibrated():
            return pool.reconstruction().score, None
        self.decision_evidence_ = evidence = self._evidence(pool)
        self.calibration_ = EvidenceCalibration.fit(evidence, self._evidence(trusted),
                                                    self._budget())
        return self.calibration_.combine(evidence), evidence

    def _scores_calibrated(self) -> bool:
        return getattr(self, "calibration_", None) is not None

    def _score(self, X: np.ndarray) -> np.ndarray:
        if self.calibration_ is None:
            return self._reconstruct(X, 0).score
        return self.calibration_.combine(self._evidence(X))

    def _explain_evidence(self, evidence: np.ndarray) -> Explanation:
        if self.calibration_ is None:
            return super()._explain_evidence(evidence)
        return Explanation.from_calibration(self.evidence_names_, evidence, self.calibration_,
                                            self.threshold_)

    def _normal_core(self, scores: np.ndarray, evidence: np.ndarray | None) -> np.ndarray:
        """The pool's normal core (bool): see ``Training.core_width``."""
        width = float(self.training_.core_width)
        if evidence is not None:
            return self.calibration_.core(evidence, width)
        logs = log_scores(scores)
        found = normal_mode_cut(logs, log_scores(self.trusted_scores_, scores), self._budget())
        return logs <= found.mode + width * found.spread

    # -- local screening: the evidence before the pool's calibration ------------------------
    def local_screening_params(self) -> dict[str, Any]:
        evidence = [spec for spec in self.evidence if not make_piece(spec).holds_pool_images]
        return {"self_training_rounds": 0, "evidence": tuple(evidence)}

    def _score_evidence(self, X: np.ndarray) -> np.ndarray:
        if self.calibration_ is None:
            return super()._score_evidence(X)
        return self._evidence(X)

    def _evidence_width(self) -> int:
        return 1 if self.calibration_ is None else len(self._ready())

    def _fit_cut(self, evidence: np.ndarray, trusted: np.ndarray | None) -> None:
        if self.calibration_ is not None:
            self.calibration_ = EvidenceCalibration.fit(
                evidence, None if trusted is None else self._evidence(trusted), self._budget())

    def _scores_from_evidence(self, evidence: np.ndarray) -> np.ndarray:
        if self.calibration_ is None:
            return super()._scores_from_evidence(evidence)
        return self.calibration_.combine(evidence)

    def _local_core(self, evidence: np.ndarray) -> np.ndarray:
        width = self.training_.core_width
        if width is None or self.calibration_ is None:
            return super()._local_core(evidence)
        return self.calibration_.core(evidence, float(width))

    def _merged(self, mean_residual: torch.Tensor, trusted: np.ndarray | None) -> None:
        self.pixel_weight_ = None
        if self.training_.pixel_weighting:
            self._weigh_pixels(mean_residual)
        if trusted is not None:
            self._set_norm(trusted)

    # -- the global score's two refinements --------------------------------------------------
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
        if self.training_.normalize_scores:
            lg, ld = self._losses(trusted)
            self.score_norm_ = np.array([max(lg.mean(), 1e-8), max(ld.mean(), 1e-8)])

    @torch.no_grad()
    def _set_pixel_weight(self, reference: RowSet) -> None:
        """Weight each pixel's residual by the inverse of its mean residual on ``reference``
        (the current normal set), so ink where normal images never have any counts more."""
        self.pixel_weight_ = None
        if not self.training_.pixel_weighting:
            return
        total = torch.zeros(self.model_.cfg.image_shape, device=self.device_)
        for x in reference.chunks(SCORE_BATCH):
            x = x.to(self.device_)
            total += (x - self.model_.G(self.model_.E(x))).abs().sum(0)
        self._weigh_pixels(total / len(reference))

    def _weigh_pixels(self, mean_residual: torch.Tensor) -> None:
        w = 1.0 / (mean_residual.to(self.device_) + PIXEL_EPS)
        self.pixel_weight_ = w / w.mean()

    # -- checkpoint state --------------------------------------------------------------------
    def _state_tensors(self) -> dict[str, torch.Tensor]:
        state = super()._state_tensors()
        if self.pixel_weight_ is not None:
            state["score.pixel_weight"] = self.pixel_weight_.detach().clone()
        if self.score_norm_ is not None:
            state["score.norm"] = torch.tensor(self.score_norm_, dtype=torch.float64)
        if self.calibration_ is not None:
            state["score.calibration"] = torch.tensor(self.calibration_.as_array())
        for piece in self._ready():
            state |= piece.state()
        return state

    def _state_header(self) -> dict[str, Any]:
        return {**super()._state_header(),
                "meta_checkpoint": self.meta_info_.get("weights_sha256"),
                "evidence": {name: p.header()
                             for name, p in {**self.evidence_, **self.left_out_}.items()}}

    def _restore_state(self, tensors: dict[str, torch.Tensor], header: dict[str, Any]) -> None:
        super()._restore_state(tensors, header)
        self.training_ = as_training(self.training)
        sha = header.get("meta_checkpoint")
        self.meta_info_ = {} if sha is None else {"weights_sha256": sha}
        weight = tensors.get("score.pixel_weight")
        self.pixel_weight_ = None if weight is None else weight.to(self.device_)
        norm = tensors.get("score.norm")
        self.score_norm_ = None if norm is None else norm.numpy().astype(np.float64)
        cal = tensors.get("score.calibration")
        self.calibration_ = None if cal is None else EvidenceCalibration.from_array(
            cal.numpy().astype(np.float64))
        pieces = self._make_pieces()
        # A 0.2 checkpoint kept the atlas check at the header's top level.
        notes = header.get("evidence", {})
        used = {p.name: p.restore(tensors, notes.get(p.name, header), self.model_)
                for p in pieces}
        self.evidence_ = {p.name: p for p in pieces if used[p.name]}
        self.left_out_ = {p.name: p for p in pieces if not used[p.name]}


#: fedsieve 0.2's evidence switches, in 0.2's column order, and their pieces.
_DEPRECATED_SWITCHES = {"two_sided": (False, "global-from-below"),
                        "local_window": (0, "local"),
                        "typicality": (True, "typicality"),
                        "detached_ink": (True, "detached-ink"),
                        "reachability": (True, "reachability"),
                        "latent_push": (False, "latent-push")}


def _translate_deprecated(old: dict[str, Any], evidence: Any, training: Any
                          ) -> tuple[tuple[Any, ...], Training]:
    """fedsieve 0.2's keywords -> ``evidence`` and ``training``, with a FutureWarning."""
    settings = set(Training().get_params())
    unknown = sorted(set(old) - settings - set(_DEPRECATED_SWITCHES))
    if unknown:
        raise TypeError(f"RtBiGAN got unexpected keyword arguments {unknown}")
    switches = {k: old.get(k, default) for k, (default, _) in _DEPRECATED_SWITCHES.items()}
    if any(k in old for k in _DEPRECATED_SWITCHES):
        if tuple(evidence) != DEFAULT_EVIDENCE:
            raise TypeError("pass either evidence= or the deprecated evidence switches, "
                            "not both")
        new_evidence: list[Any] = ["global"]
        for key, (_, name) in _DEPRECATED_SWITCHES.items():
            if key == "local_window" and switches[key]:
                new_evidence.append({"name": "local", "window": int(switches[key])})
            elif key != "local_window" and switches[key]:
                new_evidence.append(name)
        evidence = tuple(new_evidence)
    moved = {k: v for k, v in old.items() if k in settings}
    if moved:
        base = as_training(training).get_params()
        training = Training(**{**base, **moved})
    spelled = f"evidence={list(evidence)!r}" + (
        f", training=Training({', '.join(f'{k}={v!r}' for k, v in moved.items())})"
        if moved else "")
    warnings.warn(f"RtBiGAN({', '.join(sorted(old))}=...) is deprecated and will be removed "
                  f"in fedsieve 0.4; write RtBiGAN({spelled}, ...)", FutureWarning, stacklevel=3)
    return evidence, training
