"""How Rt-BiGAN trains: the adversarial loop's settings, self-training's choices of what to
learn from, and the two refinements of the paper's score that training keeps up to date."""

from __future__ import annotations

from numbers import Integral, Real
from typing import Any, ClassVar

from sklearn.base import BaseEstimator
from sklearn.utils._param_validation import Interval


class Training(BaseEstimator):
    """Rt-BiGAN's training settings (``RtBiGAN(training=Training(...))``).

    The defaults are the measured ones; the paper's own settings are
    ``Training(trusted_anchors=False, normalize_scores=False, pixel_weighting=False,
    core_width=None)``.

    Parameters
    ----------
    batch_size : int, default=32
        Images per self-training step (adaptation uses all trusted images in every step).
    lr_d, lr_eg : float, default=2e-4, 1e-3
        Adam learning rates of D and of E+G (beta1 = 0.5).
    stop_tol : float, default=0.002
        Self-training stops when the fraction of pool labels that changed falls below this.
    trusted_anchors : bool, default=True
        The trusted images are part of the normal set in every round and fill
        ``anchor_fraction`` of every training batch, so "normal" stays defined by them even
        when most of the pseudo-normal set is polluted.
    anchor_fraction : float, default=0.25
        Share of each self-training batch drawn from the trusted images when
        ``trusted_anchors`` (at least one image per batch).
    trim_fraction : float, default=0.0
        Self-training leaves out the highest-scoring ``trim_fraction`` of the pool besides
        the flagged images, so that pollution just under the cut is not learned as normal.
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
    recon_weight : float, default=0.0
        Weight of an L1 reconstruction (cycle) term ``||x - G(E(x))||_1`` in the E+G step of
        adaptation and self-training. 0 = the paper's pure adversarial objective; the
        benchmark's ``rtbigan+recon`` row shows that 1.0 lowers AUC by ~0.002-0.003 (the
        shipped meta-model is still trained with it, where it speeds up meta-training).
    normalize_scores : bool, default=True
        Divide ``L_G`` and ``L_D`` by their means on the trusted images before mixing, so
        ``alpha`` mixes comparable quantities. False = the paper's raw mix.
    pixel_weighting : bool, default=True
        ``L_G`` weights each pixel by the inverse of its mean residual on the current
        pseudo-normal set, so residual ink where normal images have none (the border a digit
        never reaches) counts more. Off for the adapted-only model.
    z_dim, width, d_hidden : int, default=32, 16, 128
        Network sizes, used only when the networks start from random weights.
    """

    _parameter_constraints: ClassVar[dict[str, list[Any]]] = {
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "lr_d": [Interval(Real, 0, None, closed="neither")],
        "lr_eg": [Interval(Real, 0, None, closed="neither")],
        "stop_tol": [Interval(Real, 0, 1, closed="both")],
        "trusted_anchors": ["boolean"],
        "anchor_fraction": [Interval(Real, 0, 1, closed="both")],
        "trim_fraction": [Interval(Real, 0, 1, closed="left")],
        "core_width": [Interval(Real, 0, None, closed="neither"), None],
        "recon_weight": [Interval(Real, 0, None, closed="left")],
        "normalize_scores": ["boolean"],
        "pixel_weighting": ["boolean"],
        "z_dim": [Interval(Integral, 1, None, closed="left")],
        "width": [Interval(Integral, 1, None, closed="left")],
        "d_hidden": [Interval(Integral, 1, None, closed="left")],
    }

    def __init__(self, *, batch_size: int = 32, lr_d: float = 2e-4, lr_eg: float = 1e-3,
                 stop_tol: float = 0.002, trusted_anchors: bool = True,
                 anchor_fraction: float = 0.25, trim_fraction: float = 0.0,
                 core_width: float | None = 1.0, recon_weight: float = 0.0,
                 normalize_scores: bool = True, pixel_weighting: bool = True,
                 z_dim: int = 32, width: int = 16, d_hidden: int = 128) -> None:
        self.batch_size = batch_size
        self.lr_d = lr_d
        self.lr_eg = lr_eg
        self.stop_tol = stop_tol
        self.trusted_anchors = trusted_anchors
        self.anchor_fraction = anchor_fraction
        self.trim_fraction = trim_fraction
        self.core_width = core_width
        self.recon_weight = recon_weight
        self.normalize_scores = normalize_scores
        self.pixel_weighting = pixel_weighting
        self.z_dim = z_dim
        self.width = width
        self.d_hidden = d_hidden

    def validated(self) -> Training:
        """Self, after checking every setting (sklearn's ``InvalidParameterError``)."""
        self._validate_params()
        return self


def as_training(value: Training | dict[str, Any] | None) -> Training:
    """A :class:`Training` from itself, its settings as a dict (a checkpoint's JSON) or None
    (the defaults), validated."""
    if value is None:
        return Training()
    if isinstance(value, dict):
        return Training(**value).validated()
    if isinstance(value, Training):
        return value.validated()
    raise ValueError(f"training must be a Training, a dict of its settings or None, got "
                     f"{type(value).__name__}")
