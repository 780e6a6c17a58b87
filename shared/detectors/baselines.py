"""EGBAD and AnoGAN baselines, trained directly on the (polluted) pool with the shared loop."""

from __future__ import annotations

import time

import numpy as np

from fedsieve.shared.detectors.base import images_sha256
from fedsieve.shared.detectors.bigan import (
    batch_sampler,
    init_model,
    latent_search_losses,
    to_tensor,
    train_loop,
)
from fedsieve.shared.detectors.gan import GANDetector
from fedsieve.shared.networks import NetConfig

_COMMON_DOC = """
    steps : int
        Adversarial steps (batches) on the pool.
    alpha : float
        Weight of ``L_G`` in ``A(x) = alpha L_G + (1 - alpha) L_D`` (0.9 in the EGBAD code).
    batch_size, lr_d, lr_eg : int, float, float
        Shared loop settings (Adam, beta1 = 0.5).
    z_dim, width, d_hidden : int
        Network sizes (same networks as Rt-BiGAN).
    threshold_policy : {"gmm", "trusted-quantile", "contamination", "fixed"}
        See :mod:`fedsieve.shared.detectors.threshold`.
    threshold_value : float, optional
        Parameter of the policy.
    random_state : int, optional
        Seeds initialisation, batches and latent draws.
"""


class EGBAD(GANDetector):
    """Efficient GAN-based anomaly detection (Zenati et al.): the same BiGAN and score as
    Rt-BiGAN, trained from scratch on the whole pool (no seeds, no self-training).

    Parameters
    ----------
    recon_weight : float
        L1 reconstruction term in the E+G step; 0 (default) is the reference EGBAD.
    """ + _COMMON_DOC

    def __init__(
        self,
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
    ) -> None:
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

    def _fit(self, X: np.ndarray, seed: np.ndarray | None) -> None:
        t0 = time.perf_counter()
        self.model_ = init_model(NetConfig(self.z_dim, self.width, self.d_hidden),
                                 self.random_state)
        cfg = self._loop_config()
        train_loop(self.model_, batch_sampler(to_tensor(X), cfg.batch_size), int(self.steps),
                   cfg, self._generator())
        self.pixel_weight_ = None
        self.score_norm_ = None
        self.fit_time_ = time.perf_counter() - t0
        self.data_hashes_ = {"pool_sha256": images_sha256(X)}


class AnoGAN(GANDetector):
    """AnoGAN (Schlegl et al.): a plain GAN (the shared G and D, D fed a zero latent) trained
    on the pool; each image is scored by searching the latent ``z`` whose ``G(z)`` best
    matches it (batched Adam, ``latent_steps`` steps), then ``A = alpha L_G + (1-alpha) L_D``.
    Slow by design: scoring costs ``latent_steps`` forward/backward passes per image.

    Parameters
    ----------
    latent_steps : int
        Adam steps of the per-image latent search.
    latent_lr : float
        Learning rate of the latent search.
    """ + _COMMON_DOC

    def __init__(
        self,
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
    ) -> None:
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

    recon_weight = 0.0  # no encoder, so no reconstruction term

    def _fit(self, X: np.ndarray, seed: np.ndarray | None) -> None:
        t0 = time.perf_counter()
        self.model_ = init_model(NetConfig(self.z_dim, self.width, self.d_hidden),
                                 self.random_state)
        cfg = self._loop_config(joint=False, recon=False)
        train_loop(self.model_, batch_sampler(to_tensor(X), cfg.batch_size), int(self.steps),
                   cfg, self._generator())
        self.pixel_weight_ = None
        self.score_norm_ = None
        self.fit_time_ = time.perf_counter() - t0
        self.data_hashes_ = {"pool_sha256": images_sha256(X)}

    def _losses(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # A fresh generator per call: the same images always get the same latent search.
        return latent_search_losses(self.model_, X, int(self.latent_steps),
                                    float(self.latent_lr), float(self.alpha),
                                    self._generator(offset=7))
