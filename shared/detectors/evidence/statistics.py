"""Evidence from an image's plain statistics: degenerate frames and detached ink.

A reconstruction score sums a residual over the whole image, so an image that is simpler
than any normal one (a black frame) reconstructs best of all, and a 3x3 patch is diluted
among 784 pixels. Two pieces read the image itself instead:

typicality (:class:`Typicality`)
    How far an image's plain statistics (ink, contrast, sharpness, background, ...) lie from
    those of normal images, in robust standard deviations, in either direction: blank,
    over- or under-exposed, blurred, noisy or inverted frames are atypical here even when
    they reconstruct well.
detached ink (:class:`DetachedInk`)
    How much of an image's ink lies outside its largest connected blob, in robust standard
    deviations above normal (one-sided): a sticker, trigger patch, watermark or speck added
    beside the object, or an object cut in two by an occluder. The generator may well draw a
    patch it has seen in the pool; the patch still does not touch the object.

Both are log1p of a distance, not log: 0 is the most typical image, and log would stretch
the near-0 distances into a long left tail that widens the normal mode's estimated spread.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from scipy import ndimage

from fedsieve.shared.detectors.evidence.piece import Batch, EvidencePiece, FitContext, register

#: Names of the statistics :func:`image_statistics` returns, in column order.
STATISTICS = ("log_ink", "contrast", "inked_share", "stroke_level", "peak", "midtone_share",
              "sharpness", "background", "detached_ink")
#: Column of :data:`STATISTICS` that the detached-ink evidence reads.
DETACHED = STATISTICS.index("detached_ink")
#: Pixels touching by an edge or a corner belong to the same blob.
_BLOB_STRUCTURE = np.ones((3, 3), dtype=bool)
#: A pixel counts as ink above this grey level (images in [0, 1]).
INK_LEVEL = 0.2
#: Smallest robust scale of a statistic, as a share of its typical magnitude plus an absolute
#: floor (statistics are grey levels and shares in [0, 1] or logs): with 5-10 trusted images,
#: or a statistic that is almost constant in normal data (the empty border of MNIST), the
#: scale would come out ~0 and every small difference would count as atypical.
MIN_RELATIVE_SCALE = 0.05
MIN_SCALE = 0.02
#: Images farther than this many robust deviations on any statistic are left out when the
#: normal statistics are re-estimated from the pool (trimmed, so pollution cannot move them).
TRIM_Z = 3.5
#: Re-estimates of the statistics' scale around the trusted images' median.
SCALE_PASSES = 4
#: Half-width, in robust deviations, of the window whose median moves the normal statistics'
#: centre to their mode.
CORE_Z = 1.5


#: Images whose statistics are computed at once: the float64 temporaries of a batch take
#: ~40 bytes a pixel, so 20,000 uploads at once held ~600 MB.
STATISTICS_BATCH = 2048


def image_statistics(X: np.ndarray) -> np.ndarray:
    """Plain statistics of each image, float64 of shape (N, 9) (columns: :data:`STATISTICS`),
    computed :data:`STATISTICS_BATCH` images at a time.

    ``X`` is float32 in [0, 1] of shape (N, C, H, W) (or (N, H, W)); colour images are read
    through their brightest channel (:func:`brightness`), so the statistics mean the same
    for any channel count and colour. The statistics are the total ink (log),
    the pixel standard deviation, the share of inked pixels, the mean grey level of inked
    pixels, the brightest pixel, the share of inked pixels that are mid-tones (blur), the
    edge energy per unit of ink (log; sharpness), the mean level of the 2-pixel border and
    the share of ink outside the largest blob (:func:`detached_ink`).
    """
    if len(X) > STATISTICS_BATCH:
        return np.concatenate([image_statistics(X[i:i + STATISTICS_BATCH])
                               for i in range(0, len(X), STATISTICS_BATCH)])
    x = np.asarray(brightness(X), dtype=np.float64)
    n = len(x)
    flat = x.reshape(n, -1)
    inked = flat > INK_LEVEL
    n_ink = np.maximum(inked.sum(1), 1)
    ink = flat.sum(1)
    edges = (np.abs(np.diff(x, axis=1)).sum((1, 2)) + np.abs(np.diff(x, axis=2)).sum((1, 2)))
    border = np.concatenate([x[:, :2].reshape(n, -1), x[:, -2:].reshape(n, -1),
                             x[:, :, :2].reshape(n, -1), x[:, :, -2:].reshape(n, -1)], 1)
    return np.stack([
        np.log1p(ink),
        flat.std(1),
        inked.sum(1) / flat.shape[1],
        (flat * inked).sum(1) / n_ink,
        flat.max(1),
        (inked & (flat < 1.0 - INK_LEVEL)).sum(1) / n_ink,
        np.log1p(edges) - np.log1p(ink),
        border.mean(1),
        detached_ink(x),
    ], axis=1)


def brightness(X: np.ndarray) -> np.ndarray:
    """(N, H, W): each pixel's brightest channel (HSV value) of an (N, C, H, W) batch; an
    (N, H, W) batch as it is.

    The brightest channel, not the mean: how much is drawn must not depend on the colour it
    is drawn in. Through the mean, a saturated blue stroke is a third as bright as a white
    one, so every statistic varied with the hue of each image, normal or not (3x32x32
    digits tinted a random colour each: 15 % of the normal images flagged as atypical,
    typicality test AUC 0.85; through the brightest channel 0 % and 0.991).
    """
    X = np.asarray(X)
    if X.ndim == 3:
        return X
    return X[:, 0] if X.shape[1] == 1 else X.max(axis=1)


def detached_ink(X: np.ndarray) -> np.ndarray:
    """Share of each image's ink (brightness summed) outside its largest blob of inked
    pixels (8-connected, above :data:`INK_LEVEL`), float64 of shape (N,); 0 for one blob."""
    X = brightness(X)
    out = np.zeros(len(X))
    for i, image in enumerate(X):
        blobs, n = ndimage.label(image > INK_LEVEL, structure=_BLOB_STRUCTURE)
        if n > 1:
            mass = ndimage.sum_labels(image, blobs, np.arange(1, n + 1))
            out[i] = 1.0 - mass.max() / max(mass.sum(), 1e-12)
    return out


def robust_center_scale(pool_stats: np.ndarray, trusted_stats: np.ndarray,
                        iterations: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Median and robust scale of each statistic over normal images.

    Starts from the trusted images alone; the scale is re-estimated :data:`SCALE_PASSES` times
    from the pool images within :data:`TRIM_Z` robust deviations of the trusted images' median
    on every statistic (plus the trusted images): 10 images underestimate it, and one pass
    inside their narrow window keeps it too small (a 1,000-digit pool then lay 0.4 log-units
    beyond its own trusted digits). The centre then climbs from the trusted images' median to
    the normal images' mode: the median of the pool images within :data:`CORE_Z` deviations
    of it on every statistic (plus the trusted images), repeated ``iterations`` times. A
    majority of pollution whose statistics overlap normal ones (87 % Fashion-MNIST) drags a
    wide trimmed re-estimate of the centre along, about 0.6 SD a statistic; the narrow window
    stays on the normal images' own peak, as the score's climb in
    :func:`~fedsieve.shared.detectors.threshold.normal_mode_cut` does.
    """

    def fit(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        center = np.median(rows, axis=0)
        scale = 1.4826 * np.median(np.abs(rows - center), axis=0)
        return center, np.maximum(scale, MIN_RELATIVE_SCALE * np.abs(center) + MIN_SCALE)

    center, scale = fit(trusted_stats)
    for _ in range(SCALE_PASSES):
        close = (np.abs((pool_stats - center) / scale) <= TRIM_Z).all(axis=1)
        scale = fit(np.concatenate([pool_stats[close], trusted_stats]))[1]
    for _ in range(iterations):
        core = (np.abs((pool_stats - center) / scale) <= CORE_Z).all(axis=1)
        center = np.median(np.concatenate([pool_stats[core], trusted_stats]), axis=0)
    return center, scale


def typicality(stats: np.ndarray, center: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Largest robust deviation of any statistic but the detached ink (its own piece of
    evidence) from normal, either direction, shape (N,)."""
    return np.delete(np.abs((stats - center) / scale), DETACHED, axis=1).max(axis=1)


def detachment(stats: np.ndarray, center: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Robust deviations of the detached ink above normal (0 at or below), shape (N,)."""
    return np.maximum((stats[:, DETACHED] - center[DETACHED]) / scale[DETACHED], 0.0)


def _statistics(batch: Batch) -> np.ndarray:
    """The batch's image statistics, computed once for both pieces."""
    return batch.remember("statistics", image_statistics)


class _StatisticsPiece(EvidencePiece):
    """A piece read from the image statistics against their normal centre and scale
    (:func:`robust_center_scale`), fitted on the pool and the trusted images.

    Attributes
    ----------
    center_, scale_ : ndarray of shape (9,)
        Robust centre and scale of the normal images' statistics.
    """

    def fit(self, pool: Batch, trusted: Batch, context: FitContext) -> bool:
        # Fitted once per pool for both pieces (a pool batch meets one set of trusted images).
        self.center_, self.scale_ = pool.remember(
            "normal-statistics",
            lambda _: robust_center_scale(_statistics(pool), _statistics(trusted)))
        return True

    def state(self) -> dict[str, torch.Tensor]:
        # One key for both pieces: they fit the same centre and scale.
        return {"score.statistics": torch.tensor(np.stack([self.center_, self.scale_]))}

    def restore(self, tensors: dict[str, torch.Tensor], header: dict[str, Any],
                model: torch.nn.Module) -> bool:
        stats = tensors["score.statistics"].numpy().astype(np.float64)
        self.center_, self.scale_ = stats[0], stats[1]
        return True


@register
class Typicality(_StatisticsPiece):
    """Blank, over-exposed, blurred, noisy or inverted frames: ``log1p`` of the largest
    robust deviation of any statistic but the detached ink from normal (:func:`typicality`)."""

    name = "typicality"

    def values(self, batch: Batch) -> np.ndarray:
        return np.log1p(typicality(_statistics(batch), self.center_, self.scale_))


@register
class DetachedInk(_StatisticsPiece):
    """Stickers, trigger patches, specks, occluders: ``log1p`` of the robust deviations of
    the ink outside the largest blob above normal (:func:`detachment`)."""

    name = "detached-ink"

    def values(self, batch: Batch) -> np.ndarray:
        return np.log1p(detachment(_statistics(batch), self.center_, self.scale_))
