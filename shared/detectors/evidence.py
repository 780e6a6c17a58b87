"""Evidence beyond the global reconstruction score: local defects and degenerate images.

A global score sums a residual over the whole image, so a 3x3 trigger patch is diluted
among 784 pixels, and an image that is simpler than any normal one (a black frame)
reconstructs best of all. Two more pieces of evidence see them:

local
    The largest mean residual ``|x - G(E(x))|`` over any ``window`` x ``window`` patch: a
    small patch the generator never draws stands out however little of the image it covers.
typicality
    How far an image's plain statistics (ink, contrast, sharpness, background, ...) lie from
    those of normal images, in robust standard deviations, in either direction: blank,
    over- or under-exposed, blurred, noisy or inverted frames are atypical here even when
    they reconstruct well.
detached ink
    How much of an image's ink lies outside its largest connected blob, in robust standard
    deviations above normal (one-sided): a sticker, trigger patch, watermark or speck added
    beside the object, or an object cut in two by an occluder. The generator may well draw a
    patch it has seen in the pool; the patch still does not touch the object.

:class:`EvidenceCalibration` turns each piece into a common unit with the false-drop budget
of :func:`fedsieve.shared.detectors.threshold.normal_mode_cut`, so that they can be mixed by
taking the largest.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from fedsieve.shared.detectors.threshold import NormalMode, normal_mode_cut

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
#: Passes in which each piece of evidence is cut again on the images no other piece flags.
LEAVE_ONE_OUT_PASSES = 2
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


def local_residual(residual: torch.Tensor, window: int) -> torch.Tensor:
    """Largest mean of ``residual`` (B, C, H, W), summed over channels, over any ``window`` x
    ``window`` patch."""
    return F.avg_pool2d(residual.sum(1, keepdim=True), window, stride=1).flatten(1).max(1).values


@dataclass
class EvidenceCalibration:
    """Each piece of evidence in one unit: 0 at its false-drop cut, -1 at the normal mode.

    Fitted on the pool every self-training round. Piece ``k`` with (log) value ``v`` becomes
    ``(v - cut_k) / (cut_k - mode_k)``; the detector's score is the largest of them, so an
    image is flagged when any piece passes its cut, and each cut spends ``budget / K`` of
    the false-drop budget (a union bound over the ``K`` pieces). The cuts are fitted
    several times: each piece on the whole pool, then again piece by piece from the deepest
    valley on, each on the images the pieces before it leave unflagged, then
    :data:`LEAVE_ONE_OUT_PASSES` times each on the images every other piece leaves unflagged.
    When no piece finds a second population on its own (every cut is its budget's quantile),
    the pollution may still be one on the score itself, the largest calibrated piece: images
    that stand out a little on several pieces, none of which alone tells them from its normal
    tail, stand out together. The same valley rule (:func:`normal_mode_cut`, the whole budget)
    then looks for it there, and when its valley lies below 0 (and above every piece's normal
    mode) every cut moves down to it.

    Attributes
    ----------
    cuts, modes, spreads : ndarray of shape (K,)
        Per piece, on the log scale: the cut, the normal mode and the robust SD of the
        mode's left side.
    """

    cuts: np.ndarray
    modes: np.ndarray
    spreads: np.ndarray

    @classmethod
    def fit(cls, pool: np.ndarray, trusted: np.ndarray | None, budget: float
            ) -> EvidenceCalibration:
        """Calibrate from the pool's (log) evidence, shape (N, K), anchored by the trusted
        images' evidence (M, K)."""
        k = pool.shape[1]

        def cut(j: int, rows: np.ndarray) -> NormalMode:
            return normal_mode_cut(pool[rows, j], None if trusted is None else trusted[:, j],
                                   budget / k)

        found = [cut(j, np.ones(len(pool), bool)) for j in range(k)]
        # Again, piece by piece from the cleanest separation (the deepest valley) on, each on
        # the images the pieces before it do not flag: pollution one piece already explains
        # (a trigger patch's detached ink) would otherwise form a second population on the
        # others too, overlapping their normal tail, and the valley between them would cut
        # into the normal data.
        explained = np.zeros(len(pool), bool)
        for j in sorted(range(k), key=lambda j: found[j].depth):
            if explained.any():  # the first piece's rows are the whole pool: already cut
                found[j] = cut(j, ~explained)
            explained |= pool[:, j] > found[j].cut
        # Then each piece once more on the images no other piece flags: a piece cut before the
        # others saw the whole pollution, and with pollution the majority the valley it found
        # lies inside the normal tail (80 % Fashion-MNIST: 7 % of the normal data beyond it).
        flags = pool > np.array([f.cut for f in found])
        for _ in range(LEAVE_ONE_OUT_PASSES):
            for j in range(k):
                found[j] = cut(j, ~np.delete(flags, j, axis=1).any(axis=1))
                flags[:, j] = pool[:, j] > found[j].cut
        calibration = cls(*(np.array([getattr(f, name) for f in found], dtype=np.float64)
                            for name in ("cut", "mode", "spread")))
        if all(f.depth >= 1.0 for f in found):
            return calibration._cut_on_the_score(pool, trusted, budget)
        return calibration

    def _cut_on_the_score(self, pool: np.ndarray, trusted: np.ndarray | None, budget: float
                          ) -> EvidenceCalibration:
        """When no piece found a valley: the valley of the score (the largest calibrated
        piece) itself, as every piece's cut, when it lies between the normal modes and the
        cuts (issue 34: 78 Fashion-MNIST images in a pool of 388, a little above the normal
        tail on both the global score and the typicality, neither piece's density doubling
        again after its valley; on the score they form a second population)."""
        score = self.combine(pool)
        found = normal_mode_cut(score, None if trusted is None else self.combine(trusted),
                                budget)
        # combine() is -1 at a piece's normal mode and 0 at its cut.
        if found.depth >= 1.0 or not -1.0 < found.cut < 0.0:
            return self
        unit = np.maximum(self.cuts - self.modes, 1e-6)
        # (v - cut') / (cut' - mode) = (score - c) / (1 + c) for cut' = cut + c * unit: the
        # same ranking, and 0 now at the score's valley c.
        return type(self)(self.cuts + found.cut * unit, self.modes, self.spreads)

    def core(self, evidence: np.ndarray, width: float) -> np.ndarray:
        """Images whose every piece lies at most ``width`` robust SDs above its normal mode
        (bool, shape (N,)): the normal population's core, free of pollution that scores
        between the mode and the cut."""
        return (evidence <= self.modes + width * self.spreads).all(axis=1)

    def combine(self, evidence: np.ndarray) -> np.ndarray:
        """Largest calibrated piece per image (float64, shape (N,)); > 0 = past a cut."""
        unit = np.maximum(self.cuts - self.modes, 1e-6)
        return ((evidence - self.cuts) / unit).max(axis=1)

    def as_array(self) -> np.ndarray:
        return np.stack([self.cuts, self.modes, self.spreads])

    @classmethod
    def from_array(cls, a: np.ndarray) -> EvidenceCalibration:
        return cls(*(np.asarray(row, np.float64) for row in a))
