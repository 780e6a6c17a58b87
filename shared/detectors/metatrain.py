"""Reptile meta-training of the BiGAN (paper Algorithm 1).

Each iteration copies the meta-parameters Phi into a base learner W, samples a task of
``task_size`` images (by default all of one digit class), runs ``inner_steps`` adversarial
steps of the shared loop (D step, then E+G step) on it, sets Phi's gradient to ``Phi - W`` and
takes one Adam step on Phi for E, G and D. As in the reference Reptile code, the outer step
size is annealed linearly to 0.

Tasks are groups of images: "one class per task" (:func:`class_tasks`) when the images are
labelled; for unlabelled images, :func:`cluster_tasks` groups them by appearance, and its
cluster ids stand in for the labels :func:`meta_train` takes.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch

from fedsieve.shared.data.images import check_images
from fedsieve.shared.detectors.bigan import LoopConfig, as_batch, init_model, train_loop
from fedsieve.shared.detectors.networks import BiGAN, NetConfig
from fedsieve.shared.devices import resolve_device


@dataclass(frozen=True)
class MetaConfig:
    """Settings of Reptile meta-training.

    Attributes
    ----------
    iterations : int
        Outer (meta) iterations.
    inner_steps : int
        K adversarial steps per task.
    task_size : int
        Images per task (the whole task is one batch).
    meta_lr : float
        Initial Adam step size on Phi, annealed linearly to 0.
    holdout_classes : tuple of int
        Classes never used as tasks.
    loop : LoopConfig
        Inner-loop settings (learning rates, reconstruction weight).
    net : NetConfig
        Network sizes.
    seed : int
        Seeds initialisation, task sampling and the inner loops.
    """

    iterations: int = 400
    inner_steps: int = 10
    task_size: int = 32
    meta_lr: float = 1e-3
    holdout_classes: tuple[int, ...] = ()
    loop: LoopConfig = field(default_factory=lambda: LoopConfig(recon_weight=1.0))
    net: NetConfig = field(default_factory=NetConfig)
    seed: int = 0

    def to_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["holdout_classes"] = list(self.holdout_classes)
        return d


def class_tasks(labels: np.ndarray, holdout: Sequence[int] = ()) -> list[np.ndarray]:
    """Task distribution "one class per task": index arrays of each non-held-out class."""
    classes = [c for c in np.unique(labels) if int(c) not in set(holdout)]
    if not classes:
        raise ValueError("every class is held out; leave at least one class for meta-training")
    return [np.flatnonzero(labels == c) for c in classes]


#: Side of the downsampled images :func:`cluster_tasks` clusters (per channel).
CLUSTER_SIDE = 8


def cluster_tasks(images: np.ndarray, k: int = 10, seed: int = 0, *,
                  layout: str | None = None) -> np.ndarray:
    """Task ids for unlabelled images: k-means clusters of their downsampled pixels.

    Each image is area-averaged to :data:`CLUSTER_SIDE` x :data:`CLUSTER_SIDE` per channel
    (so that clusters follow shape and colour, not pixel noise) and scikit-learn's ``KMeans``
    (``n_init=4``, seeded) groups the results. Pass the ids as ``labels`` to
    :func:`meta_train`: :func:`class_tasks` then makes one task per cluster.

    Parameters
    ----------
    images : array-like
        Any batch :func:`~fedsieve.shared.data.images.check_images` reads.
    k : int
        Number of clusters (tasks), from 1 to the number of images.
    seed : int
        Seeds k-means.
    layout : {"NCHW", "NHWC"}, optional
        As in :func:`~fedsieve.shared.data.images.check_images`.

    Returns
    -------
    numpy.ndarray
        int64 (N,) cluster ids in 0..k-1.

    Raises
    ------
    ValueError
        Invalid images, or ``k`` outside 1..N.
    """
    from sklearn.cluster import KMeans

    x = check_images(images, "images", dtype=np.uint8, layout=layout)
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or not 1 <= k <= len(x):
        raise ValueError(f"k must be an integer from 1 to the number of images ({len(x)}), "
                         f"got {k!r}; ask for fewer clusters")
    pool = torch.nn.AdaptiveAvgPool2d(CLUSTER_SIDE)
    with torch.no_grad():  # in chunks: a float copy of the whole set would be large
        features = np.concatenate([
            pool(torch.from_numpy(x[i:i + 4096]).float() / 255).flatten(1).numpy()
            for i in range(0, len(x), 4096)])
    km = KMeans(n_clusters=int(k), n_init=4, random_state=seed).fit(features)
    return km.labels_.astype(np.int64)


def meta_train(
    images: np.ndarray,
    labels: np.ndarray,
    cfg: MetaConfig | None = None,
    on_iteration: Callable[[int, float], None] | None = None,
    *,
    layout: str | None = None,
    device: str = "auto",
) -> BiGAN:
    """Reptile meta-training (Algorithm 1); returns the meta-model Phi, on the CPU.

    Parameters
    ----------
    images : array-like
        Meta-training images of one shape, uint8 or float32 in [0, 1] (any form
        :func:`fedsieve.shared.data.images.check_images` accepts); the networks are built for
        their (C, H, W), whatever ``cfg.net.image_shape`` says.
    labels : ndarray of shape (N,)
        Class of each image; defines the tasks (one per class not held out). For unlabelled
        images pass cluster ids from :func:`cluster_tasks`.
    cfg : MetaConfig, optional
        Settings; defaults as in :class:`MetaConfig`.
    on_iteration : callable, optional
        ``on_iteration(i, seconds)`` after each outer iteration (progress bars).
    layout : {"NCHW", "NHWC"}, optional
        Layout of 4-D ``images`` when their shape leaves it ambiguous.
    device : str, default "auto"
        Where to train (:func:`~fedsieve.shared.devices.resolve_device`): the images and
        networks move there; tasks, batches and latents are drawn on the CPU as always, so
        the device changes no draw. Not part of ``cfg``: it does not change what is learned.

    Raises
    ------
    ValueError
        ``device`` is malformed or not available here.
    """
    cfg = cfg or MetaConfig()
    dev = resolve_device(device)
    X = as_batch(check_images(images, "images", layout=layout), dev)
    labels = np.asarray(labels)
    if len(labels) != len(X):
        raise ValueError("labels must have one entry per image")
    tasks = class_tasks(labels, cfg.holdout_classes)
    rng = np.random.default_rng(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    phi = init_model(replace(cfg.net, image_shape=tuple(X.shape[1:])), cfg.seed, dev)
    outer = torch.optim.Adam(phi.parameters(), lr=cfg.meta_lr, betas=(0.5, 0.999))
    t0 = time.perf_counter()
    for it in range(cfg.iterations):
        for group in outer.param_groups:  # linear annealing to 0, as in the Reptile code
            group["lr"] = cfg.meta_lr * (1.0 - it / cfg.iterations)
        w = copy.deepcopy(phi)
        idx = tasks[rng.integers(len(tasks))]
        task = X[rng.choice(idx, size=min(cfg.task_size, len(idx)), replace=False)]
        train_loop(w, lambda g, t=task: t, cfg.inner_steps, cfg.loop, gen)
        outer.zero_grad(set_to_none=True)
        with torch.no_grad():
            for p_phi, p_w in zip(phi.parameters(), w.parameters(), strict=True):
                p_phi.grad = p_phi - p_w  # the Reptile "gradient"
        outer.step()
        if on_iteration is not None:
            on_iteration(it, time.perf_counter() - t0)
    # Handed back on the CPU, as save_meta writes it and every caller before used it.
    return phi.cpu().eval()

