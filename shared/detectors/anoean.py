"""AnoEAN (Gherbi et al., ACML 2019): an encoder-only adversarial network for anomaly detection.

An encoder ``E`` maps images to a small decision space; a discriminator ``D(z)`` tells draws of
``p_z = N(0, I)`` from codes. ``E`` learns to make the codes of normal images pass for
``p_z`` and to help ``D`` reject the codes of labelled anomalies (paper Eq. 1-2, Algorithm 1).
The score is the Mahalanobis distance of ``E(x)`` to the Gaussian of the normal codes (Eq. 3).
Only the encoder and that Gaussian are needed to score.
"""

from __future__ import annotations

from numbers import Integral, Real
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.utils._param_validation import Interval
from torch import nn

from fedsieve.shared.detectors.base import RoundRecorder, TorchDetector
from fedsieve.shared.detectors.bigan import SCORE_BATCH, RowSet, as_batch

__all__ = [
    "AnoEAN",
    "AnoEANEncoder",
    "latent_discriminator",
    "discriminator_loss",
    "encoder_loss",
    "mahalanobis",
]

#: Normal codes used to estimate the Mahalanobis centre and covariance (a random subset of
#: larger normal sets: 100,000 uploads need not all be encoded for a 32 x 32 covariance).
REFERENCE_CODES = 20000


class AnoEANEncoder(nn.Module):
    """The paper's MNIST encoder ``(4*2*32, 4*2*64, 4*2*128, d)``: three 4x4 stride-2
    convolutions (``width``, ``2 width``, ``4 width`` channels, LeakyReLU 0.2), then a linear
    layer to the ``z_dim`` code. Built for one image shape (C, H, W): 28 -> 14 -> 7 -> 3,
    32 -> 16 -> 8 -> 4, 64 -> 32 -> 16 -> 8.

    Parameters
    ----------
    image_shape : tuple of int
        (C, H, W) of the images, H and W at least 8.
    z_dim : int
        Dimension ``d`` of the decision space.
    width : int
        Channels of the first convolution.
    """

    def __init__(self, image_shape: tuple[int, int, int], z_dim: int, width: int) -> None:
        super().__init__()
        c, h, w = (int(s) for s in image_shape)
        layers: list[nn.Module] = []
        c_in = c
        for c_out in (width, 2 * width, 4 * width):
            layers += [nn.Conv2d(c_in, c_out, 4, 2, 1), nn.LeakyReLU(0.2)]
            c_in, h, w = c_out, h // 2, w // 2
        self.trunk = nn.Sequential(*layers, nn.Flatten())
        self.head = nn.Linear(c_in * h * w, z_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(x))


def latent_discriminator(z_dim: int) -> nn.Module:
    """The paper's discriminator ``D(z)``: a multi-layer network ``(32, 16, 1)`` (LeakyReLU
    0.2) returning the logit of "z comes from N(0, I)"."""
    return nn.Sequential(nn.Linear(z_dim, 32), nn.LeakyReLU(0.2), nn.Linear(32, 16),
                         nn.LeakyReLU(0.2), nn.Linear(16, 1))


def _neg_log_d(logits: torch.Tensor) -> torch.Tensor:
    """Mean of ``-log D`` with ``D = sigmoid(logits)`` (stable for large logits)."""
    return F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))


def _neg_log_one_minus_d(logits: torch.Tensor) -> torch.Tensor:
    """Mean of ``-log(1 - D)``."""
    return F.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits))


def discriminator_loss(d_prior: torch.Tensor, d_normal: torch.Tensor,
                       d_anomalous: torch.Tensor | None) -> torch.Tensor:
    """Paper Eq. 1 on D's logits: ``-E log D(z) - E log(1 - D(E(x_n))) - E log(1 - D(E(x_a)))``,
    each expectation a mean over its own group; the last term is dropped without anomalies."""
    loss = _neg_log_d(d_prior) + _neg_log_one_minus_d(d_normal)
    if d_anomalous is not None and d_anomalous.numel():
        loss = loss + _neg_log_one_minus_d(d_anomalous)
    return loss


def encoder_loss(d_normal: torch.Tensor, d_anomalous: torch.Tensor | None) -> torch.Tensor:
    """The encoder's loss in the paper's faster form (Sec. 3.3, Algorithm 1) on D's logits:
    ``-E log D(E(x_n)) - E log(1 - D(E(x_a)))``; the last term is dropped without anomalies."""
    loss = _neg_log_d(d_normal)
    if d_anomalous is not None and d_anomalous.numel():
        loss = loss + _neg_log_one_minus_d(d_anomalous)
    return loss


def mahalanobis(codes: np.ndarray, center: np.ndarray, precision: np.ndarray) -> np.ndarray:
    """Paper Eq. 3: ``sqrt((c - mu)^T Sigma^-1 (c - mu))`` per row of ``codes`` (float64)."""
    d = np.asarray(codes, np.float64) - center
    return np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", d, precision, d), 0.0))


class AnoEAN(TorchDetector):
    """AnoEAN: Anomaly detection by an Encoding Adversarial Network (Gherbi et al., 2019).

    An encoder projects images into a ``z_dim``-dimensional decision space; a discriminator on
    that space is trained to tell draws of ``N(0, I)`` from every code (Eq. 1) while the
    encoder makes normal codes pass for ``N(0, I)`` and anomalous codes fail (Eq. 2, in the
    paper's faster form). Training alternates ``n_critic`` discriminator steps and one encoder
    step per batch (Algorithm 1). The score of an image is the Mahalanobis distance of its
    code to the Gaussian ``N(mu, Sigma)`` of the normal codes (Eq. 3).

    Two ways to fit:

    - with ``anomalies=`` (the paper): one round; the pool (plus any trusted images) is the
      normal set and the given images are the labelled anomalies;
    - without (fedsieve's pool screening): ``self_training_rounds`` rounds. Round 0 trains the
      normal side only (the whole pool and the trusted images as normal, no anomaly terms);
      each later round takes the pool images the previous round flagged as the labelled
      anomalies (replacing, not adding to, the previous round's) and the rest of the pool plus
      the trusted images as normal, and continues training the same networks.

    Choices where the paper is silent:

    - Latent size ``z_dim=16``: the paper only says "small" and sweeps it in Fig. 8b without
      giving the MNIST value; 16 is small next to 784 pixels and keeps the 16 x 16
      covariance of Eq. 3 well estimated from a few hundred normal codes.
    - Discriminator steps ``n_critic=1`` per encoder step, on the same batch (Algorithm 1
      samples once per iteration); one step is the GAN default and was stable here.
    - Batch mix: batches of ``batch_size=200`` (the paper's size) hold labelled anomalies in
      their share of the training set (``anomaly_share=None``), which is what shuffled epochs
      over the training set give; each group's loss is its own mean (Algorithm 1's
      ``1/m_n``, ``1/m_a``), so the mix sets the noise of each term, not its weight. At least
      one anomaly per batch when there are any. Batches are drawn uniformly with replacement.
    - Learning rate: Algorithm 1 says Adam ``alpha = 0.0002, beta = 0.5`` and also "learning
      rate 10^-3"; Sec. 4.1 says ``lr = 10^-3``. The default ``lr=2e-4`` (beta1 0.5, for both
      networks) trained more stably than 1e-3 on MNIST with our small training sets.
    - Training length: a fixed ``steps`` per round instead of early stopping, which needs a
      labelled validation set the pool screening does not have.
    - Encoder activations LeakyReLU 0.2, no batch normalisation (the paper names only the
      layer sizes); the discriminator ``(32, 16, 1)`` also uses LeakyReLU 0.2.
    - ``mu`` and ``Sigma`` of Eq. 3 are the mean and covariance of the codes of the round's
      normal set (up to 20,000 of them), not of a held-out validation set: the pool has no
      spare labelled normals. The covariance gets a ridge of ``1e-6`` of its mean variance so
      that a collapsed direction cannot make it singular.
    - Self-training (not in the paper, whose method needs labelled anomalies): trusted images
      always count as normal; a round whose previous round flagged nothing trains the normal
      side only, and one that flagged the whole pool (with no trusted images) trains on the
      whole pool as normal, as round 0.

    Parameters
    ----------
    steps : int, default=1500
        Training iterations (batches) per round.
    batch_size : int, default=200
        Images per batch, normal and anomalous together (``m = m_n + m_a``).
    anomaly_share : float, optional
        Share of each batch drawn from the labelled anomalies; None: their share of the
        training set.
    n_critic : int, default=1
        Discriminator steps per encoder step (``n_D``).
    lr : float, default=2e-4
        Adam learning rate of both networks.
    beta1 : float, default=0.5
        Adam beta1 of both networks.
    z_dim : int, default=16
        Dimension ``d`` of the decision space.
    width : int, default=32
        Channels of the encoder's first convolution (the paper's 32; then 64 and 128).
    self_training_rounds : int, default=2
        Rounds when ``fit`` gets no labelled anomalies (round 0 normal side only, then
        ``self_training_rounds - 1`` rounds with the flagged images as anomalies).
    threshold_policy : {"gmm", "budget", "trusted-quantile", "contamination", "fixed"}
        Default "gmm". See :mod:`fedsieve.shared.detectors.threshold`.
    threshold_value : float, optional
        Parameter of the policy.
    random_state : int, optional, default=0
        Seeds the initial weights, the batches and the draws of ``N(0, I)``.
    device : str, default="auto"
        Where the networks train and score: ``"auto"`` (CUDA when available, else the CPU),
        ``"cpu"``, ``"cuda"``, ``"cuda:<index>"``, ``"mps"``; resolved when ``fit`` starts.

    Attributes
    ----------
    encoder_ : AnoEANEncoder
        The trained encoder ``E``, on ``device_``.
    device_ : torch.device
        The resolved ``device``.
    discriminator_ : torch.nn.Module
        The trained latent discriminator ``D(z)`` (not needed to score).
    center_ : ndarray of shape (z_dim,)
        ``mu`` of Eq. 3: mean code of the last round's normal set.
    precision_ : ndarray of shape (z_dim, z_dim)
        ``Sigma^-1`` of Eq. 3.
    labelled_anomalies_ : list of int
        Labelled anomalies each round trained with (0 in round 0 of self-training).
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
        One entry per round: threshold, flagged count, elapsed seconds, ``auc`` with
        ``y_true``.
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
        "steps": [Interval(Integral, 0, None, closed="left")],
        "batch_size": [Interval(Integral, 2, None, closed="left")],
        "anomaly_share": [Interval(Real, 0, 1, closed="neither"), None],
        "n_critic": [Interval(Integral, 1, None, closed="left")],
        "lr": [Interval(Real, 0, None, closed="neither")],
        "beta1": [Interval(Real, 0, 1, closed="left")],
        "z_dim": [Interval(Integral, 1, None, closed="left")],
        "width": [Interval(Integral, 1, None, closed="left")],
        "self_training_rounds": [Interval(Integral, 1, None, closed="left")],
    }

    def __init__(
        self,
        *,
        steps: int = 1500,
        batch_size: int = 200,
        anomaly_share: float | None = None,
        n_critic: int = 1,
        lr: float = 2e-4,
        beta1: float = 0.5,
        z_dim: int = 16,
        width: int = 32,
        self_training_rounds: int = 2,
        threshold_policy: str = "gmm",
        threshold_value: float | None = None,
        random_state: int | None = 0,
        device: str = "auto",
    ) -> None:
        self.device = device
        self.steps = steps
        self.batch_size = batch_size
        self.anomaly_share = anomaly_share
        self.n_critic = n_critic
        self.lr = lr
        self.beta1 = beta1
        self.z_dim = z_dim
        self.width = width
        self.self_training_rounds = self_training_rounds
        self.threshold_policy = threshold_policy
        self.threshold_value = threshold_value
        self.random_state = random_state

    # -- fit ---------------------------------------------------------------------------------
    def _fit(self, X: np.ndarray, trusted: np.ndarray | None, rounds: RoundRecorder, *,
             anomalies: np.ndarray | None = None) -> None:
        seed = 0 if self.random_state is None else int(self.random_state)
        gen = torch.Generator().manual_seed(seed)
        with torch.random.fork_rng(devices=[]):  # leave the caller's global RNG alone
            torch.manual_seed(seed)
            self.encoder_ = AnoEANEncoder(X.shape[1:], int(self.z_dim), int(self.width))
            self.discriminator_ = latent_discriminator(int(self.z_dim))
        # Initialised on the CPU (the same weights everywhere), then moved.
        self.encoder_.to(self.device_)
        self.discriminator_.to(self.device_)
        betas = (float(self.beta1), 0.999)
        opts = (torch.optim.Adam(self.discriminator_.parameters(), float(self.lr), betas=betas),
                torch.optim.Adam(self.encoder_.parameters(), float(self.lr), betas=betas))
        self.labelled_anomalies_: list[int] = []
        everyone = np.arange(len(X))
        if anomalies is not None:  # the paper: the pool is the normal set
            normal = RowSet(X, everyone, trusted)
            known = RowSet(anomalies, np.arange(len(anomalies)))
            self._train_round(normal, known, gen, opts)
            rounds.end_round(self._score(X))
            return
        labels = np.zeros(len(X), np.int64)
        for r in range(int(self.self_training_rounds)):
            flagged = np.flatnonzero(labels) if r else everyone[:0]
            kept = np.flatnonzero(labels == 0)
            if len(kept) == 0 and trusted is None:
                kept, flagged = everyone, everyone[:0]
            normal = RowSet(X, kept, trusted)
            self._train_round(normal, RowSet(X, flagged), gen, opts)
            labels, _ = rounds.end_round(self._score(X))

    def _train_round(self, normal: RowSet, anomalous: RowSet, gen: torch.Generator,
                     opts: tuple[torch.optim.Adam, torch.optim.Adam]) -> None:
        """``steps`` iterations of Algorithm 1, then the normal codes' Gaussian (Eq. 3)."""
        m = int(self.batch_size)
        n_a = 0
        if len(anomalous):
            share = (len(anomalous) / (len(normal) + len(anomalous))
                     if self.anomaly_share is None else float(self.anomaly_share))
            n_a = min(m - 1, max(1, round(m * share)))
        n_n = m - n_a
        self.labelled_anomalies_.append(len(anomalous))
        opt_d, opt_e = opts
        enc, disc = self.encoder_, self.discriminator_
        enc.train()
        dev = self.device_
        for _ in range(int(self.steps)):
            # Drawn on the CPU generator, then moved: the same draws on every device.
            xn = normal[torch.randint(len(normal), (n_n,), generator=gen).numpy()].to(dev)
            xa = (anomalous[torch.randint(len(anomalous), (n_a,), generator=gen).numpy()]
                  .to(dev) if n_a else None)
            z = torch.randn(m, int(self.z_dim), generator=gen).to(dev)
            # Discriminator steps (Eq. 1) with the encoder frozen.
            with torch.no_grad():
                zn = enc(xn)
                za = enc(xa) if n_a else None
            for _ in range(int(self.n_critic)):
                loss_d = discriminator_loss(disc(z), disc(zn), disc(za) if n_a else None)
                opt_d.zero_grad(set_to_none=True)
                loss_d.backward()
                opt_d.step()
            # Encoder step (Eq. 2, faster form) with the discriminator frozen: only opt_e steps,
            # and D's gradients are cleared before its next step.
            loss_e = encoder_loss(disc(enc(xn)), disc(enc(xa)) if n_a else None)
            opt_e.zero_grad(set_to_none=True)
            loss_e.backward()
            opt_e.step()
        enc.eval()
        self._fit_gaussian(normal, gen)

    def _fit_gaussian(self, normal: RowSet, gen: torch.Generator) -> None:
        rows = np.arange(len(normal))
        if len(rows) > REFERENCE_CODES:
            rows = np.sort(torch.randperm(len(rows), generator=gen)[:REFERENCE_CODES].numpy())
        codes = self._encode(normal[rows[i:i + SCORE_BATCH]]
                             for i in range(0, len(rows), SCORE_BATCH))
        self.center_ = codes.mean(axis=0)
        cov = np.atleast_2d(np.cov(codes, rowvar=False)) if len(codes) > 1 else \
            np.eye(codes.shape[1])
        cov = cov + np.eye(len(cov)) * 1e-6 * max(float(np.trace(cov)) / len(cov), 1e-12)
        self.precision_ = np.linalg.pinv(cov, hermitian=True)

    # -- score -------------------------------------------------------------------------------
    @torch.no_grad()
    def _encode(self, batches: Any) -> np.ndarray:
        parts = [self.encoder_(x.to(self.device_)).double().cpu().numpy() for x in batches]
        return np.concatenate(parts) if parts else np.empty((0, int(self.z_dim)))

    def _score(self, X: np.ndarray) -> np.ndarray:
        codes = self._encode(as_batch(X[i:i + SCORE_BATCH]) for i in range(0, len(X), SCORE_BATCH))
        return mahalanobis(codes, self.center_, self.precision_)

    # -- the state a checkpoint holds (see fedsieve.shared.detectors.persist) ----------------
    def _state_tensors(self) -> dict[str, torch.Tensor]:
        """Encoder and discriminator weights, and the Gaussian of Eq. 3."""
        out = {f"encoder.{k}": v.detach().clone() for k, v in self.encoder_.state_dict().items()}
        out.update({f"discriminator.{k}": v.detach().clone()
                    for k, v in self.discriminator_.state_dict().items()})
        out["center"] = torch.from_numpy(np.asarray(self.center_, np.float64).copy())
        out["precision"] = torch.from_numpy(np.asarray(self.precision_, np.float64).copy())
        return out

    def _state_header(self) -> dict[str, Any]:
        return {**super()._state_header(),
                "anoean": {"image_shape": list(self.image_shape_), "z_dim": int(self.z_dim),
                           "width": int(self.width),
                           "labelled_anomalies": list(self.labelled_anomalies_)}}

    def _restore_state(self, tensors: dict[str, torch.Tensor], header: dict[str, Any]) -> None:
        super()._restore_state(tensors, header)
        net = header["anoean"]
        shape = tuple(int(s) for s in net["image_shape"])
        self.encoder_ = AnoEANEncoder(shape, int(net["z_dim"]), int(net["width"]))
        self.discriminator_ = latent_discriminator(int(net["z_dim"]))
        for prefix, module in (("encoder.", self.encoder_),
                               ("discriminator.", self.discriminator_)):
            try:
                module.load_state_dict({k[len(prefix):]: v for k, v in tensors.items()
                                        if k.startswith(prefix)})
            except RuntimeError as exc:  # missing or mis-shaped weights
                raise ValueError(f"the {prefix[:-1]} weights do not fit the header: {exc}") \
                    from exc
            module.to(self.device_).eval()
        self.center_ = tensors["center"].double().numpy()
        self.precision_ = tensors["precision"].double().numpy()
        self.labelled_anomalies_ = [int(n) for n in net.get("labelled_anomalies", [])]
        self.image_shape_ = shape
        self.n_features_in_ = int(np.prod(shape))
