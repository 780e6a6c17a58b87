"""AGAD: Adversarial Generative Anomaly Detection (Shi & Zhang, arXiv 2304.04211).

A reconstruction GAN (generator ``G``: image -> image; discriminator ``D``: image -> (real/fake
logit, feature map ``z``)) trained so that normal images are reconstructed well while
anomalies are not. Its own reconstruction ``x^ = G(x)`` is taken as a pseudo-anomaly whose
re-reconstruction ``G(x^)`` must fail (the contextual adversarial loss, Eq. 8); labelled
anomalies, when there are some, get reciprocal losses that push their reconstruction away
(Eq. 10). The score is the reconstruction error ``||x - G(x)||_2`` (Sec. 3.3.3).

The losses are module-level functions of tensors so that each can be checked by hand.
"""

from __future__ import annotations

import math
from numbers import Integral, Real
from typing import Any, ClassVar, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.utils._param_validation import Interval, StrOptions
from torch import nn

from fedsieve.shared.detectors.base import RoundRecorder, TorchDetector

__all__ = [
    "AGAD",
    "adversarial_loss",
    "contextual_loss",
    "latent_loss",
    "contextual_adversarial_loss",
    "normality_loss",
    "anomaly_loss",
    "reconstruction_score",
    "work_size",
]

#: Generator backbones: the naive DCGAN encoder-decoder (paper Table 7) and UNet++.
GENERATORS = ("naive", "unetpp")
#: Keeps the reciprocal losses of Eq. 10 finite when a term reaches 0.
RECIPROCAL_EPS = 1e-6


# -- the losses (paper Sec. 3.2, Algorithm 1) -----------------------------------------------
def adversarial_loss(logits: torch.Tensor, target: float) -> torch.Tensor:
    """``l_adv``: binary cross-entropy of D's logits against ``target`` (1 real, 0 fake),
    averaged over the batch (Eq. 5, one side at a time as in Algorithm 1)."""
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, float(target)))


def contextual_loss(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """``L_con = E |x - x^|_1`` (Eq. 6): mean absolute difference over every value."""
    return (x - x_hat).abs().mean()


def latent_loss(z: torch.Tensor, z_hat: torch.Tensor) -> torch.Tensor:
    """``L_lat = E |D_z(x) - D_z(x^)|_2`` (Eq. 7): mean squared difference of D's features."""
    return ((z - z_hat) ** 2).mean()


def contextual_adversarial_loss(x_hat: torch.Tensor, x_hat2: torch.Tensor) -> torch.Tensor:
    """``L_adcon = -E |x^ - G(x^)|_1`` (Eq. 8): minimising it makes the re-reconstruction of
    the pseudo-anomaly ``x^`` fail."""
    return -(x_hat - x_hat2).abs().mean()


def normality_loss(fake_logits: torch.Tensor, x: torch.Tensor, x_hat: torch.Tensor,
                   x_hat2: torch.Tensor, z: torch.Tensor, z_hat: torch.Tensor,
                   weights: tuple[float, float, float, float]) -> torch.Tensor:
    """Generator loss on normal images, Eq. 9 (Algorithm 1, line 6).

    ``weights`` = (lambda_adv, lambda_con, lambda_adcon, lambda_lat);
    ``L_n = l_adv(D(x^), 1) + l_con(x, x^) + l_adcon(x^, G(x^)) + l_lat(z, z^)``, each term
    times its weight.
    """
    w_adv, w_con, w_adcon, w_lat = weights
    return (w_adv * adversarial_loss(fake_logits, 1.0) + w_con * contextual_loss(x, x_hat)
            + w_adcon * contextual_adversarial_loss(x_hat, x_hat2)
            + w_lat * latent_loss(z, z_hat))


def anomaly_loss(fake_logits: torch.Tensor, x: torch.Tensor, x_hat: torch.Tensor,
                 z: torch.Tensor, z_hat: torch.Tensor,
                 weights: tuple[float, float, float, float]) -> torch.Tensor:
    """Generator loss on labelled anomalies, Eq. 10 (Algorithm 1, line 9): reciprocals, so
    that minimising it makes the reconstruction of an anomaly fail (Eq. 3).

    ``L_a = lambda_adv / l_adv(D(x^), 0) + lambda_adcon / E|x - x^|_1 + lambda_lat / l_lat``
    with ``x`` the anomalies, ``x^ = G(x)``; ``weights`` as for :func:`normality_loss`
    (lambda_con unused). Each denominator gets :data:`RECIPROCAL_EPS`.
    """
    w_adv, _, w_adcon, w_lat = weights
    eps = RECIPROCAL_EPS
    return (w_adv / (adversarial_loss(fake_logits, 0.0) + eps)
            + w_adcon / (-contextual_adversarial_loss(x, x_hat) + eps)
            + w_lat / (latent_loss(z, z_hat) + eps))


def reconstruction_score(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """The anomaly score ``A(x) = ||x - G(x)||_2`` per image (Sec. 3.3.3), shape (N,)."""
    return (x - x_hat).flatten(1).pow(2).sum(1).sqrt()


# -- the networks ---------------------------------------------------------------------------
def work_size(height: int, width: int) -> int:
    """Side of the square the networks work at: the smallest power of two >= both sides,
    at least 16 (28 -> 32, 32 -> 32, 64 -> 64); images are resized to it, as the paper
    resizes MNIST and Fashion-MNIST to 32x32."""
    side = 16
    while side < max(height, width):
        side *= 2
    return side


class _SplitBN(nn.Module):
    """Batch norm with three routes: ``"main"`` (normal images), ``"aux"`` (pseudo-anomalies,
    own statistics and affine, AdvProp-style) and ``"frozen"`` (true anomalies: the normal
    running statistics, never updated)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.main = nn.BatchNorm2d(channels)
        self.aux = nn.BatchNorm2d(channels)
        self.route = "main"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.route == "aux" and self.training:
            return self.aux(x)
        if self.route == "frozen" and self.training:
            m = self.main
            return F.batch_norm(x, m.running_mean, m.running_var, m.weight, m.bias, False,
                                0.0, m.eps)
        return self.main(x)


def set_route(net: nn.Module, route: str) -> None:
    """Send every batch norm of ``net`` along ``route`` (see :class:`_SplitBN`)."""
    for m in net.modules():
        if isinstance(m, _SplitBN):
            m.route = route


def _stage_channels(size: int, width: int) -> list[int]:
    # Stride-2 stages from ``size`` down to 4x4, channels doubling (DCGAN / GANomaly).
    return [width * 2 ** i for i in range(int(math.log2(size)) - 2)]


class NaiveGenerator(nn.Module):
    """The naive encoder-decoder of paper Table 7 (GANomaly's DCGAN pair): stride-2 4x4
    convolutions down to 4x4, a 4x4 convolution to a ``latent_dim`` vector, and back."""

    def __init__(self, channels: int, size: int, width: int, latent_dim: int) -> None:
        super().__init__()
        ch = _stage_channels(size, width)
        enc: list[nn.Module] = [nn.Conv2d(channels, ch[0], 4, 2, 1, bias=False),
                                nn.LeakyReLU(0.2)]
        for c_in, c_out in zip(ch, ch[1:]):
            enc += [nn.Conv2d(c_in, c_out, 4, 2, 1, bias=False), _SplitBN(c_out),
                    nn.LeakyReLU(0.2)]
        enc.append(nn.Conv2d(ch[-1], latent_dim, 4, 1, 0, bias=False))
        dec: list[nn.Module] = [nn.ConvTranspose2d(latent_dim, ch[-1], 4, 1, 0, bias=False),
                                _SplitBN(ch[-1]), nn.ReLU()]
        for c_in, c_out in zip(ch[:0:-1], ch[-2::-1]):
            dec += [nn.ConvTranspose2d(c_in, c_out, 4, 2, 1, bias=False), _SplitBN(c_out),
                    nn.ReLU()]
        dec += [nn.ConvTranspose2d(ch[0], channels, 4, 2, 1, bias=False), nn.Tanh()]
        self.encoder = nn.Sequential(*enc)
        self.decoder = nn.Sequential(*dec)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


class UNetPPGenerator(nn.Module):
    """UNet++ (Zhou et al.) for reconstruction: a backbone of stride-2 nodes ``X[i][0]`` from
    ``size / 2`` down to 2x2, and nested nodes ``X[i][j] = conv(cat(X[i][0..j-1],
    up(X[i+1][j-1])))`` on dense skip pathways; the output is up-sampled from ``X[0][L]``.
    Down nodes are LeakyReLU-Conv-BN, up-samplers ReLU-ConvTranspose-BN (paper Fig. 5),
    nested nodes ReLU-Conv3x3-BN."""

    def __init__(self, channels: int, size: int, width: int) -> None:
        super().__init__()
        ch = [width * 2 ** i for i in range(int(math.log2(size)) - 1)]  # size/2 .. 2
        self.depth = len(ch) - 1
        down: list[nn.Module] = [nn.Conv2d(channels, ch[0], 4, 2, 1, bias=False)]
        for c_in, c_out in zip(ch, ch[1:]):
            down.append(nn.Sequential(nn.LeakyReLU(0.2),
                                      nn.Conv2d(c_in, c_out, 4, 2, 1, bias=False),
                                      _SplitBN(c_out)))
        self.down = nn.ModuleList(down)
        self.up = nn.ModuleDict()
        self.node = nn.ModuleDict()
        for j in range(1, self.depth + 1):
            for i in range(self.depth + 1 - j):
                self.up[f"{i}_{j}"] = nn.Sequential(
                    nn.ReLU(), nn.ConvTranspose2d(ch[i + 1], ch[i], 4, 2, 1, bias=False),
                    _SplitBN(ch[i]))
                self.node[f"{i}_{j}"] = nn.Sequential(
                    nn.ReLU(), nn.Conv2d(ch[i] * (j + 1), ch[i], 3, 1, 1, bias=False),
                    _SplitBN(ch[i]))
        self.out = nn.Sequential(nn.ReLU(), nn.ConvTranspose2d(ch[0], channels, 4, 2, 1),
                                 nn.Tanh())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        grid: list[list[torch.Tensor]] = []
        h = x
        for layer in self.down:
            h = layer(h)
            grid.append([h])
        for j in range(1, self.depth + 1):
            for i in range(self.depth + 1 - j):
                up = self.up[f"{i}_{j}"](grid[i + 1][j - 1])
                grid[i].append(self.node[f"{i}_{j}"](torch.cat([*grid[i][:j], up], 1)))
        return self.out(grid[0][self.depth])


class Discriminator(nn.Module):
    """D: Conv-BN-LeakyReLU blocks (stride 2) down to 4x4, whose output is the feature map
    ``z`` of the latent loss, then a fully convolutional 4x4 classifier giving one logit."""

    def __init__(self, channels: int, size: int, width: int) -> None:
        super().__init__()
        ch = _stage_channels(size, width)
        layers: list[nn.Module] = []
        c_in = channels
        for c_out in ch:
            layers += [nn.Conv2d(c_in, c_out, 4, 2, 1, bias=False), _SplitBN(c_out),
                       nn.LeakyReLU(0.2)]
            c_in = c_out
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Conv2d(ch[-1], 1, 4, 1, 0, bias=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(logit (N,), features (N, C', 4, 4))``."""
        z = self.features(x)
        return self.classifier(z).flatten(), z


def build_generator(net: dict[str, Any]) -> nn.Module:
    """The generator described by ``net`` (``generator``, ``width``, ``latent_dim``,
    ``image_shape``)."""
    c, h, w = (int(s) for s in net["image_shape"])
    size = work_size(h, w)
    if net["generator"] == "naive":
        return NaiveGenerator(c, size, int(net["width"]), int(net["latent_dim"]))
    if net["generator"] == "unetpp":
        return UNetPPGenerator(c, size, int(net["width"]))
    raise ValueError(f"unknown generator {net['generator']!r}; choose one of {GENERATORS}")


def _init_weights(net: nn.Module, gen: torch.Generator) -> None:
    # DCGAN initialisation (GANomaly's weights_init), drawn from a seeded generator.
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                _normal_(m.weight, 0.0, gen)
                if m.bias is not None:
                    m.bias.zero_()
            elif isinstance(m, nn.BatchNorm2d):
                _normal_(m.weight, 1.0, gen)
                m.bias.zero_()
                m.reset_running_stats()


def _normal_(weight: torch.Tensor, mean: float, gen: torch.Generator) -> None:
    """Fill ``weight`` with N(mean, 0.02) draws of the CPU generator ``gen``, on whatever
    device it lives (a CPU generator cannot fill a GPU tensor: drawn, then copied)."""
    if weight.device.type == "cpu":
        weight.normal_(mean, 0.02, generator=gen)
    else:
        weight.copy_(torch.empty(weight.shape).normal_(mean, 0.02, generator=gen))


# -- the detector ---------------------------------------------------------------------------
class _Run(NamedTuple):
    """What one fit's training steps share, handed to them rather than kept on the
    estimator: the two optimisers, the torch generator (weights and discriminator resets)
    and the numpy generator (batches)."""

    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    torch_gen: torch.Generator
    rng: np.random.Generator


class AGAD(TorchDetector):
    """AGAD, Adversarial Generative Anomaly Detection (Shi & Zhang, arXiv 2304.04211).

    A generator reconstructs each image and a discriminator tells images from reconstructions
    (and gives the features of the latent loss). On normal images G minimises the normality
    loss (Eq. 9): adversarial + L1 contextual + latent + the contextual adversarial loss
    ``-|x^ - G(x^)|_1`` (Eq. 8), which treats the reconstruction ``x^`` as a pseudo-anomaly
    whose re-reconstruction must fail. On labelled anomalies G minimises the reciprocal
    anomaly loss (Eq. 10) and D learns to call them fake (Eq. 4). D is re-initialised when its
    loss falls below ``d_reset_threshold`` (delta of Algorithm 1). Score:
    ``A(x) = ||x - G(x)||_2`` on the images resized to the working square and mapped to
    [-1, 1].

    Labelled anomalies are optional. With ``anomalies=`` given to ``fit`` the pool is taken
    as normal and they are used as in the paper (one round). Without them (fedsieve mode)
    round 0 trains on the whole pool with no anomalies (the paper's unlabelled setting), and
    each of ``self_training_rounds`` later rounds continues training for ``refine_steps``
    with the pool images flagged in the previous round as the labelled anomalies (replaced
    each round, not accumulated) and the rest of the pool as normal.

    Choices where the paper is silent
    ---------------------------------
    - **Generator.** ``"unetpp"`` is the paper's main generator, sized here for 28-32 px:
      backbone nodes at 16, 8, 4 and 2 px (``width`` x 1, 2, 4, 8 channels) and dense
      nested skip nodes, 9.0 M parameters at ``width=64`` (paper: 9.04 M). The default is
      ``"naive"`` (paper Table 7, 2.1 M parameters at 32 px, the paper's 2.04 M) because the
      paper itself replaced UNet++ by it for MNIST (Appendix B.1: 99.1 vs 89.4 AUC), it is
      as good on Fashion-MNIST (99.2), and it is about 4x cheaper on CPU.
    - **Input size.** Images are resized (bilinear) to the smallest power-of-two square
      >= their sides, at least 16 (28 -> 32, as the paper resizes to 32x32), and mapped to
      [-1, 1] ("image normalisation"); the score is computed there.
    - **Discriminator.** The paper says "VGG-like, Conv-BN-LeakyReLU blocks and a fully
      convolutional classifier"; here as GANomaly's D (which AGAD extends): stride-2 blocks
      down to 4x4 (three at 32 px), features ``z`` = that map, a 4x4 convolution as
      classifier.
    - **Batch norm.** Both networks use it (the paper calls it essential). Following
      Sec. 6.2, pseudo-anomalies (the ``G(x^)`` pass) go through auxiliary batch norms
      (AdvProp) and true anomalies through frozen ones (the normal running statistics, not
      updated, "switching off batch norm"). Scoring uses eval mode, so a score does not
      depend on the other images in its batch.
    - **The pseudo-anomaly is detached**: ``x^`` enters ``G(x^)`` as data, so Eq. 8 trains G
      to fail on it rather than to make ``x^`` itself worse (which Eq. 6 forbids).
    - **Anomaly loss.** Eq. 10's contextual term is applied to ``|x_a - G(x_a)|_1`` (Eq. 3,
      Fig. 1b: "fail the reconstruction of anomaly directly"), not to the re-reconstruction
      written in Algorithm 1 line 9; each denominator gets 1e-6 to stay finite.
    - **Mini-batches.** Each step draws ``batch_size`` normal images and, when there are
      anomalies, ``anomaly_batch_size`` (32, "at least 32 anomaly data", with replacement
      if fewer) anomalies; the generator loss is ``L_n + L_a`` (Eq. 11 summed over the two
      parts) and the D loss the sum of both parts' terms. G steps first, then D (Alg. 1).
    - **Discriminator reset.** delta = 1e-5 on D's loss (GANomaly's reset rule, which AGAD
      extends); the weights are re-drawn from the seeded generator, Adam's state is kept.
    - **Optimiser and length.** Adam, lr 2e-4 (paper), betas (0.5, 0.999) (GANomaly). The
      paper gives no epoch count; ``steps`` counts batches instead, because fedsieve pools
      are small (400 digits per class here vs 6,000 in the paper).
    - **Self-training.** Later rounds continue from the current networks (no restart) so
      that a round costs ``refine_steps``, not ``steps``.

    Parameters
    ----------
    generator : {"naive", "unetpp"}, default="naive"
        Generator backbone (see above).
    width : int, default=32
        Channels of the first convolution of G and D, doubled at each stage (paper: 64).
    latent_dim : int, default=100
        Bottleneck length of the naive generator (paper Table 7: 100).
    steps : int, default=600
        Training steps (batches) of round 0.
    refine_steps : int, default=200
        Training steps of each self-training round.
    self_training_rounds : int, default=2
        Rounds after round 0 that use the previous round's flagged pool images as labelled
        anomalies; 0 is the paper's unlabelled setting. Ignored when ``fit`` gets
        ``anomalies=``.
    batch_size : int, default=64
        Normal images per step (paper: 256 on 6,000-image classes).
    anomaly_batch_size : int, default=32
        Anomalies per step when there are some (paper: at least 32).
    lr : float, default=2e-4
        Adam learning rate of G and D.
    lambda_adv, lambda_con, lambda_adcon, lambda_lat : float, default=1, 50, 15, 5
        Loss weights (paper Sec. 4.2).
    d_reset_threshold : float, default=1e-5
        delta: D is re-initialised when its loss falls below it; 0 disables the reset.
    threshold_policy : {"gmm", "budget", "trusted-quantile", "contamination", "fixed"}
        Default "gmm". See :mod:`fedsieve.shared.detectors.threshold`.
    threshold_value : float, optional
        Parameter of the policy.
    random_state : int, optional, default=0
        Seeds initialisation, batches and re-initialisations of D.
    device : str, default="auto"
        Where the networks train and score: ``"auto"`` (CUDA when available, else the CPU),
        ``"cpu"``, ``"cuda"``, ``"cuda:<index>"``, ``"mps"``; resolved when ``fit`` starts.
        Initial weights and batches are drawn on the CPU, so they do not depend on it.

    Attributes
    ----------
    generator_ : torch.nn.Module
        The trained generator, in eval mode (scores use it), on ``device_``.
    device_ : torch.device
        The resolved ``device``.
    discriminator_ : torch.nn.Module
        The trained discriminator (training only; not saved in checkpoints).
    net_ : dict
        Network description: ``generator``, ``width``, ``latent_dim``, ``image_shape``,
        ``work_size``.
    n_d_resets_ : int
        How many times D was re-initialised during the fit.
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
        One entry per round: threshold, flagged count, changed share, elapsed seconds,
        ``auc`` with ``y_true``.
    data_hashes_ : dict
        SHA-256 of the pool and of the trusted images.
    fit_time_ : float
        Seconds ``fit`` took.
    n_features_in_ : int
        Values per image (C * H * W).
    image_shape_ : tuple of int
        (C, H, W) of the fitted images; ``decision_function`` scores only that shape.
    """

    accepts_anomalies: ClassVar[bool] = True

    _parameter_constraints: ClassVar[dict[str, list[Any]]] = {
        **TorchDetector._parameter_constraints,
        "generator": [StrOptions(set(GENERATORS))],
        "width": [Interval(Integral, 1, None, closed="left")],
        "latent_dim": [Interval(Integral, 1, None, closed="left")],
        "steps": [Interval(Integral, 0, None, closed="left")],
        "refine_steps": [Interval(Integral, 0, None, closed="left")],
        "self_training_rounds": [Interval(Integral, 0, None, closed="left")],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "anomaly_batch_size": [Interval(Integral, 1, None, closed="left")],
        "lr": [Interval(Real, 0, None, closed="neither")],
        "lambda_adv": [Interval(Real, 0, None, closed="left")],
        "lambda_con": [Interval(Real, 0, None, closed="left")],
        "lambda_adcon": [Interval(Real, 0, None, closed="left")],
        "lambda_lat": [Interval(Real, 0, None, closed="left")],
        "d_reset_threshold": [Interval(Real, 0, None, closed="left")],
    }

    def __init__(
        self,
        *,
        generator: str = "naive",
        width: int = 32,
        latent_dim: int = 100,
        steps: int = 600,
        refine_steps: int = 200,
        self_training_rounds: int = 2,
        batch_size: int = 64,
        anomaly_batch_size: int = 32,
        lr: float = 2e-4,
        lambda_adv: float = 1.0,
        lambda_con: float = 50.0,
        lambda_adcon: float = 15.0,
        lambda_lat: float = 5.0,
        d_reset_threshold: float = 1e-5,
        threshold_policy: str = "gmm",
        threshold_value: float | None = None,
        random_state: int | None = 0,
        device: str = "auto",
    ) -> None:
        self.device = device
        self.generator = generator
        self.width = width
        self.latent_dim = latent_dim
        self.steps = steps
        self.refine_steps = refine_steps
        self.self_training_rounds = self_training_rounds
        self.batch_size = batch_size
        self.anomaly_batch_size = anomaly_batch_size
        self.lr = lr
        self.lambda_adv = lambda_adv
        self.lambda_con = lambda_con
        self.lambda_adcon = lambda_adcon
        self.lambda_lat = lambda_lat
        self.d_reset_threshold = d_reset_threshold
        self.threshold_policy = threshold_policy
        self.threshold_value = threshold_value
        self.random_state = random_state

    # -- fit -------------------------------------------------------------------------------
    def _fit(self, X: np.ndarray, trusted: np.ndarray | None, rounds: RoundRecorder,
             anomalies: np.ndarray | None = None) -> None:
        seed = 0 if self.random_state is None else int(self.random_state)
        torch_gen = torch.Generator().manual_seed(seed)
        c, h, w = X.shape[1:]
        self.net_ = {"generator": self.generator, "width": int(self.width),
                     "latent_dim": int(self.latent_dim), "image_shape": [int(c), int(h), int(w)],
                     "work_size": work_size(h, w)}
        self.generator_ = build_generator(self.net_)
        self.discriminator_ = Discriminator(int(c), self.net_["work_size"], int(self.width))
        _init_weights(self.generator_, torch_gen)
        _init_weights(self.discriminator_, torch_gen)
        self.generator_.to(self.device_)
        self.discriminator_.to(self.device_)
        betas = (0.5, 0.999)
        run = _Run(torch.optim.Adam(self.generator_.parameters(), lr=self.lr, betas=betas),
                   torch.optim.Adam(self.discriminator_.parameters(), lr=self.lr, betas=betas),
                   torch_gen, np.random.default_rng(seed))
        self.n_d_resets_ = 0
        # On the CPU: the steps draw their batches from it and move them to the device.
        pool = self._prepare(X)
        known = None if anomalies is None else self._prepare(anomalies)
        try:
            self._train_steps(run, pool, known, int(self.steps))
            labels, _ = rounds.end_round(self._score(X))
            if known is not None:
                return  # the paper's supervised setting: the given anomalies are the truth
            for _ in range(int(self.self_training_rounds)):
                flagged = labels.astype(bool)
                normal = pool[~flagged] if (~flagged).any() else pool
                self._train_steps(run, normal, pool[flagged] if flagged.any() else None,
                                  int(self.refine_steps))
                labels, _ = rounds.end_round(self._score(X))
        finally:
            self.generator_.eval()
            self.discriminator_.eval()

    def _weights(self) -> tuple[float, float, float, float]:
        return (float(self.lambda_adv), float(self.lambda_con), float(self.lambda_adcon),
                float(self.lambda_lat))

    @staticmethod
    def _draw(rng: np.random.Generator, data: torch.Tensor, k: int) -> torch.Tensor:
        n = len(data)
        idx = rng.choice(n, size=k, replace=n < k)
        return data[torch.from_numpy(idx)]

    def _train_steps(self, run: _Run, normal: torch.Tensor, anomalies: torch.Tensor | None,
                     steps: int) -> None:
        G, D = self.generator_, self.discriminator_
        G.train()
        D.train()
        weights = self._weights()
        dev = self.device_
        for _ in range(steps):
            x = self._draw(run.rng, normal, min(int(self.batch_size), len(normal))).to(dev)
            a = None if anomalies is None else self._draw(
                run.rng, anomalies, int(self.anomaly_batch_size)).to(dev)
            # -- G step (Algorithm 1, lines 3-6 and 9)
            set_route(G, "main")
            set_route(D, "main")
            x_hat = G(x)
            set_route(G, "aux")  # the pseudo-anomaly's own batch norms (AdvProp)
            x_hat2 = G(x_hat.detach())
            set_route(G, "main")
            fake_logits, z_hat = D(x_hat)
            real_logits, z = D(x)  # D is not updated before its own step: reused there
            loss_g = normality_loss(fake_logits, x, x_hat, x_hat2, z.detach(), z_hat, weights)
            if a is not None:
                set_route(G, "frozen")
                set_route(D, "frozen")
                a_hat = G(a)
                a_fake_logits, a_z_hat = D(a_hat)
                with torch.no_grad():
                    _, a_z = D(a)
                loss_g = loss_g + anomaly_loss(a_fake_logits, a, a_hat, a_z, a_z_hat, weights)
                set_route(G, "main")
                set_route(D, "main")
            run.opt_g.zero_grad(set_to_none=True)
            loss_g.backward(inputs=list(G.parameters()))
            run.opt_g.step()
            # -- D step (lines 7 and 10)
            fake_logits, _ = D(x_hat.detach())
            loss_d = adversarial_loss(real_logits, 1.0) + adversarial_loss(fake_logits, 0.0)
            if a is not None:
                set_route(D, "frozen")
                anomaly_logits, _ = D(a)
                loss_d = loss_d + adversarial_loss(anomaly_logits, 0.0)
                set_route(D, "main")
            run.opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            run.opt_d.step()
            if loss_d.item() < float(self.d_reset_threshold):
                _init_weights(D, run.torch_gen)  # D won outright: no gradient left for G
                self.n_d_resets_ += 1

    # -- score -----------------------------------------------------------------------------
    def _prepare(self, X: np.ndarray) -> torch.Tensor:
        """float32 NCHW in [0, 1] -> the working square in [-1, 1]."""
        x = torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32))
        size = work_size(*x.shape[2:])
        if tuple(x.shape[2:]) != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        return x * 2.0 - 1.0

    def _score(self, X: np.ndarray, batch: int = 256) -> np.ndarray:
        G = self.generator_
        was_training = G.training
        G.eval()
        set_route(G, "main")
        out = []
        with torch.no_grad():
            for i in range(0, len(X), batch):
                x = self._prepare(X[i:i + batch]).to(self.device_)
                out.append(reconstruction_score(x, G(x)))
        G.train(was_training)
        return torch.cat(out).double().cpu().numpy()

    # -- the state a checkpoint holds (see fedsieve.shared.detectors.persist) ----------------
    def _state_tensors(self) -> dict[str, torch.Tensor]:
        """The generator's weights and batch-norm statistics under ``generator.``."""
        return {f"generator.{k}": v.detach().clone()
                for k, v in self.generator_.state_dict().items()}

    def _state_header(self) -> dict[str, Any]:
        return {**super()._state_header(), "net": self.net_,
                "n_d_resets": int(self.n_d_resets_)}

    def _restore_state(self, tensors: dict[str, torch.Tensor], header: dict[str, Any]) -> None:
        super()._restore_state(tensors, header)
        self.net_ = dict(header["net"])
        self.generator_ = build_generator(self.net_)
        prefix = "generator."
        state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        try:
            self.generator_.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise ValueError(f"the weights do not fit the recorded generator: {exc}") from exc
        self.generator_.to(self.device_).eval()
        self.n_d_resets_ = int(header.get("n_d_resets", 0))
        self.image_shape_ = tuple(int(s) for s in self.net_["image_shape"])
        self.n_features_in_ = int(np.prod(self.image_shape_))
