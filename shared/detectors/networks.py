"""The BiGAN networks shared by every GAN detector: encoder E, generator G, discriminator D.

All three are small convolutional networks built for one image shape (C, H, W), values in
[0, 1] (``NetConfig.image_shape``, 1x28x28 by default). The image trunk halves the image with
stride-2 convolutions until its sides are at most 8 pixels (at least twice: 28 -> 14 -> 7,
32 -> 16 -> 8, 64 -> 32 -> 16 -> 8), doubling the channels at each stage up to ``4 * width``;
the generator mirrors it with transposed convolutions whose output padding restores odd sides
exactly. At 1x28x28 the networks are the ones the shipped meta-model was trained with. They
are kept deliberately narrow (16/32 channels, no batch normalisation) so that scoring runs at
several thousand images per second on two CPU cores, and so that Reptile's parameter averaging
and few-shot adaptation on 5-10 images are not disturbed by batch statistics.

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
    image_shape : tuple of int
        (C, H, W) of the images the networks take and make.
    """

    z_dim: int = 32
    width: int = 16
    d_hidden: int = 128
    image_shape: tuple[int, int, int] = (1, 28, 28)

    def __post_init__(self) -> None:
        shape = tuple(int(s) for s in self.image_shape)  # a JSON list reads back as a tuple
        if len(shape) != 3 or min(shape) < 1 or min(shape[1:]) < 8:
            raise ValueError(f"image_shape must be (C, H, W) with H, W >= 8, got "
                             f"{self.image_shape}")
        object.__setattr__(self, "image_shape", shape)

    def to_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["image_shape"] = list(self.image_shape)
        return d

    def stage_sizes(self) -> list[tuple[int, int]]:
        """(H, W) before each stride-2 stage and after the last: halved (rounding down) at
        least twice, and until both sides are at most 8."""
        sizes = [tuple(self.image_shape[1:])]
        while len(sizes) < 3 or max(sizes[-1]) > 8:
            h, w = sizes[-1]
            sizes.append((h // 2, w // 2))
        return sizes

    def stage_channels(self) -> list[int]:
        """Channels after each stage: ``width``, then doubled, capped at ``4 * width``."""
        stages = len(self.stage_sizes()) - 1
        return [self.width * min(2 ** i, 4) for i in range(stages)]

    def trunk_features(self) -> int:
        """Length of the flattened trunk output."""
        h, w = self.stage_sizes()[-1]
        return self.stage_channels()[-1] * h * w


def _conv_trunk(cfg: NetConfig) -> nn.Sequential:
    # Stride-2 stages (28 -> 14 -> 7 at 1x28x28), the same trunk for E and D's image branch.
    layers: list[nn.Module] = []
    c_in = cfg.image_shape[0]
    for c_out in cfg.stage_channels():
        layers += [nn.Conv2d(c_in, c_out, 4, 2, 1), nn.LeakyReLU(0.2)]
        c_in = c_out
    return nn.Sequential(*layers, nn.Flatten())


class Encoder(nn.Module):
    """E: x (N, C, H, W) -> z (N, z_dim)."""

    def __init__(self, cfg: NetConfig) -> None:
        super().__init__()
        self.trunk = _conv_trunk(cfg)
        self.head = nn.Linear(cfg.trunk_features(), cfg.z_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(x))


class Generator(nn.Module):
    """G: z (N, z_dim) -> x (N, C, H, W) in [0, 1]."""

    def __init__(self, cfg: NetConfig) -> None:
        super().__init__()
        sizes, channels = cfg.stage_sizes(), cfg.stage_channels()
        self.start = (channels[-1], *sizes[-1])
        self.fc = nn.Sequential(nn.Linear(cfg.z_dim, cfg.trunk_features()), nn.ReLU())
        layers: list[nn.Module] = []
        outs = channels[-2::-1] + [cfg.image_shape[0]]
        c_in = channels[-1]
        for i, c_out in enumerate(outs):
            # Output padding 1 where the trunk rounded an odd side down, so G(z) is H x W.
            big = sizes[len(outs) - 1 - i]
            pad = (big[0] % 2, big[1] % 2)
            layers += [nn.ConvTranspose2d(c_in, c_out, 4, 2, 1, output_padding=pad),
                       nn.ReLU() if i < len(outs) - 1 else nn.Sigmoid()]
            c_in = c_out
        self.deconv = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.deconv(self.fc(z).view(-1, *self.start))


class Discriminator(nn.Module):
    """D: (x, z) -> logit, with the penultimate joint layer exposed for feature matching."""

    def __init__(self, cfg: NetConfig) -> None:
        super().__init__()
        self.x_branch = _conv_trunk(cfg)
        self.z_branch = nn.Sequential(nn.Linear(cfg.z_dim, 64), nn.LeakyReLU(0.2))
        self.joint = nn.Sequential(
            nn.Linear(cfg.trunk_features() + 64, cfg.d_hidden), nn.LeakyReLU(0.2)
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
