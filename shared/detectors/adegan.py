"""ADe-GAN (Chai et al., ICASSP 2021): a GAN with a pattern-clustering extractor, scored by
reconstruction error and pattern confidence together.

The generator ``G(z_c, z_n)`` takes a one-hot pattern ``z_c`` (one of ``n_c`` patterns) and a
Gaussian feature ``z_n``; the extractor ``E(x) = (z_c_hat, z_n_hat)`` learns to recover both
(a self-supervised clustering task), is pushed towards "no pattern" on interpolations between
patterns, and closes the loop ``x -> G(E(x))`` on the normal data. An image is anomalous when
it reconstructs badly or when E cannot tell which learned pattern it belongs to (paper eq. 11).
"""

from __future__ import annotations

from numbers import Integral, Real
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import norm
from sklearn.utils._param_validation import Interval, StrOptions
from torch import nn

from fedsieve.shared.detectors.base import TorchDetector
from fedsieve.shared.detectors.bigan import SCORE_BATCH, as_batch
from fedsieve.shared.detectors.checkpoint import CheckpointError
from fedsieve.shared.detectors.networks import Encoder, Generator, NetConfig

__all__ = [
    "ADeGAN",
    "ADeGANNets",
    "abnormality_score",
    "discriminator_loss",
    "generator_loss",
    "interpolation_loss",
    "reconstruction_loss",
    "self_supervised_loss",
]

#: Inside the square roots of the L2 norms, so that their gradient is finite at zero.
_EPS = 1e-12


# -- the networks ---------------------------------------------------------------------------
class ADeGANNets(nn.Module):
    """G, D and E of ADe-GAN, built for one image shape from the shared conv blocks.

    ``G``: (z_c, z_n) concatenated, ``n_patterns + noise_dim`` values -> image in [0, 1].
    ``D``: image -> one logit (the shared conv trunk and a linear head; image only, no latent).
    ``E``: image -> ``n_patterns`` pattern logits followed by the ``noise_dim`` feature values.

    Parameters
    ----------
    n_patterns, noise_dim, width : int
        Number of patterns ``n_c``, feature dimension ``d``, channels of the first convolution.
    image_shape : tuple of int
        (C, H, W).
    """

    def __init__(self, n_patterns: int, noise_dim: int, width: int,
                 image_shape: tuple[int, int, int]) -> None:
        super().__init__()
        self.n_patterns = int(n_patterns)
        self.noise_dim = int(noise_dim)
        self.width = int(width)
        self.image_shape = tuple(int(s) for s in image_shape)
        latent = self.n_patterns + self.noise_dim
        self.G = Generator(NetConfig(latent, self.width, 1, self.image_shape))
        self.D = Encoder(NetConfig(1, self.width, 1, self.image_shape))
        self.E = Encoder(NetConfig(latent, self.width, 1, self.image_shape))

    def sizes(self) -> dict[str, Any]:
        """The constructor's arguments, JSON-able (a checkpoint rebuilds the nets from them)."""
        return {"n_patterns": self.n_patterns, "noise_dim": self.noise_dim,
                "width": self.width, "image_shape": list(self.image_shape)}

    def generate(self, zc: torch.Tensor, zn: torch.Tensor) -> torch.Tensor:
        """``G(z_c, z_n)``."""
        return self.G(torch.cat([zc, zn], dim=1))

    def extract(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``E(x)``: pattern logits (N, n_patterns) and features (N, noise_dim)."""
        out = self.E(x)
        return out[:, :self.n_patterns], out[:, self.n_patterns:]

    def reconstruct(self, x: torch.Tensor, one_hot: bool = True
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``G(E(x))`` and E's pattern probabilities.

        With ``one_hot`` G gets E's most likely pattern as a one-hot code (the only codes G is
        trained on); otherwise E's softmax probabilities (differentiable in the pattern head).
        """
        logits, zn = self.extract(x)
        probs = logits.softmax(dim=1)
        code = F.one_hot(probs.argmax(dim=1), self.n_patterns).to(probs.dtype) if one_hot \
            else probs
        return self.generate(code, zn), probs


# -- the losses (paper eqs. 1, 3, 6, 7) and the score (eqs. 9-11) ----------------------------
def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """D's side of eq. (1): ``-mean log D(x) - mean log(1 - D(G(z)))`` (D maximises L_adv)."""
    return (F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
            + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits)))


def generator_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """G's side of eq. (1) in its non-saturating form: ``-mean log D(G(z))``."""
    return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))


def _l2(diff: torch.Tensor) -> torch.Tensor:
    """Euclidean norm of each row of ``diff`` (flattened), shape (N,)."""
    return torch.sqrt(diff.flatten(1).pow(2).sum(dim=1) + _EPS)


def self_supervised_loss(logits: torch.Tensor, zn_hat: torch.Tensor, zc: torch.Tensor,
                         zn: torch.Tensor) -> torch.Tensor:
    """Eq. (3): ``mean[H(z_c_hat, z_c) + ||z_n_hat - z_n||_2]`` on generated images.

    ``zc`` holds the pattern probabilities the images were generated from (one-hot rows);
    ``logits`` and ``zn_hat`` are E's outputs on those images.
    """
    ce = -(zc * logits.log_softmax(dim=1)).sum(dim=1)
    return (ce + _l2(zn_hat - zn)).mean()


def interpolation_loss(logits: torch.Tensor) -> torch.Tensor:
    """Eq. (6): ``mean sum_k -(1/n_c) log z_c_hat_k`` on interpolations between patterns:
    cross-entropy to the uniform pattern, smallest (``log n_c``) when E sees no pattern."""
    return -logits.log_softmax(dim=1).mean(dim=1).mean()


def reconstruction_loss(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """Eq. (7): ``mean ||x - G(E(x))||_2`` over the images (Euclidean norm per image)."""
    return _l2(x - x_hat).mean()


def abnormality_score(recon_error: np.ndarray, max_prob: np.ndarray, recon_mean: float,
                      recon_std: float, n_patterns: int) -> np.ndarray:
    """Eq. (11): ``A = -(1/n_c) p + (1 - p) q``, higher = more anomalous.

    ``p = Phi((e - mean) / std)`` (eq. 9): the reconstruction error ``e`` as the probability
    under the normal distribution fitted to the training errors that a normal image
    reconstructs better. ``q = -max_k P(c_k | x)`` (eq. 10). ``A`` runs from -1 (reconstructs
    like the training data, one confident pattern) to ``-1/n_c`` (fails either test).
    """
    p = norm.cdf((np.asarray(recon_error, np.float64) - recon_mean) / recon_std)
    q = -np.asarray(max_prob, np.float64)
    return -p / n_patterns + (1.0 - p) * q


# -- the latent draws ---------------------------------------------------------------------------
def _one_hot(k: torch.Tensor, n: int) -> torch.Tensor:
    return F.one_hot(k, n).to(torch.float32)


def _same_pattern(n: int, n_patterns: int, noise_dim: int, std: float,
                  gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` latents: uniform patterns; the first half plain ``z_n ~ N(0, std^2)``, the second
    half interpolations ``l z_n + (1 - l) z_n'`` of two draws of the same pattern (eqs. 4-5),
    ``l ~ U(0, 1)``."""
    zc = _one_hot(torch.randint(n_patterns, (n,), generator=gen), n_patterns)
    zn = torch.randn(n, noise_dim, generator=gen) * std
    other = torch.randn(n, noise_dim, generator=gen) * std
    lam = torch.rand(n, 1, generator=gen)
    mixed = lam * zn + (1.0 - lam) * other
    half = n // 2
    return zc, torch.cat([zn[:half], mixed[half:]])


def _cross_pattern(n: int, n_patterns: int, noise_dim: int, std: float,
                   gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` interpolations between two latents of different patterns (Definition 3.1),
    ``l ~ U(0.25, 0.75)``."""
    k1 = torch.randint(n_patterns, (n,), generator=gen)
    k2 = (k1 + torch.randint(1, n_patterns, (n,), generator=gen)) % n_patterns
    lam = 0.25 + 0.5 * torch.rand(n, 1, generator=gen)
    zc = lam * _one_hot(k1, n_patterns) + (1.0 - lam) * _one_hot(k2, n_patterns)
    zn = (lam * torch.randn(n, noise_dim, generator=gen)
          + (1.0 - lam) * torch.randn(n, noise_dim, generator=gen)) * std
    return zc, zn


# -- the detector -------------------------------------------------------------------------------
class ADeGAN(TorchDetector):
    """ADe-GAN: anomaly detection with a pattern-related self-supervised task (Chai et al.).

    Trains on the pool ``X`` as normal data (as EGBAD does; trusted images, when given, only
    inform the threshold). Every step runs the paper's two stages on one batch: stage 1
    updates D, then G, on the adversarial loss (eq. 1); stage 2 updates G and E on
    ``alpha L_ip + beta L_sl + gamma L_recon`` (eq. 8). The score is eq. (11).

    Choices where the paper is silent
    ---------------------------------
    - **The stages alternate every step** (D, G, then G+E on each batch), not one after the
      other: Sec. 3.1.1 says G learns the patterns "by adversarial learning and [the]
      self-supervised task together", which a GAN frozen before stage 2 cannot do. Each stage
      has its own Adam (``lr``, betas (0.5, 0.999), the paper's 2e-4 by default).
    - **The "normal distribution" of eq. (9)** is a normal fitted (mean, standard deviation) to
      the reconstruction errors of the fitted pool, and ``log p`` is its CDF at the error: a
      value in [0, 1] that eq. (11) can weigh against the pattern confidence, so that ``A``
      goes from -1 (normal) to ``-1/n_c`` (bad reconstruction or no pattern). A density would
      not be bounded and would rank large errors as normal.
    - **Eq. (10)** reads ``-max_k P(c_k | x)`` (the paper writes argmax but means the largest
      probability, "close to 1" for normal and ``1/n_c`` for abnormal images).
    - **Interpolation weights**: between two latents (DCGAN's interpolation, the paper's
      ref. [16]). Within a pattern ``l ~ U(0, 1)`` (any convex weight keeps the pattern, eqs.
      4-5) for half of every generated batch, which D sees and on which L_sl is computed.
      Between two different patterns ``l ~ U(0.25, 0.75)`` (``batch_size // 2`` per step):
      near 0 or 1 the mix is still one pattern and eq. (6) would contradict eq. (3).
    - **G(E(x))** feeds G the one-hot code of E's most likely pattern
      (``pattern_code="one-hot"``), so L_recon trains E's feature head and G, not the pattern
      head. Measured (digit 1 held out, 2,500 steps): with E's softmax probabilities instead
      (``"soft"``, differentiable in the pattern head) G learns to read the soft code as a
      continuous channel, E's largest probability on normal test digits falls from 0.58 to
      0.21 and the confidence part of the score drops to AUC 0.25 (0.61 with one-hot).
    - **Norms**: ``||.||_2`` in eqs. (3) and (7) is the Euclidean norm per sample (not squared),
      averaged over the batch. G's adversarial loss is the non-saturating ``-log D(G(z))``.
    - **Latent**: ``z_n`` of ``noise_dim = 30`` values with ``sigma = 0.1``, as ClusterGAN
      (Mukherjee et al., 2019), whose one-hot + Gaussian latent and extractor ADe-GAN adopts.
    - **Networks**: fedsieve's conv blocks (:mod:`fedsieve.shared.detectors.networks`, no batch
      normalisation) sized from the image shape; D is image-only. The paper gives none.
    - **Training length**: ``steps`` batches of ``batch_size`` uniform draws from the pool;
      the paper's epoch count is not given. With 3,600 training digits instead of 54,000 the
      clustering sees fewer writing styles per pattern.

    Parameters
    ----------
    steps : int, default=2500
        Training steps (each: one D, one G and one G+E update on one batch).
    batch_size : int, default=64
        Real images per step (and latents per generated batch).
    n_patterns : int, default=10
        Number of patterns ``n_c`` (the paper's 10).
    noise_dim : int, default=30
        Dimension ``d`` of the feature variable ``z_n``.
    noise_std : float, default=0.1
        Standard deviation ``sigma`` of ``z_n``.
    alpha, beta, gamma : float, default=1.0, 1.0, 10.0
        Weights of L_ip, L_sl and L_recon in eq. (8) (the paper's MNIST setting).
    lr : float, default=2e-4
        Adam learning rate of every stage.
    pattern_code : {"one-hot", "soft"}, default="one-hot"
        The pattern code G gets in ``G(E(x))``: E's most likely pattern, one-hot, or E's
        softmax probabilities (see above).
    width : int, default=16
        Channels of the first convolution of G, D and E (fedsieve's narrow networks: one
        step takes about 0.2 s and 2,500 steps under 10 minutes on one CPU thread).
    threshold_policy : {"gmm", "budget", "trusted-quantile", "contamination", "fixed"}
        Default "gmm". See :mod:`fedsieve.shared.detectors.threshold`. Eq. (11) saturates
        at ``-1/n_c`` for every image whose error lies a few standard deviations above the
        mean, so the worst-reconstructed normal images tie with the anomalies there; on a
        polluted pool the mixture then often finds no anomalous component above the trusted
        images and flags nothing (``benchmarks/results/pollution-grid``). "contamination"
        with a known rate flags by rank instead.
    threshold_value : float, optional
        Parameter of the policy.
    random_state : int, optional, default=0
        Seeds the initialisation, the batches and every latent and interpolation draw.
    device : str, default="auto"
        Where the networks train and score: ``"auto"`` (CUDA when available, else the CPU),
        ``"cpu"``, ``"cuda"``, ``"cuda:<index>"``, ``"mps"``; resolved when ``fit`` starts.
        The draws are made on the CPU and moved, so they do not depend on it.

    Attributes
    ----------
    nets_ : ADeGANNets
        The trained G, D and E (in eval mode), on ``device_``.
    device_ : torch.device
        The resolved ``device``.
    recon_mean_, recon_std_ : float
        Mean and standard deviation of the pool's reconstruction errors ``||x - G(E(x))||_2``:
        the normal distribution of eq. (9).
    decision_scores_ : ndarray of shape (n_pool,)
        Scores of the pool (float64, higher = more anomalous, in [-1, -1/n_c]).
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
        **TorchDetector._parameter_constraints,
        "steps": [Interval(Integral, 0, None, closed="left")],
        "batch_size": [Interval(Integral, 2, None, closed="left")],
        "n_patterns": [Interval(Integral, 2, None, closed="left")],
        "noise_dim": [Interval(Integral, 1, None, closed="left")],
        "noise_std": [Interval(Real, 0, None, closed="neither")],
        "alpha": [Interval(Real, 0, None, closed="left")],
        "beta": [Interval(Real, 0, None, closed="left")],
        "gamma": [Interval(Real, 0, None, closed="left")],
        "lr": [Interval(Real, 0, None, closed="neither")],
        "pattern_code": [StrOptions({"one-hot", "soft"})],
        "width": [Interval(Integral, 1, None, closed="left")],
    }

    def __init__(
        self,
        *,
        steps: int = 2500,
        batch_size: int = 64,
        n_patterns: int = 10,
        noise_dim: int = 30,
        noise_std: float = 0.1,
        alpha: float = 1.0,
        beta: float = 1.0,
        gamma: float = 10.0,
        lr: float = 2e-4,
        pattern_code: str = "one-hot",
        width: int = 16,
        threshold_policy: str = "gmm",
        threshold_value: float | None = None,
        random_state: int | None = 0,
        device: str = "auto",
    ) -> None:
        self.device = device
        self.steps = steps
        self.batch_size = batch_size
        self.n_patterns = n_patterns
        self.noise_dim = noise_dim
        self.noise_std = noise_std
        self.alpha = alpha
        self.beta = beta
        self.gamma = gamma
        self.lr = lr
        self.pattern_code = pattern_code
        self.width = width
        self.threshold_policy = threshold_policy
        self.threshold_value = threshold_value
        self.random_state = random_state

    @property
    def _one_hot(self) -> bool:
        return self.pattern_code == "one-hot"

    # -- training ---------------------------------------------------------------------------
    def _train(self, X: np.ndarray, trusted: np.ndarray | None) -> None:
        seed = 0 if self.random_state is None else int(self.random_state)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)  # initialisation depends on the seed only
            nets = ADeGANNets(self.n_patterns, self.noise_dim, self.width, X.shape[1:])
        nets = nets.to(self.device_)
        gen = torch.Generator().manual_seed(seed * 1000 + 1)  # CPU: the same draws anywhere
        data = as_batch(X)  # the pool stays on the CPU; each batch is moved
        betas = (0.5, 0.999)
        opt_d = torch.optim.Adam(nets.D.parameters(), lr=self.lr, betas=betas)
        opt_g = torch.optim.Adam(nets.G.parameters(), lr=self.lr, betas=betas)
        opt_ge = torch.optim.Adam([*nets.G.parameters(), *nets.E.parameters()], lr=self.lr,
                                  betas=betas)
        nets.train()
        for _ in range(int(self.steps)):
            self._step(nets, data, gen, opt_d, opt_g, opt_ge)
        nets.eval()
        self.nets_ = nets
        errors, _ = self._errors_and_confidence(X)
        self.recon_mean_ = float(errors.mean())
        # A floor keeps eq. (9) defined when every error is equal (e.g. a constant pool).
        self.recon_std_ = float(max(errors.std(), 1e-8))

    def _step(self, nets: ADeGANNets, data: torch.Tensor, gen: torch.Generator,
              opt_d: torch.optim.Optimizer, opt_g: torch.optim.Optimizer,
              opt_ge: torch.optim.Optimizer) -> None:
        b, k, d, std = int(self.batch_size), int(self.n_patterns), int(self.noise_dim), \
            float(self.noise_std)
        dev = self.device_
        x = data[torch.randint(len(data), (b,), generator=gen)].to(dev)
        zc, zn = (t.to(dev) for t in _same_pattern(b, k, d, std, gen))
        # Stage 1: D, then G, on eq. (1).
        fake = nets.generate(zc, zn)
        loss_d = discriminator_loss(nets.D(x).squeeze(1), nets.D(fake.detach()).squeeze(1))
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_d.step()
        loss_g = generator_loss(nets.D(fake).squeeze(1))
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
        # Stage 2: G and E on eq. (8).
        logits, zn_hat = nets.extract(nets.generate(zc, zn))
        l_sl = self_supervised_loss(logits, zn_hat, zc, zn)
        zc_ip, zn_ip = (t.to(dev) for t in _cross_pattern(max(1, b // 2), k, d, std, gen))
        l_ip = interpolation_loss(nets.extract(nets.generate(zc_ip, zn_ip))[0])
        l_recon = reconstruction_loss(x, nets.reconstruct(x, self._one_hot)[0])
        loss = self.alpha * l_ip + self.beta * l_sl + self.gamma * l_recon
        opt_ge.zero_grad(set_to_none=True)
        loss.backward()
        opt_ge.step()

    # -- scoring ----------------------------------------------------------------------------
    def _errors_and_confidence(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per image: ``||x - G(E(x))||_2`` and E's largest pattern probability."""
        errors, confidence = [], []
        with torch.no_grad():
            for i in range(0, len(X), SCORE_BATCH):
                x = as_batch(X[i:i + SCORE_BATCH], self.device_)
                x_hat, probs = self.nets_.reconstruct(x, self._one_hot)
                errors.append(_l2(x - x_hat).double().cpu().numpy())
                confidence.append(probs.max(dim=1).values.double().cpu().numpy())
        return np.concatenate(errors), np.concatenate(confidence)

    def _score(self, X: np.ndarray) -> np.ndarray:
        errors, confidence = self._errors_and_confidence(X)
        return abnormality_score(errors, confidence, self.recon_mean_, self.recon_std_,
                                 int(self.nets_.n_patterns))

    # -- the state a checkpoint holds (see fedsieve.shared.detectors.persist) ----------------
    def _state_tensors(self) -> dict[str, torch.Tensor]:
        return {f"nets.{k}": v.detach().clone() for k, v in self.nets_.state_dict().items()}

    def _state_header(self) -> dict[str, Any]:
        return {**super()._state_header(), "nets": self.nets_.sizes(),
                "recon_mean": self.recon_mean_, "recon_std": self.recon_std_}

    def _restore_state(self, tensors: dict[str, torch.Tensor], header: dict[str, Any]) -> None:
        super()._restore_state(tensors, header)
        try:
            nets = ADeGANNets(**header["nets"])
            nets.load_state_dict({k[5:]: v for k, v in tensors.items()
                                  if k.startswith("nets.")}, strict=True)
        except RuntimeError as exc:
            raise CheckpointError(f"checkpoint weights do not fit the recorded networks: "
                                  f"{exc}") from exc
        self.nets_ = nets.to(self.device_).eval()
        self.recon_mean_ = float(header["recon_mean"])
        self.recon_std_ = float(header["recon_std"])
        self.image_shape_ = nets.image_shape
        self.n_features_in_ = int(np.prod(self.image_shape_))
