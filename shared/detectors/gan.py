"""Common plumbing of the GAN detectors: shared hyper-parameters, the score, the model state."""

from __future__ import annotations

from numbers import Integral, Real
from typing import Any, ClassVar

import numpy as np
import torch
from sklearn.utils._param_validation import Interval
from sklearn.utils.validation import check_is_fitted

from fedsieve.shared.data.images import check_images
from fedsieve.shared.detectors.base import TorchDetector
from fedsieve.shared.detectors.bigan import LoopConfig, bigan_losses, residual_maps
from fedsieve.shared.detectors.checkpoint import bigan_from_tensors, model_tensors


class GANDetector(TorchDetector):
    """Base of RtBiGAN, EGBAD and AnoGAN: a BiGAN ``model_`` and the score
    ``A(x) = alpha L_G + (1 - alpha) L_D`` (paper eq. 2).

    Not used directly. Subclasses build ``model_`` in their fit and may refine the two losses
    (``_losses``) or how they are mixed (``_combine``).

    Parameters
    ----------
    alpha : float
        Weight of ``L_G`` in the score, in [0, 1].
    batch_size, lr_d, lr_eg : int, float, float
        Shared loop settings (Adam, beta1 = 0.5).
    z_dim, width, d_hidden : int
        Network sizes.
    threshold_policy, threshold_value, random_state
        As for every detector (:class:`~fedsieve.shared.detectors.base.BaseDetector`).
    device : str
        Where the networks train and score (:class:`~fedsieve.shared.detectors.base.
        TorchDetector`): ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:<index>"``, ``"mps"``.

    Attributes
    ----------
    model_ : fedsieve.shared.detectors.networks.BiGAN
        The trained networks E, G and D, on ``device_``.
    device_ : torch.device
        The resolved ``device``.
    decision_scores_, trusted_scores_, threshold_, labels_, contamination_, history_
        See BaseDetector.
        Scores, threshold and verdicts of the fitted pool; one history entry per round.
    data_hashes_, fit_time_, n_features_in_ : see BaseDetector
        Data hashes, fit seconds, values per image (C * H * W).
    image_shape_ : tuple of int
        (C, H, W) of the images the detector was fitted on; it scores only that shape.
    """

    #: True: a BiGAN (E, G and D(x, z) trained jointly, scored through E). False: a plain GAN
    #: on images (G and D(x, 0), no encoder), as AnoGAN. Fixed per class: it selects the
    #: training loop's mode, not a hyper-parameter.
    _joint: ClassVar[bool] = True

    _parameter_constraints: ClassVar[dict[str, list[Any]]] = {
        **TorchDetector._parameter_constraints,
        "alpha": [Interval(Real, 0, 1, closed="both")],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "lr_d": [Interval(Real, 0, None, closed="neither")],
        "lr_eg": [Interval(Real, 0, None, closed="neither")],
        "z_dim": [Interval(Integral, 1, None, closed="left")],
        "width": [Interval(Integral, 1, None, closed="left")],
        "d_hidden": [Interval(Integral, 1, None, closed="left")],
    }

    alpha: float
    batch_size: int
    lr_d: float
    lr_eg: float
    z_dim: int
    width: int
    d_hidden: int

    def _loop_config(self) -> LoopConfig:
        """Settings of the shared adversarial loop; detectors with a reconstruction term in
        the E+G step override this to set it."""
        return LoopConfig(
            batch_size=int(self.batch_size),
            lr_d=float(self.lr_d),
            lr_eg=float(self.lr_eg),
            beta1=0.5,
            recon_weight=0.0,
            joint=self._joint,
        )

    def _generator(self, offset: int = 0) -> torch.Generator:
        # A CPU generator on every device: the draws (then moved) are the same everywhere.
        seed = 0 if self.random_state is None else int(self.random_state)
        return torch.Generator().manual_seed(seed * 1000 + offset)

    def _losses(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per-image ``L_G`` and ``L_D`` (float64, shape (N,))."""
        return bigan_losses(self.model_, X)

    def _combine(self, lg: np.ndarray, ld: np.ndarray) -> np.ndarray:
        return self.alpha * lg + (1.0 - self.alpha) * ld

    def _score(self, X: np.ndarray) -> np.ndarray:
        return self._combine(*self._losses(X))


    def anomaly_map(self, X: Any) -> np.ndarray:
        """Where each image is anomalous: its per-pixel reconstruction residual
        ``|x - G(E(x))|`` as the score weighs it, summed over channels: float32 of shape
        (N, H, W).

        Raises
        ------
        sklearn.exceptions.NotFittedError
            The detector is not fitted.
        NotImplementedError
            The detector has no encoder (AnoGAN reconstructs by a latent search).
        """
        check_is_fitted(self, "threshold_")
        if not self._joint:
            raise NotImplementedError(f"{type(self).__name__} has no encoder to reconstruct "
                                      "with; anomaly maps need a BiGAN detector")
        images = self._check_shape(check_images(X, "X"))
        return residual_maps(self.model_, images, self._pixel_weight())

    # -- federated self-training (fedsieve.shared.detectors.federated) -----------------------
    def loop_config(self) -> LoopConfig:
        """The adversarial loop's settings (batch size, learning rates, ...) a round of
        training uses, here or on a client."""
        return self._loop_config()

    def pseudo_normal_rows(self, X: np.ndarray, *, first_round: bool = False) -> np.ndarray:
        """Rows of ``X`` (validated images, :meth:`check_images`) that a round of
        self-training learns from: those the current cut keeps, and in the first round only
        their normal core (the adapted model cannot yet tell pollution that scores between
        the normal mode and the cut)."""
        evidence = self._score_evidence(X)
        normal = self._scores_from_evidence(evidence) <= self.threshold_
        if first_round:
            normal &= self._local_core(evidence)
        return np.flatnonzero(normal)

    def rebuild_score_state(self, mean_residual: torch.Tensor,
                            trusted: np.ndarray | None) -> None:
        """After the networks were averaged from the clients' (``model_`` loaded), rebuild
        what the score derives from the pseudo-normal set; ``mean_residual`` is those
        images' mean residual (C, H, W)."""
        self._merged(mean_residual, trusted)

    def _local_core(self, evidence: np.ndarray) -> np.ndarray:
        """Which images of a client's :meth:`score_evidence` rows the first round of
        federated self-training learns from, besides the cut (all of them by default)."""
        return np.ones(len(evidence), bool)

    def _merged(self, mean_residual: torch.Tensor, trusted: np.ndarray | None) -> None:
        """Rebuild the score state after the networks were averaged from the clients';
        ``mean_residual`` is the pseudo-normal images' mean residual (C, H, W)."""

    def _pixel_weight(self) -> torch.Tensor | None:
        """Per-pixel weight of ``L_G`` (None: unweighted)."""
        return None

    # -- the state a checkpoint holds (see fedsieve.shared.detectors.persist) ----------------
    def _state_tensors(self) -> dict[str, torch.Tensor]:
        """The model's weights under ``model.``."""
        return model_tensors(self.model_)

    def _state_header(self) -> dict[str, Any]:
        return {**super()._state_header(), "net": self.model_.cfg.to_dict()}

    def _restore_state(self, tensors: dict[str, torch.Tensor], header: dict[str, Any]) -> None:
        super()._restore_state(tensors, header)
        self.model_ = bigan_from_tensors(tensors, header.get("net")).to(self.device_)
        self.image_shape_ = tuple(self.model_.cfg.image_shape)
        self.n_features_in_ = int(np.prod(self.image_shape_))
