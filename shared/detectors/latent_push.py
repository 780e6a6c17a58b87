"""AnoEAN's latent push (Gherbi et al.): an encoder trained to map normal images onto
N(0, I) and known anomalies out of it, scored by the Mahalanobis distance of its code.

Rt-BiGAN's ``latent_push`` switch uses it as one more piece of evidence, with the images its
own self-training flagged as the "few labelled anomalies" AnoEAN needs. Choices where the
paper leaves room, and why:

- the encoder starts from the BiGAN's encoder (meta-trained, adapted, self-trained), not
  from random weights: a few hundred steps then suffice, and the pushed code keeps the
  BiGAN's features;
- the latent discriminator is the paper's MNIST one (d -> 32 -> 16 -> 1, LeakyReLU);
- one discriminator step per encoder step (n_D = 1), batches of 32 normal and 32 flagged
  images and 64 draws of N(0, I); Adam with lr 2e-4, beta1 0.5 for both networks (the paper
  gives both 2e-4 and 1e-3; 1e-3 let the encoder overshoot in our runs);
- the encoder's loss is the paper's faster form ``-log D(E(x_n)) - log(1 - D(E(x_a)))``;
- the Mahalanobis centre and covariance are those of the normal images' codes, estimated by
  Ledoit-Wolf shrinkage (scikit-learn): 32 dimensions from a few thousand codes.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.covariance import LedoitWolf
from torch import nn

from fedsieve.shared.detectors.anoean import mahalanobis
from fedsieve.shared.detectors.bigan import SCORE_BATCH, RowSet, as_batch
from fedsieve.shared.devices import module_device
from fedsieve.shared.networks import Encoder

__all__ = ["LatentPush", "latent_discriminator"]

#: Normal codes used to estimate the Mahalanobis centre and covariance.
REFERENCE_CODES = 4000


def latent_discriminator(z_dim: int) -> nn.Module:
    """AnoEAN's discriminator D(z) on MNIST: d -> 32 -> 16 -> 1 (a logit)."""
    return nn.Sequential(nn.Linear(z_dim, 32), nn.LeakyReLU(0.2), nn.Linear(32, 16),
                         nn.LeakyReLU(0.2), nn.Linear(16, 1))


def _bce(logits: torch.Tensor, target: float) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, target))


class LatentPush:
    """A pushed encoder and its normal codes' Gaussian.

    Parameters
    ----------
    encoder : Encoder
        The encoder to train (trained in place; pass a copy to keep the original). Training
        and scoring run on its device; the discriminator joins it there.
    seed : int, default=0
        Seeds the discriminator's initial weights.
    """

    def __init__(self, encoder: Encoder, seed: int = 0) -> None:
        self.encoder = encoder
        with torch.random.fork_rng(devices=[]):  # leave the caller's global RNG alone
            torch.manual_seed(seed)
            self.discriminator = latent_discriminator(encoder.head.out_features).to(
                module_device(encoder))
        self.center: np.ndarray | None = None
        self.precision: np.ndarray | None = None
        self._optimizers: tuple[torch.optim.Adam, torch.optim.Adam] | None = None

    @classmethod
    def from_encoder(cls, encoder: Encoder, seed: int = 0) -> LatentPush:
        """Start from a copy of ``encoder``."""
        return cls(copy.deepcopy(encoder), seed)

    def train(self, normal: RowSet, anomalies: RowSet, steps: int, gen: torch.Generator,
              batch_size: int = 32) -> LatentPush:
        """``steps`` alternating steps of AnoEAN's Algorithm 1, then re-estimate the normal
        codes' Gaussian on ``normal``. Continues the previous call's optimiser state."""
        if self._optimizers is None:
            self._optimizers = (
                torch.optim.Adam(self.discriminator.parameters(), 2e-4, betas=(0.5, 0.999)),
                torch.optim.Adam(self.encoder.parameters(), 2e-4, betas=(0.5, 0.999)))
        opt_d, opt_e = self._optimizers
        z_dim = self.encoder.head.out_features
        device = module_device(self.encoder)
        self.encoder.train()
        for _ in range(steps):
            # Drawn on the CPU generator, then moved: the same draws on every device.
            xn = normal[torch.randint(len(normal), (batch_size,), generator=gen)].to(device)
            xa = anomalies[torch.randint(len(anomalies), (batch_size,), generator=gen)].to(device)
            z = torch.randn(2 * batch_size, z_dim, generator=gen).to(device)
            zn, za = self.encoder(xn), self.encoder(xa)
            # Eq. 1: D tells N(0, I) from every code, normal or not.
            loss_d = (_bce(self.discriminator(z), 1.0) + _bce(self.discriminator(zn.detach()), 0.0)
                      + _bce(self.discriminator(za.detach()), 0.0))
            opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            opt_d.step()
            # Eq. 2 (the paper's faster form): normal codes pass for N(0, I), anomalies do not.
            loss_e = _bce(self.discriminator(zn), 1.0) + _bce(self.discriminator(za), 0.0)
            opt_e.zero_grad(set_to_none=True)
            loss_e.backward()
            opt_e.step()
        self.encoder.eval()
        self._fit_gaussian(normal, gen)
        return self

    def codes(self, X: np.ndarray | RowSet) -> np.ndarray:
        """Encoder codes, float64 (N, z_dim), of float32 (N, C, H, W) images or a RowSet."""
        if isinstance(X, RowSet):
            return self._encode(X.chunks(SCORE_BATCH))
        return self._encode(as_batch(X[i:i + SCORE_BATCH]) for i in range(0, len(X), SCORE_BATCH))

    def distance(self, X: np.ndarray | RowSet) -> np.ndarray:
        """Mahalanobis distance of each image's code to the normal codes (paper Eq. 3)."""
        return mahalanobis(self.codes(X), self.center, self.precision)

    @torch.no_grad()
    def _encode(self, batches) -> np.ndarray:
        device = module_device(self.encoder)
        parts = [self.encoder(x.to(device)).double().cpu().numpy() for x in batches]
        return np.concatenate(parts) if parts else np.empty((0, self.encoder.head.out_features))

    def _fit_gaussian(self, normal: RowSet, gen: torch.Generator) -> None:
        rows = np.arange(len(normal))
        if len(rows) > REFERENCE_CODES:
            rows = np.sort(torch.randperm(len(normal), generator=gen)[:REFERENCE_CODES].numpy())
        codes = self._encode(normal[rows[i:i + SCORE_BATCH]]
                             for i in range(0, len(rows), SCORE_BATCH))
        fitted = LedoitWolf().fit(codes)
        self.center, self.precision = fitted.location_, fitted.precision_
