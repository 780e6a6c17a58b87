"""Federated self-training of a GAN detector: each client trains the BiGAN on its own
pseudo-normal images, the server averages the networks (FedAvg over E, G and D).

It is the self-training of Rt-BiGAN (section V.B of the paper) with the pool split between
the clients: a client takes its images that the current detector keeps (in the first round
only their normal core, as ``Training.core_width`` does in a fit), runs a few adversarial steps on
them from the shipped weights, and returns the weights, how many images it trained on and
the sum of their reconstruction residuals. The server averages the weights by those counts
and rebuilds what a fit derives from the pseudo-normal set (Rt-BiGAN's per-pixel weight from
the pooled residuals, the score normalisation from the trusted images). Images never leave
the client; the detector's weights travel both ways.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from fedsieve.shared.detectors.bigan import SCORE_BATCH, RowSet, batch_sampler, train_loop
from fedsieve.shared.detectors.checkpoint import model_tensors
from fedsieve.shared.detectors.gan import GANDetector
from fedsieve.shared.devices import module_device

#: A client trains (and sends a residual sum) only with at least this many pseudo-normal
#: images: a sum of residuals over one or two images would all but show them.
MIN_LOCAL_SAMPLES = 20


@dataclass
class LocalUpdate:
    """One client's contribution to a round of federated self-training.

    Attributes
    ----------
    state : dict of str to torch.Tensor
        The BiGAN's weights after local training, named as in a checkpoint (``model.*``).
    num_normal : int
        Pseudo-normal images it trained on (the FedAvg weight; 0: the client trained on
        nothing and its state is the shipped one).
    residual_sum : torch.Tensor or None
        Sum over those images of ``|x - G(E(x))|``, shape (C, H, W) (None when
        ``num_normal`` is 0).
    """

    state: dict[str, torch.Tensor]
    num_normal: int
    residual_sum: torch.Tensor | None


def data_seed(seed: int, ids: np.ndarray) -> int:
    """A client's training seed: the round's ``seed`` joined with a digest of its sample ids.

    Flower draws node ids at random, so a seed derived from the node id would make the same
    federation train (and screen) differently in each deployment; the sample ids
    (:func:`~fedsieve.shared.data.sources.stable_ids`, from the images) are the same each
    time the same data is read.

    Parameters
    ----------
    seed : int
        The seed the server sent for this round.
    ids : numpy.ndarray
        The client's sample ids, in any order.

    Returns
    -------
    int
        A non-negative 63-bit seed.
    """
    digest = hashlib.blake2b(np.sort(np.asarray(ids, dtype=np.int64)).tobytes(),
                             digest_size=8, key=int(seed).to_bytes(16, "little", signed=True))
    return int.from_bytes(digest.digest(), "little") >> 1


def local_update(detector: GANDetector, X: np.ndarray, *, steps: int, seed: int,
                 first_round: bool = False) -> LocalUpdate:
    """Train ``detector``'s BiGAN in place on the images of ``X`` it keeps; a client's half
    of a federated self-training round.

    Parameters
    ----------
    detector : GANDetector
        A fitted BiGAN detector (as shipped by the server), trained in place on its device
        (``device_``: where the client loaded it, see
        :func:`~fedsieve.shared.detectors.persist.detector_from_bytes`).
    X : array-like
        The client's images, of the detector's shape.
    steps : int
        Adversarial steps (batches of the detector's ``batch_size``).
    seed : int
        Seed of the batches and latent draws.
    first_round : bool
        Train only on the pseudo-normal images' core (``Training.core_width``): the
        shipped model has seen only the trusted images and cannot yet tell pollution that
        scores between the normal mode and the cut.

    Returns
    -------
    LocalUpdate
        CPU tensors whatever the device (they go into a Flower message). With
        ``num_normal`` 0 and the shipped weights when fewer than
        :data:`MIN_LOCAL_SAMPLES` images are kept.
    """
    images = detector.check_images(X)
    rows = detector.pseudo_normal_rows(images, first_round=first_round)
    model = detector.model_
    if len(rows) < MIN_LOCAL_SAMPLES or steps <= 0:
        return LocalUpdate(model_tensors(model), 0, None)
    cfg = detector.loop_config()
    sampler = batch_sampler(RowSet(images, rows), cfg.batch_size)
    # A CPU generator on every device: the same batches and latents wherever it trains.
    train_loop(model, sampler, int(steps), cfg, torch.Generator().manual_seed(int(seed)))
    device = module_device(model)
    total = torch.zeros(model.cfg.image_shape, device=device)
    with torch.no_grad():
        for x in RowSet(images, rows).chunks(SCORE_BATCH):
            x = x.to(device)
            total += (x - model.G(model.E(x))).abs().sum(0)
    return LocalUpdate(model_tensors(model), len(rows), total.cpu())


def merge_updates(detector: GANDetector, updates: Sequence[LocalUpdate],
                  trusted: np.ndarray | None) -> int:
    """FedAvg the clients' networks into ``detector`` (weighted by their pseudo-normal
    counts) and rebuild the score state a fit derives from the pseudo-normal set.

    The updates are CPU tensors; ``load_state_dict`` copies them onto the detector's device.

    Returns
    -------
    int
        Pseudo-normal images trained on over all clients (0: nothing changed).
    """
    updates = [u for u in updates if u.num_normal > 0]
    total = sum(u.num_normal for u in updates)
    if total == 0:
        return 0
    averaged = {}
    for name, value in updates[0].state.items():
        if not torch.is_floating_point(value):  # counters: not averaged
            averaged[name] = value
            continue
        acc = sum(u.state[name].double() * u.num_normal for u in updates)
        averaged[name] = (acc / total).to(value.dtype)
    detector.model_.load_state_dict({k.removeprefix("model."): v for k, v in averaged.items()},
                                    strict=True)
    detector.model_.eval()
    residual = sum(u.residual_sum for u in updates) / total
    trusted_x = None if trusted is None else detector.check_images(trusted)
    detector.rebuild_score_state(residual, trusted_x)
    return total
