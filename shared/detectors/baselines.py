"""EGBAD and AnoGAN baselines: the shared networks and loop, trained directly on the pool."""

from __future__ import annotations

from dataclasses import replace
from numbers import Integral, Real
from typing import Any, ClassVar

import numpy as np
from sklearn.utils._param_validation import Interval

from fedsieve.shared.detectors.bigan import (
    LoopConfig,
    as_batch,
    batch_sampler,
    init_model,
    latent_search_losses,
    train_loop,
)
from fedsieve.shared.detectors.gan import GANDetector
from fedsieve.shared.detectors.networks import NetConfig


class PoolGAN(GANDetector):
    """Base of EGBAD and AnoGAN: a GAN trained from scratch for ``steps`` batches of the
    whole pool, in one round (no trusted images in training, no self-training).

    Not used directly. The class constant ``_joint`` says which GAN is trained: a BiGAN
    (EGBAD) or a plain GAN on images (AnoGAN).

    Parameters
    ----------
    steps : int
        Adversarial steps (batches) on the pool.
    alpha, batch_size, lr_d, lr_eg, z_dim, width, d_hidden
        As for :class:`~fedsieve.shared.detectors.gan.GANDetector`.
    threshold_policy, threshold_value, random_state
        As for every detector.
    device : str
        Where the networks train and score (see GANDetector).

    Attributes
    ----------
    model_, decision_scores_, trusted_scores_, threshold_, labels_, contamination_, history_
        See GANDetector.
        The trained networks; scores, threshold and verdicts of the pool; one history entry.
    data_hashes_, fit_time_, n_features_in_ : see GANDetector
        Data hashes, fit seconds, values per image.
    """

    _parameter_constraints: ClassVar[dict[str, list[Any]]] = {
        **GANDetector._parameter_constraints,
        "steps": [Interval(Integral, 0, None, closed="left")],
    }

    steps: int

    def _train(self, X: np.ndarray, trusted: np.ndarray | None) -> None:
        self.model_ = init_model(NetConfig(self.z_dim, self.width, self.d_hidden,
                                           image_shape=X.shape[1:]), self.random_state,
                                self.device_)
        cfg = self._loop_config()
        # The pool stays on the CPU; the loop moves each batch to the model's device.
        train_loop(self.model_, batch_sampler(as_batch(X), cfg.batch_size), int(self.steps),
                   cfg, self._generator())


class EGBAD(PoolGAN):
    """Efficient GAN-based anomaly detection (Zenati et al.).

    The same BiGAN and score as Rt-BiGAN, trained from scratch on the whole (polluted) pool:
    no meta-model, no trusted images in training, no self-training. Trusted images, when
    given to ``fit``, only inform the threshold.

    Parameters
    ----------
    steps : int, default=1500
        Adversarial steps (batches) on the pool.
    alpha : float, default=0.9
        Weight of ``L_G`` in ``A(x) = alpha L_G + (1 - alpha) L_D`` (0.9 in the EGBAD code).
    recon_weight : float, default=0.0
        L1 reconstruction term ``||x - G(E(x))||_1`` in the E+G step; 0 is the reference EGBAD.
    batch_size : int, default=32
        Images per step.
    lr_d, lr_eg : float, default=2e-4, 1e-3
        Adam learning rates of D and of E+G (beta1 = 0.5).
    z_dim, width, d_hidden : int, default=32, 16, 128
        Network sizes (the same networks as Rt-BiGAN).
    threshold_policy : {"gmm", "budget", "trusted-quantile", "contamination", "fixed"}
        Default "gmm".
        See :mod:`fedsieve.shared.detectors.threshold`.
    threshold_value : float, optional
        Parameter of the policy.
    random_state : int, optional, default=0
        Seeds initialisation, batches and latent draws.
    device : str, default="auto"
        Where the networks train and score: ``"auto"`` (CUDA when available, else the CPU),
        ``"cpu"``, ``"cuda"``, ``"cuda:<index>"``, ``"mps"``; resolved when ``fit`` starts.

    Attributes
    ----------
    model_ : fedsieve.shared.detectors.networks.BiGAN
        The trained networks.
    device_ : torch.device
        The resolved ``device``, where ``model_`` lives.
    decision_scores_ : ndarray of shape (n_pool,)
        Scores of the pool (float64, higher = more anomalous).
    trusted_scores_ : ndarray of shape (n_trusted,) or None
        Scores of the trusted images, when ``fit`` got some.
    threshold_ : float
        Scores above it are anomalies.
    labels_ : ndarray of shape (n_pool,)
        Verdicts on the pool (int64, 1 = anomaly).
    contamination_ : dict
        Estimated pollution share of the pool with a 95 % interval (see BaseDetector).
    history_ : list of dict
        One entry (round 0): threshold, flagged count, elapsed seconds, ``auc`` with ``y_true``.
    data_hashes_ : dict
        SHA-256 of the pool and of the trusted images.
    fit_time_ : float
        Seconds ``fit`` took.
    n_features_in_ : int
        Values per image (C * H * W).
    image_shape_ : tuple of int
        (C, H, W) of the fitted images; ``decision_function`` scores only that shape.
    """

    _parameter_constraints: ClassVar[dict[str, list[Any]]] = {
        **PoolGAN._parameter_constraints,
        "recon_weight": [Interval(Real, 0, None, closed="left")],
    }

    def __init__(
        self,
        *,
        steps: int = 1500,
        alpha: float = 0.9,
        recon_weight: float = 0.0,
        batch_size: int = 32,
        lr_d: float = 2e-4,
        lr_eg: float = 1e-3,
        z_dim: int = 32,
        width: int = 16,
        d_hidden: int = 128,
        threshold_policy: str = "gmm",
        threshold_value: float | None = None,
        random_state: int | None = 0,
        device: str = "auto",
    ) -> None:
        self.device = device
        self.steps = steps
        self.alpha = alpha
        self.recon_weight = recon_weight
        self.batch_size = batch_size
        self.lr_d = lr_d
        self.lr_eg = lr_eg
        self.z_dim = z_dim
        self.width = width
        self.d_hidden = d_hidden
        self.threshold_policy = threshold_policy
        self.threshold_value = threshold_value
        self.random_state = random_state

    def _loop_config(self) -> LoopConfig:
        return replace(super()._loop_config(), recon_weight=float(self.recon_weight))


class AnoGAN(PoolGAN):
    """AnoGAN (Schlegl et al.): a plain GAN on the pool, scored by latent search.

    The shared G and D (D fed a zero latent, no encoder) are trained on the whole pool; each
    image is scored by searching the latent ``z`` whose ``G(z)`` best matches it (batched Adam,
    ``latent_steps`` steps), then ``A = alpha L_G + (1 - alpha) L_D``. Slow by design: scoring
    costs ``latent_steps`` forward/backward passes per image.

    Parameters
    ----------
    steps : int, default=1500
        Adversarial steps (batches) on the pool.
    latent_steps : int, default=30
        Adam steps of the per-image latent search.
    latent_lr : float, default=0.05
        Learning rate of the latent search.
    alpha : float, default=0.9
        Weight of ``L_G`` in the score, in [0, 1].
    batch_size : int, default=32
        Images per step.
    lr_d, lr_eg : float, default=2e-4, 1e-3
        Adam learning rates of D and of G (beta1 = 0.5).
    z_dim, width, d_hidden : int, default=32, 16, 128
        Network sizes (the same networks as Rt-BiGAN; E is not trained).
    threshold_policy : {"gmm", "budget", "trusted-quantile", "contamination", "fixed"}
        Default "gmm".
        See :mod:`fedsieve.shared.detectors.threshold`.
    threshold_value : float, optional
        Parameter of the policy.
    random_state : int, optional, default=0
        Seeds initialisation, batches, latent draws and the latent search's starting points.
    device : str, default="auto"
        Where the networks train and score (and the latent search runs), as for EGBAD.

    Attributes
    ----------
    model_ : fedsieve.shared.detectors.networks.BiGAN
        The trained networks (E untrained).
    device_ : torch.device
        The resolved ``device``, where ``model_`` lives.
    decision_scores_ : ndarray of shape (n_pool,)
        Scores of the pool (float64, higher = more anomalous).
    trusted_scores_ : ndarray of shape (n_trusted,) or None
        Scores of the trusted images, when ``fit`` got some.
    threshold_ : float
        Scores above it are anomalies.
    labels_ : ndarray of shape (n_pool,)
        Verdicts on the pool (int64, 1 = anomaly).
    contamination_ : dict
        Estimated pollution share of the pool with a 95 % interval (see BaseDetector).
    history_ : list of dict
        One entry (round 0): threshold, flagged count, elapsed seconds, ``auc`` with ``y_true``.
    data_hashes_ : dict
        SHA-256 of the pool and of the trusted images.
    fit_time_ : float
        Seconds ``fit`` took.
    n_features_in_ : int
        Values per image (C * H * W).
    image_shape_ : tuple of int
        (C, H, W) of the fitted images; ``decision_function`` scores only that shape.
    """

    _joint = False

    _parameter_constraints: ClassVar[dict[str, list[Any]]] = {
        **PoolGAN._parameter_constraints,
        "latent_steps": [Interval(Integral, 0, None, closed="left")],
        "latent_lr": [Interval(Real, 0, None, closed="neither")],
    }

    def __init__(
        self,
        *,
        steps: int = 1500,
        latent_steps: int = 30,
        latent_lr: float = 0.05,
        alpha: float = 0.9,
        batch_size: int = 32,
        lr_d: float = 2e-4,
        lr_eg: float = 1e-3,
        z_dim: int = 32,
        width: int = 16,
        d_hidden: int = 128,
        threshold_policy: str = "gmm",
        threshold_value: float | None = None,
        random_state: int | None = 0,
        device: str = "auto",
    ) -> None:
        self.device = device
        self.steps = steps
        self.latent_steps = latent_steps
        self.latent_lr = latent_lr
        self.alpha = alpha
        self.batch_size = batch_size
        self.lr_d = lr_d
        self.lr_eg = lr_eg
        self.z_dim = z_dim
        self.width = width
        self.d_hidden = d_hidden
        self.threshold_policy = threshold_policy
        self.threshold_value = threshold_value
        self.random_state = random_state

    def _losses(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # A fresh generator per call: the same images always get the same latent search.
        return latent_search_losses(self.model_, X, int(self.latent_steps),
                                    float(self.latent_lr), float(self.alpha),
                                    self._generator(offset=7))
