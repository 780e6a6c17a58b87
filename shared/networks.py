"""The BiGAN networks shared by every GAN detector: encoder E, generator G, discriminator D.

All three are small convolutional networks sized for 1x28x28 images in [0, 1]. They are kept
deliberately narrow (16/32 channels, no batch normalisation) so that scoring runs at several
thousand images per second on two CPU cores, and so that Reptile's parameter averaging and
few-shot adaptation on 5-10 images are not disturbed by batch statistics.

``D(x, z)`` exposes its penultimate joint layer through :meth:`Discriminator.features`; the
feature-matching term ``L_D`` of the anomaly score is computed on it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

__all__ = ["NetConfig", "Encoder", "Generator", "Discriminator", "BiGAN"]


@dataclass(frozen=True)
class NetConfig:
    """Sizes of the three networks.

    Attributes
    ----------
    z_dim : int
        Latent dimension.
    width : int
        Channels of the first convolution; the second has ``2 * width``.
    d_hidden : int
        Width of the discriminator's joint feature layer (the feature-matching layer).
    """

    z_dim: int = 32
    width: int = 16
    d_hidden: int = 128

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def _conv_trunk(width: int) -> nn.Sequential:
    # 28 -> 14 -> 7, the same trunk for E and for D's image branch.
    return nn.Sequential(
        nn.Conv2d(1, width, 4, 2, 1),
        nn.LeakyReLU(0.2),
        nn.Conv2d(width, 2 * width, 4, 2, 1),
        nn.LeakyReLU(0.2),
        nn.Flatten(),
    )


class Encoder(nn.Module):
    """E: x (N, 1, 28, 28) -> z (N, z_dim)."""

    def __init__(self, cfg: NetConfig) -> None:
        super().__init__()
        self.trunk = _conv_trunk(cfg.width)
        self.head = nn.Linear(2 * cfg.width * 49, cfg.z_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(x))


class Generator(nn.Module):
    """G: z (N, z_dim) -> x (N, 1, 28, 28) in [0, 1]."""

    def __init__(self, cfg: NetConfig) -> None:
        super().__init__()
        self.width = cfg.width
        self.fc = nn.Sequential(nn.Linear(cfg.z_dim, 2 * cfg.width * 49), nn.ReLU())
        self.deconv = nn.Sequential(
            nn.ConvTranspose2d(2 * cfg.width, cfg.width, 4, 2, 1),
            nn.ReLU(),
            nn.ConvTranspose2d(cfg.width, 1, 4, 2, 1),
            nn.Sigmoid(),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.fc(z).view(-1, 2 * self.width, 7, 7)
        return self.deconv(h)


class Discriminator(nn.Module):
    """D: (x, z) -> logit, with the penultimate joint layer exposed for feature matching."""

    def __init__(self, cfg: NetConfig) -> None:
        super().__init__()
        self.x_branch = _conv_trunk(cfg.width)
        self.z_branch = nn.Sequential(nn.Linear(cfg.z_dim, 64), nn.LeakyReLU(0.2))
        self.joint = nn.Sequential(
            nn.Linear(2 * cfg.width * 49 + 64, cfg.d_hidden), nn.LeakyReLU(0.2)
        )
        self.out = nn.Linear(cfg.d_hidden, 1)

    def features(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Penultimate joint layer, the layer used for feature matching (``L_D``)."""
        return self.joint(torch.cat([self.x_branch(x), self.z_branch(z)], dim=1))

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(logit (N,), features (N, d_hidden))``."""
        f = self.features(x, z)
        return self.out(f).squeeze(1), f


class BiGAN(nn.Module):
    """Container of E, G and D so that one ``state_dict`` covers the whole model."""

    def __init__(self, cfg: NetConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg or NetConfig()
        self.E = Encoder(self.cfg)
        self.G = Generator(self.cfg)
        self.D = Discriminator(self.cfg)
