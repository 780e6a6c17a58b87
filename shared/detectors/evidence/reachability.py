"""Reachability: how hard an image is to reach from known-normal images through the pool.

Every reconstruction or density score ranks an image by how well the model explains it, and
pollution that is *simpler* than the normal data (digits among clothes, sketches among
photos) is explained best of all: on the reverse protocol (Fashion-MNIST normal, 20 % MNIST
digits) Rt-BiGAN's global score ranks the digits as the most normal images (test AUC 0.16).
Reachability asks another question: can a random walk from known-normal images (the anchors)
arrive at this image by small steps between similar images of the pool?

The pool and the anchors are the nodes of a symmetric k-nearest-neighbour graph (cosine
distance between images read through their brightest channel, so colour does not count);
a personalised PageRank (random walk with restart at the anchors, Page et al. 1999;
label propagation of Zhou et al. 2004 with one label) gives each node its share of the
walk, and the piece is ``-log(share / degree)``: a pollution cluster is linked to the normal
images by a few edges, so the walk seldom enters it, however simple its images are.

The anchors are the trusted images plus a sample of the meta-model's own normal images
(its *atlas*, written by ``fedsieve meta-train``). Anchors from 5-10 trusted images alone
miss normal classes: a class none of them shows, and that no chain of similar images leads
to (bags among clothes), is as unreachable as the pollution (reverse protocol, seeds 0-2:
8-61 % of the normal images past the cut). With a 500-image atlas of the normal data
the cut flagged 98-99 % of the digits and 0.0 % of the normal images (test AUC
0.9992-0.9995), and on the public protocol 94-99 % and at most 0.1 % (0.9996-1.0).

An image outside the graph (a new upload, the test set) takes the median score of its k
nearest nodes, and so does every node (leaving itself out), so that the pool, the anchors
and new images are scored by the same rule.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from sklearn.neighbors import NearestNeighbors

from fedsieve.shared.data.images import check_images
from fedsieve.shared.detectors.checkpoint import MetaModelWarning, load_meta_atlas
from fedsieve.shared.detectors.evidence.piece import Batch, EvidencePiece, FitContext, register
from fedsieve.shared.detectors.evidence.statistics import brightness

__all__ = ["ATLAS_SIZE", "Reachability", "ReachabilityPiece", "atlas_fits", "atlas_sample",
           "reach_features"]

#: Normal images a meta-model keeps as its atlas.
ATLAS_SIZE = 500
#: Pool images in the graph (a seeded sample beyond it); the rest are scored as new images.
GRAPH_POOL = 4000
#: Neighbours per node of the graph and per scored image.
NEIGHBOURS = 5
#: Restart probability of the walk: small, so that the walk reaches the normal classes the
#: anchors do not show through chains of similar images (0.05 and 0.15 left more normal
#: images unreachable; 0.005 ranked as 0.01).
RESTART = 0.01
#: Largest side at which images enter the graph (larger ones are area-averaged down to it):
#: bounds the features at 32 x 32 values per image.
MAX_SIDE = 32
#: The atlas fits the trusted images when their median distance to the nearest atlas image
#: is at most this quantile of the atlas images' own nearest-neighbour distances. Measured:
#: MNIST trusted images lie at 0.61 from an MNIST atlas (its 0.9-quantile 0.78), Fashion-MNIST
#: ones at 0.84; Fashion-MNIST at 0.43 from a Fashion-MNIST atlas (0.65), MNIST at 0.89.
FIT_QUANTILE = 0.9
#: Copies of one image (itself in the pool, in the atlas) left out when it is scored.
DUPLICATES = 3
#: Smallest share of the walk a node can hold (a node the walk never reaches).
_FLOOR = 1e-250


def reach_features(X: np.ndarray) -> np.ndarray:
    """Graph features of (N, C, H, W) float images in [0, 1]: the brightest channel,
    area-averaged to at most :data:`MAX_SIDE` a side, flattened and L2-normalised (float32)."""
    x = torch.from_numpy(np.ascontiguousarray(brightness(np.asarray(X, np.float32))))[:, None]
    if max(x.shape[2:]) > MAX_SIDE:
        scale = MAX_SIDE / max(x.shape[2:])
        size = (max(1, round(x.shape[2] * scale)), max(1, round(x.shape[3] * scale)))
        x = F.adaptive_avg_pool2d(x, size)
    flat = x.flatten(1).numpy()
    return flat / np.maximum(np.linalg.norm(flat, axis=1, keepdims=True), 1e-6)


def atlas_sample(images: np.ndarray, labels: np.ndarray | None = None,
                 exclude: tuple[int, ...] = (), size: int = ATLAS_SIZE, seed: int = 0
                 ) -> np.ndarray:
    """A seeded sample of ``size`` meta-training images for a meta-model's atlas, uint8
    (N, C, H, W), leaving out the classes in ``exclude`` (held out of meta-training).
    ``images`` in any layout :func:`~fedsieve.shared.data.images.check_images` reads as NCHW."""
    images = check_images(images, "meta-training images", dtype=np.uint8, layout="NCHW"
                          if np.asarray(images).ndim == 4 else None)
    rows = np.arange(len(images))
    if labels is not None and exclude:
        rows = rows[~np.isin(np.asarray(labels), list(exclude))]
    if len(rows) > size:
        rows = np.sort(np.random.default_rng(seed).choice(rows, size, replace=False))
    return np.ascontiguousarray(images[rows])


def atlas_fits(trusted: np.ndarray, atlas: np.ndarray) -> tuple[bool, float, float]:
    """Whether the trusted images look like the atlas images (same kind of data).

    Returns ``(fits, distance, reference)``: the trusted images' median distance to their
    nearest atlas image and the atlas' own :data:`FIT_QUANTILE` nearest-neighbour distance.
    """
    a = reach_features(atlas)
    nn = NearestNeighbors(n_neighbors=2).fit(a)
    own = nn.kneighbors(a)[0][:, 1]
    distance = float(np.median(nn.kneighbors(reach_features(trusted), n_neighbors=1)[0][:, 0]))
    reference = float(np.quantile(own, FIT_QUANTILE))
    return distance <= reference, distance, reference


@dataclass
class Reachability:
    """The graph's nodes and their scores; scores any image by its nearest nodes.

    Attributes
    ----------
    features : ndarray of shape (n_nodes, D), float16
        Graph features (:func:`reach_features`) of the nodes.
    node_scores : ndarray of shape (n_nodes,)
        ``-log(walk share / degree)`` of each node.
    neighbours : int
        Nodes per scored image.
    """

    features: np.ndarray
    node_scores: np.ndarray
    neighbours: int = NEIGHBOURS
    #: Neighbour index of the float32 nodes, built on the first :meth:`score` and kept:
    #: every screening batch is scored against the same nodes.
    _index: NearestNeighbors | None = field(default=None, init=False, repr=False,
                                            compare=False)

    @classmethod
    def fit(cls, pool: np.ndarray, anchors: np.ndarray, *, seed: int = 0,
            graph_pool: int = GRAPH_POOL, neighbours: int = NEIGHBOURS,
            restart: float = RESTART) -> Reachability:
        """Build the graph on (a seeded sample of ``graph_pool``) pool images and the
        anchors, and walk from the anchors."""
        rows = np.arange(len(pool))
        if len(pool) > graph_pool:
            rows = np.sort(np.random.default_rng(seed).choice(len(pool), graph_pool, False))
        pool_nodes, anchor_nodes = reach_features(pool[rows]), reach_features(anchors)
        # An anchor that copies a pool image (an atlas drawn from the same files as the
        # pool) is left out: the walk would restart right at that pool image and put its
        # neighbours next to an anchor (public-protocol benchmark, whose pool and shipped
        # atlas share the 4,000 packaged digits: 4.2 % of the normal images past the cut).
        if len(pool_nodes):
            gap = NearestNeighbors(n_neighbors=1).fit(pool_nodes).kneighbors(anchor_nodes)[0]
            if (gap[:, 0] >= 1e-3).any():
                anchor_nodes = anchor_nodes[gap[:, 0] >= 1e-3]
        n_anchors = len(anchor_nodes)
        nodes = np.concatenate([pool_nodes, anchor_nodes])
        n, k = len(nodes), min(neighbours, len(nodes) - 1)
        nearest = NearestNeighbors(n_neighbors=k + 1).fit(nodes).kneighbors(nodes)[1]
        src = np.repeat(np.arange(n), k)
        adjacency = sp.csr_matrix((np.ones(n * k), (src, nearest[:, 1:].ravel())), (n, n))
        adjacency = (adjacency + adjacency.T).tocsr()
        adjacency.data[:] = 1.0
        # A self-loop on every node keeps the walk defined on any graph (and lazy).
        adjacency = adjacency + sp.eye(n, format="csr")
        degree = np.asarray(adjacency.sum(axis=1)).ravel()
        step = (sp.diags(1.0 / degree) @ adjacency).T.tocsr()
        start = np.zeros(n)
        start[len(rows):] = 1.0 / n_anchors
        share = start.copy()
        # (1 - restart)^(10 / restart) < 5e-5: the walk's share has converged.
        for _ in range(int(np.ceil(10 / restart))):
            share = restart * start + (1 - restart) * (step @ share)
        scores = -np.log(np.maximum(share / degree, _FLOOR))
        # float16 halves the checkpoint; the nodes' scores come from the float32 graph.
        return cls(nodes.astype(np.float16), scores, int(k))

    def score(self, X: np.ndarray) -> np.ndarray:
        """Median node score of each image's nearest nodes, float64 of shape (N,).

        An image that is itself a node leaves that node out (and up to
        :data:`DUPLICATES` exact copies of it), so the pool and the anchors are scored like
        new images. Anchors that copy pool images are dropped in :meth:`fit` already; this
        exclusion alone did not keep them apart (4.4 -> 4.2 % of the normal images past the
        cut in the public-protocol benchmark).
        """
        if len(X) == 0:
            return np.zeros(0)
        k = self.neighbours
        extra = min(len(self.features) - k, DUPLICATES)
        if self._index is None:
            self._index = NearestNeighbors().fit(self.features.astype(np.float32))
        dist, idx = self._index.kneighbors(reach_features(X), n_neighbors=k + extra)
        # Nodes at distance 0 (the image itself, or an anchor that copies it) stay out, the
        # nearest k of the others count.
        order = np.argsort(dist < 1e-3, axis=1, kind="stable")[:, :k]
        return np.median(self.node_scores[np.take_along_axis(idx, order, axis=1)], axis=1)


@register
class ReachabilityPiece(EvidencePiece):
    """Reachability as a piece of Rt-BiGAN's evidence (see the module): the walk's anchors
    are the trusted images and the meta-model's atlas.

    It needs a meta-model with an atlas that looks like the trusted images (``fedsieve
    meta-train`` writes one; the shipped meta-model has none, so the default detector goes
    without it); otherwise it leaves itself out, with a
    :class:`~fedsieve.shared.detectors.checkpoint.MetaModelWarning` when the atlas and the trusted
    images differ. Measured with a meta-model of the task's normal data
    (``benchmarks/shapes.py``): reverse protocol (Fashion-MNIST normal, 20 % MNIST digits)
    test AUC 0.47 -> 0.99, 98 % of the digits and 0.8 % of the normal images flagged (0 % of
    the digits without it).

    Attributes
    ----------
    graph_ : Reachability or None
        The graph's nodes and their scores (None when the piece is left out).
    atlas_fit_ : dict or None
        ``fits``, ``distance`` and ``reference`` of the atlas check (:func:`atlas_fits`;
        None without an atlas).
    """

    name = "reachability"
    holds_pool_images = True

    def fit(self, pool: Batch, trusted: Batch, context: FitContext) -> bool:
        self.graph_: Reachability | None = None
        self.atlas_fit_: dict[str, Any] | None = None
        atlas = None if context.meta_path is None else load_meta_atlas(context.meta_path)
        if atlas is None:
            return False
        atlas = atlas.astype(np.float32) / np.float32(255)
        fits, distance, reference = atlas_fits(trusted.images, atlas)
        self.atlas_fit_ = {"fits": fits, "distance": distance, "reference": reference}
        if not fits:
            warnings.warn(
                f"the trusted images do not look like the meta-model's normal images (median "
                f"distance {distance:.2f} to its atlas, whose own images lie within "
                f"{reference:.2f} of each other): the reachability evidence is left out. "
                "Meta-train one on your normal data (fedsieve meta-train --data ...) and pass "
                "meta_checkpoint=<path>", MetaModelWarning, stacklevel=6)
            return False
        self.graph_ = Reachability.fit(pool.images, np.concatenate([trusted.images, atlas]),
                                       seed=context.seed)
        return True

    def values(self, batch: Batch) -> np.ndarray:
        # -log of a share already: a log scale. The graph does not change between rounds.
        return batch.remember(self.name, self.graph_.score)

    def state(self) -> dict[str, torch.Tensor]:
        graph = self.graph_
        return {"reach.features": torch.from_numpy(graph.features.copy()),
                "reach.scores": torch.from_numpy(graph.node_scores.astype(np.float64)),
                "reach.neighbours": torch.tensor(graph.neighbours, dtype=torch.int64)}

    def header(self) -> dict[str, Any]:
        return {"atlas_fit": getattr(self, "atlas_fit_", None)}

    def restore(self, tensors: dict[str, torch.Tensor], header: dict[str, Any],
                model: torch.nn.Module) -> bool:
        self.atlas_fit_ = header.get("atlas_fit")
        self.graph_ = None
        if "reach.features" not in tensors:
            return False
        self.graph_ = Reachability(tensors["reach.features"].numpy(),
                                   tensors["reach.scores"].numpy(),
                                   int(tensors["reach.neighbours"]))
        return True
