"""The one adversarial training loop and the score shared by Rt-BiGAN, EGBAD and AnoGAN.

Every GAN detector here trains with :func:`train_loop`: per batch one discriminator step
(real ``(x, E(x))`` vs fake ``(G(z), z)``), then one encoder+generator step with flipped labels
(plus an optional L1 reconstruction term ``||x - G(E(x))||_1``). AnoGAN runs the same loop with
``joint=False``: no encoder, and D sees a zero latent, i.e. a plain GAN on images.

The anomaly score is ``A(x) = alpha * L_G + (1 - alpha) * L_D`` (paper eq. 2) with
``L_G = ||x - G(E(x))||_1`` and ``L_D`` the L1 feature-matching distance of D's penultimate
joint layer between ``(x, E(x))`` and ``(G(E(x)), E(x))``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from fedsieve.shared.detectors.networks import BiGAN, NetConfig
from fedsieve.shared.devices import module_device

__all__ = [
    "LoopConfig",
    "make_optimizers",
    "train_loop",
    "batch_sampler",
    "bigan_losses",
    "residual_maps",
    "latent_search_losses",
    "init_model",
    "as_batch",
    "RowSet",
]

Sampler = Callable[[torch.Generator], torch.Tensor]

#: Images per forward pass when scoring: the activations of a batch of 512 take ~100 MB, so
#: screening 100,000 uploads stays within the server's memory budget (2,000 needed ~400 MB).
SCORE_BATCH = 512


@dataclass(frozen=True)
class LoopConfig:
    """Optimisation settings of the shared adversarial loop.

    Attributes
    ----------
    batch_size : int
        Images per step (ignored by samplers that return a fixed set, e.g. the trusted images).
    lr_d, lr_eg : float
        Adam learning rates of D and of E+G.
    beta1 : float
        Adam beta1 (0.5 as in the EGBAD reference code).
    recon_weight : float
        Weight of the L1 reconstruction term in the E+G step; 0 reproduces the paper.
    joint : bool
        True: BiGAN (E, G, D(x, z)). False: plain GAN (G, D(x, 0)) for AnoGAN.
    """

    batch_size: int = 32
    lr_d: float = 2e-4
    lr_eg: float = 1e-3
    beta1: float = 0.5
    recon_weight: float = 0.0
    joint: bool = True

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def as_batch(X: np.ndarray, device: torch.device | None = None) -> torch.Tensor:
    """float32 (N, C, H, W) images -> an (N, C, H, W) tensor of the same values (no scaling)
    on ``device`` (the CPU when None); (N, H, W) is taken as grey (C = 1).

    A copy, so the array may be read-only; the images must already be validated floats in
    [0, 1] (:func:`fedsieve.shared.data.images.check_images`).
    """
    out = torch.from_numpy(np.array(X, dtype=np.float32, copy=True))
    out = out.unsqueeze(1) if out.ndim == 3 else out
    return out if device is None else out.to(device)


def init_model(net: NetConfig, seed: int | None, device: torch.device | None = None) -> BiGAN:
    """A freshly initialised BiGAN on ``device`` (the CPU when None); the initialisation
    depends only on ``seed`` (drawn on the CPU, then moved: the same weights everywhere)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0 if seed is None else int(seed))
        model = BiGAN(net)
    return model if device is None else model.to(device)


def make_optimizers(model: BiGAN, cfg: LoopConfig) -> tuple[torch.optim.Adam, torch.optim.Adam]:
    """Adam for D and Adam for E+G (G only when ``cfg.joint`` is False)."""
    betas = (cfg.beta1, 0.999)
    gen_params = list(model.G.parameters())
    if cfg.joint:
        gen_params += list(model.E.parameters())
    return (
        torch.optim.Adam(model.D.parameters(), lr=cfg.lr_d, betas=betas),
        torch.optim.Adam(gen_params, lr=cfg.lr_eg, betas=betas),
    )


class RowSet:
    """Some rows of a large image array, followed by a few more images, gathered on demand.

    Self-training draws batches from "the pseudo-normal part of the pool plus the trusted images"; a
    RowSet stands for that set without copying the pool, so 100,000 uploads stay one float32
    array while the detector trains and scores.

    Parameters
    ----------
    pool : numpy.ndarray
        float32 (N, C, H, W).
    rows : numpy.ndarray
        Indices into ``pool`` of the rows that belong to the set, in order.
    extra : numpy.ndarray, optional
        float32 (M, C, H, W) images appended after the pool rows (the trusted images).
    """

    def __init__(self, pool: np.ndarray, rows: np.ndarray, extra: np.ndarray | None = None):
        self.pool = pool
        self.rows = np.asarray(rows, dtype=np.int64)
        self.extra = np.empty((0, *pool.shape[1:]), np.float32) if extra is None else extra

    def __len__(self) -> int:
        return len(self.rows) + len(self.extra)

    def __getitem__(self, index: torch.Tensor | np.ndarray) -> torch.Tensor:
        """The images at positions ``index`` as a (B, C, H, W) tensor."""
        k = np.asarray(index, dtype=np.int64)
        in_pool = k < len(self.rows)
        out = np.empty((len(k), *self.pool.shape[1:]), np.float32)
        out[in_pool] = self.pool[self.rows[k[in_pool]]]
        out[~in_pool] = self.extra[k[~in_pool] - len(self.rows)]
        return torch.from_numpy(out)

    def chunks(self, size: int):
        """Consecutive (B, C, H, W) tensors of at most ``size`` images, in order."""
        for start in range(0, len(self), size):
            yield self[np.arange(start, min(start + size, len(self)))]


def batch_sampler(
    data: torch.Tensor | RowSet,
    batch_size: int,
    anchors: torch.Tensor | None = None,
    anchor_fraction: float = 0.25,
) -> Sampler:
    """Uniform mini-batches from ``data``; with ``anchors``, a fixed share of every batch is
    drawn from them (the trusted images keep defining "normal" in every self-training step)."""
    n_anchor = 0 if anchors is None else max(1, round(batch_size * anchor_fraction))
    n_data = batch_size - n_anchor

    def sample(gen: torch.Generator) -> torch.Tensor:
        parts = []
        if n_data > 0 and len(data):
            parts.append(data[torch.randint(len(data), (n_data,), generator=gen)])
        if n_anchor:
            parts.append(anchors[torch.randint(len(anchors), (n_anchor,), generator=gen)])
        return torch.cat(parts)

    return sample


def _bce(logits: torch.Tensor, target: float) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, target))


def train_loop(
    model: BiGAN,
    sample: Sampler,
    steps: int,
    cfg: LoopConfig,
    gen: torch.Generator,
    optimizers: tuple[torch.optim.Adam, torch.optim.Adam] | None = None,
    on_step: Callable[[int, float, float], None] | None = None,
) -> tuple[torch.optim.Adam, torch.optim.Adam]:
    """Run ``steps`` adversarial steps (one D step, then one E+G step, per batch).

    Parameters
    ----------
    model : BiGAN
        Trained in place, on the device its parameters live on.
    sample : callable
        ``sample(gen) -> (B, C, H, W)`` tensor of real images (on any device: batches are
        moved to the model's).
    steps : int
        Number of batches.
    cfg : LoopConfig
        Learning rates, reconstruction weight, joint (BiGAN) or image-only (GAN) mode.
    gen : torch.Generator
        Source of every random number of the loop (batches and latent draws): a CPU
        generator whatever the model's device, so a seed draws the same numbers everywhere.
    optimizers : (Adam, Adam), optional
        Optimisers of D and E+G to continue with; fresh ones are made when omitted.
    on_step : callable, optional
        ``on_step(step, loss_d, loss_eg)`` after each step (progress bars, logging).

    Returns
    -------
    (Adam, Adam)
        The optimisers, so that a caller can continue training with their state.
    """
    opt_d, opt_eg = optimizers or make_optimizers(model, cfg)
    model.train()
    z_dim = model.cfg.z_dim
    device = module_device(model)
    for step in range(steps):
        x = sample(gen).to(device)
        z = torch.randn(len(x), z_dim, generator=gen).to(device)
        if cfg.joint:
            ex = model.E(x)
            z_real = ex
        else:
            ex = None
            z_real = torch.zeros_like(z)
        z_fake = z if cfg.joint else torch.zeros_like(z)
        gx = model.G(z)

        # D step: increase D(x, E(x)), decrease D(G(z), z).
        real_logit, _ = model.D(x, z_real.detach())
        fake_logit, _ = model.D(gx.detach(), z_fake)
        loss_d = _bce(real_logit, 1.0) + _bce(fake_logit, 0.0)
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_d.step()

        # E+G step: the opposite labels (the BiGAN/EGBAD formulation).
        fake_logit, _ = model.D(gx, z_fake)
        loss_eg = _bce(fake_logit, 1.0)
        if cfg.joint:
            real_logit, _ = model.D(x, ex)
            loss_eg = loss_eg + _bce(real_logit, 0.0)
            if cfg.recon_weight > 0:
                loss_eg = loss_eg + cfg.recon_weight * (x - model.G(ex)).abs().mean()
        opt_eg.zero_grad(set_to_none=True)
        loss_eg.backward()
        opt_eg.step()
        if on_step is not None:
            on_step(step, float(loss_d), float(loss_eg))
    model.eval()
    return opt_d, opt_eg


def local_residual(residual: torch.Tensor, window: int) -> torch.Tensor:
    """Largest mean of ``residual`` (B, C, H, W), summed over channels, over any ``window`` x
    ``window`` patch."""
    return F.avg_pool2d(residual.sum(1, keepdim=True), window, stride=1).flatten(1).max(1).values


@torch.no_grad()
def bigan_losses(
    model: BiGAN,
    X: np.ndarray,
    pixel_weight: torch.Tensor | None = None,
    batch_size: int = SCORE_BATCH,
    local_window: int = 0,
) -> tuple[np.ndarray, ...]:
    """Per-image ``L_G`` and ``L_D`` of a BiGAN (float64 arrays of shape (N,)).

    ``pixel_weight`` (C, H, W), when given, weights the L1 reconstruction residual per pixel.
    With ``local_window`` > 0 a third array follows: the largest mean unweighted residual over
    any ``local_window`` x ``local_window`` patch (the weights adapt to the pseudo-normal set,
    so a patch the pollution carries everywhere would be weighted away).
    """
    model.eval()
    device = module_device(model)
    if pixel_weight is not None:
        pixel_weight = pixel_weight.to(device)
    lg, ld, loc = [], [], []
    for i in range(0, len(X), batch_size):
        x = as_batch(X[i : i + batch_size], device)
        z = model.E(x)
        r = model.G(z)
        res = (x - r).abs()
        if local_window:
            loc.append(local_residual(res, local_window))
        if pixel_weight is not None:
            res = res * pixel_weight
        lg.append(res.flatten(1).sum(1))
        ld.append((model.D.features(x, z) - model.D.features(r, z)).abs().sum(1))
    out = [_numpy(lg), _numpy(ld)]
    if local_window:
        out.append(_numpy(loc))
    return tuple(out)


def _numpy(parts: list[torch.Tensor]) -> np.ndarray:
    """Per-batch score tensors (on any device) -> one float64 numpy array."""
    return torch.cat(parts).double().cpu().numpy()


@torch.no_grad()
def residual_maps(
    model: BiGAN,
    X: np.ndarray,
    pixel_weight: torch.Tensor | None = None,
    batch_size: int = SCORE_BATCH,
) -> np.ndarray:
    """Per-pixel ``|x - G(E(x))|`` (times ``pixel_weight`` when given): the ``L_G`` part of
    the score before it is summed over pixels, summed over channels: float32 of shape
    (N, H, W)."""
    model.eval()
    device = module_device(model)
    if pixel_weight is not None:
        pixel_weight = pixel_weight.to(device)
    maps = []
    for i in range(0, len(X), batch_size):
        x = as_batch(X[i : i + batch_size], device)
        res = (x - model.G(model.E(x))).abs()
        if pixel_weight is not None:
            res = res * pixel_weight
        maps.append(res.sum(1))
    return torch.cat(maps).cpu().numpy() if maps else np.empty((0, *X.shape[-2:]), np.float32)


def latent_search_losses(
    model: BiGAN,
    X: np.ndarray,
    steps: int,
    lr: float,
    alpha: float,
    gen: torch.Generator,
    batch_size: int = 1000,
) -> tuple[np.ndarray, np.ndarray]:
    """AnoGAN scoring: per image, search ``z`` minimising ``alpha*L_G + (1-alpha)*L_D`` of
    ``G(z)`` by Adam (batched, one independent ``z`` per image), then report both losses."""
    model.eval()
    device = module_device(model)
    for p in model.parameters():
        p.requires_grad_(False)
    lg, ld = [], []
    try:
        for i in range(0, len(X), batch_size):
            x = as_batch(X[i : i + batch_size], device)
            zero = torch.zeros(len(x), model.cfg.z_dim, device=device)
            fx = model.D.features(x, zero)
            # Drawn on the CPU generator, then moved: the leaf that Adam updates is the
            # moved tensor.
            z = torch.randn(len(x), model.cfg.z_dim, generator=gen).to(device)
            z.requires_grad_(True)
            opt = torch.optim.Adam([z], lr=lr)
            for _ in range(steps):
                r = model.G(z)
                loss_g = (x - r).abs().flatten(1).sum(1)
                loss_d = (fx - model.D.features(r, zero)).abs().sum(1)
                loss = (alpha * loss_g + (1 - alpha) * loss_d).sum()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            with torch.no_grad():
                r = model.G(z)
                lg.append((x - r).abs().flatten(1).sum(1))
                ld.append((fx - model.D.features(r, zero)).abs().sum(1))
    finally:
        for p in model.parameters():
            p.requires_grad_(True)
    return _numpy(lg), _numpy(ld)
