"""Threshold policies: turn anomaly scores into verdicts (1 = anomaly).

Five policies, chosen with ``threshold_policy`` and parameterised by ``threshold_value``:

``"budget"``
    A false-drop budget: ``threshold_value`` (default :data:`DEFAULT_BUDGET` = 0.01) is the
    share of a single, inseparable population the cut may flag.
    The normal data's score distribution is estimated from the pool itself, anchored by the
    trusted images (:func:`normal_mode_cut`): starting at the trusted images' median, climb the
    pool's (log-)score density to its nearest peak, the normal mode, whatever share of the pool
    it holds; follow the density to the right to the first deep valley after which it at least
    doubles again (a second population, the pollution: gathered in one place, or spread thin
    but holding significantly more images than the valley's level would). The cut is that
    valley; without one (a clean pool, or pollution the score cannot separate) it is the
    ``1 - budget`` quantile of the pool, so a clean pool loses ``budget`` of its data. A
    majority of pollution does not move the normal mode, because the climb starts at the
    trusted images. When the
    pollution is so much the majority that the normal data is only a shoulder of its peak (no
    valley, and more than half the pool above every trusted value, which a clean pool shows
    with probability 2^-m for m trusted images), the normal data is instead read off a
    Gaussian mixture (components chosen by BIC): the component holding most trusted values
    and those below it; the cut is their ``1 - budget`` quantile. Detectors
    that calibrate their own scores (Rt-BiGAN: each piece of evidence is cut this way and
    rescaled so that its cut is 0) keep 0 as the threshold.
``"gmm"`` (unsupervised, the 0.1 default)
    Fit a 2-component :class:`sklearn.mixture.GaussianMixture` to the log of the pool scores
    (scores are shifted to be positive first when they are not). The threshold is the score at
    which the upper (anomalous) component becomes the more probable one (posterior
    :data:`GMM_POSTERIOR` = 0.5). The pool is taken as a single population, and the threshold
    falls back to ``mean + 3 std`` of the log scores, when the two components are not separated
    (Ashman's D below ``threshold_value``, default 2.0) or, when trusted images are given, when
    the upper component does not lie above every trusted score: normal data with a skewed score
    distribution fits two Gaussians too, and the trusted images tell the two cases apart, so a clean
    pool is not cut in half.
``"trusted-quantile"``
    Quantile ``threshold_value`` (default 1.0, the maximum) of the trusted images' scores.
    With 5-10 images the estimate is coarse; they are in-sample for the adapted detector, so
    this policy tends to flag more normal data than ``"gmm"``.
``"contamination"``
    Flag the top ``threshold_value`` fraction (default 0.1) of the pool, the PyOD convention;
    right only when the pollution rate is known.
``"fixed"``
    Use ``threshold_value`` as the threshold itself, on the detector's score scale.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from sklearn.mixture import GaussianMixture

POLICIES = ("budget", "gmm", "trusted-quantile", "contamination", "fixed")
#: Default false-drop budget of the ``"budget"`` policy: the share of normal data it may flag.
DEFAULT_BUDGET = 0.01
#: A valley counts when the density there is below this share of the normal mode's peak...
VALLEY_DEPTH = 0.5
#: ...rises again after it by at least as much as this many images gathered in one place add
#: (a second population, however small beside a spike of identical normal values), or holds,
#: from the valley on, more images than a density that stayed at the valley's level would,
#: by VALLEY_RISE_Z Poisson standard deviations (a second population spread too thin to rise
#: by VALLEY_RISE_IMAGES in one place: in a pool of 400, 78 Fashion-MNIST images spread over
#: two log-units never did, and whether the cut found them hung on float rounding, issue 34;
#: 3 is the conventional 3-sigma level, not fitted)...
VALLEY_RISE_IMAGES = 10
VALLEY_RISE_Z = 3.0
#: ...and to at least this multiple of the valley's own density (not a ripple in a long tail)...
VALLEY_RATIO = 2.0
#: ...and lies at least this many left-side standard deviations above the normal mode.
VALLEY_MIN_SD = 2.0
#: Posterior of the anomalous mixture component at which ``"gmm"`` cuts.
GMM_POSTERIOR = 0.5
#: Without a valley, the pool counts as mostly pollution when more than this share of it lies
#: above every trusted value: for a pool of normal data exchangeable with ``m`` trusted images
#: that share is Beta(1, m)-distributed (mean 1 / (m + 1); above 0.5 with probability 2^-m).
MAJORITY_BEYOND_TRUSTED = 0.5
#: Most components of the ``"budget"`` cut's mixture when pollution is the majority...
MAJORITY_COMPONENTS = 4
#: ...fitted on at most this many values (a seeded subsample).
MAJORITY_MAX_VALUES = 5000


def check_policy_value(policy: str, value: float | None) -> None:
    """Check that ``policy`` is known and ``value`` is one it can use.

    Raises
    ------
    ValueError
        Unknown policy, ``"fixed"`` without a value, or a value outside the policy's range.
    """
    if policy not in POLICIES:
        raise ValueError(
            f"unknown threshold_policy {policy!r}; choose one of {', '.join(POLICIES)}"
        )
    if policy == "fixed" and value is None:
        raise ValueError("threshold_policy='fixed' needs threshold_value (the threshold itself)")
    if policy == "budget" and value is not None and not 0.0 < value < 0.5:
        raise ValueError(f"budget threshold_value (the false-drop budget) must be in (0, 0.5), "
                         f"got {value}; e.g. 0.01 lets 1 % of normal data be dropped")
    if policy == "contamination" and value is not None and not 0.0 < value < 0.5 + 1e-9:
        raise ValueError(f"contamination threshold_value must be in (0, 0.5], got {value}")
    if policy == "trusted-quantile" and value is not None and not 0.0 <= value <= 1.0:
        raise ValueError(f"trusted-quantile threshold_value must be in [0, 1], got {value}")


def log_scores(scores: np.ndarray, reference: np.ndarray | None = None) -> np.ndarray:
    """``log`` of scores shifted to be positive (by ``reference``'s minimum when given), so
    that skewed positive scores (residuals, distances) become closer to symmetric."""
    s = np.asarray(scores, dtype=np.float64)
    shift = log_shift(s if reference is None else np.asarray(reference, dtype=np.float64))
    return np.log(np.maximum(s + shift, 1e-300))


def log_shift(reference: np.ndarray) -> float:
    """What to add to scores so that ``reference`` (the pool's scores) becomes positive."""
    low = float(reference.min()) if len(reference) else 0.0
    return 0.0 if low > 0 else 1e-6 - low + 1e-3 * (float(np.ptp(reference)) + 1e-12)


class NormalMode(NamedTuple):
    """The normal population found by :func:`normal_mode_cut` on 1-D values."""

    #: Values above it are anomalous (the ``1 - rate`` quantile of the normal part).
    cut: float
    #: The normal mode's location (``cut - mode`` is a natural unit for these values).
    mode: float
    #: Robust standard deviation of the mode's left side (pollution seldom lies there).
    spread: float
    #: Density at the valley as a share of the mode's (1.0 without a valley): how cleanly
    #: the values separate a second population.
    depth: float = 1.0


def normal_mode_cut(
    values: np.ndarray, trusted_values: np.ndarray | None, rate: float
) -> NormalMode:
    """The ``"budget"`` cut on 1-D values (higher = more anomalous), and the normal mode.

    Zero-inflated values (a share of ink, a count: most images exactly at one value, the
    rest spread to its right) are a point mass and a continuous tail. When the normal mode is
    such a point mass (it holds at least half the values), the density right next to it is
    empty by construction, and the first dense stretch of the tail would pass for a second
    population; the valley is looked for within the tail instead, climbing from its lowest
    value, with the budget counted on every value.

    Parameters
    ----------
    values : ndarray of shape (n,)
        The pool's values (for scores: their :func:`log_scores`).
    trusted_values : ndarray or None
        The trusted images' values; where the climb to the normal mode starts (the pool's
        median without them).
    rate : float
        The false-drop budget: without a valley the cut is the ``1 - rate`` quantile.

    Returns
    -------
    NormalMode
        ``cut``, ``mode`` and ``spread`` (robust SD of the mode's left side).
    """
    v, start = _sorted_and_start(values, trusted_values)
    found = _mode_and_cut(v, start, rate)
    if (found.depth >= 1.0 and trusted_values is not None and len(trusted_values)
            and len(v) >= MAJORITY_COMPONENTS  # a mixture needs a few values
            and np.mean(v > np.max(trusted_values)) > MAJORITY_BEYOND_TRUSTED):
        return _majority_cut(v, trusted_values, rate)
    atom = float(np.median(v)) if len(v) else 0.0
    if (len(v) >= 4 and np.mean(v == atom) >= 0.5
            and abs(found.mode - atom) <= np.ptp(v) / 256):  # the climb ended on the atom
        tail = v[v > atom]
        if len(tail):
            in_tail = _mode_and_cut(tail, float(tail[0]), min(1.0, rate * len(v) / len(tail)))
            return found._replace(cut=in_tail.cut, depth=in_tail.depth)
    return found


def _sorted_and_start(values: np.ndarray, trusted_values: np.ndarray | None
                      ) -> tuple[np.ndarray, float | None]:
    """The finite values sorted, and where the climb to the normal mode starts: the trusted
    values' median (None without them: the values' own median)."""
    v = np.sort(np.asarray(values, dtype=np.float64))
    start = (float(np.median(trusted_values)) if trusted_values is not None
             and len(trusted_values) else None)
    return v[np.isfinite(v)], start


def _mode_and_cut(v: np.ndarray, start: float | None, rate: float) -> NormalMode:
    """:func:`normal_mode_cut` on sorted finite values, climbing from ``start`` (the median
    when None)."""
    if len(v) < 4 or np.ptp(v) < 1e-12:
        top = float(v.max()) if len(v) else 0.0
        return NormalMode(top, top, 0.0)
    centers, dens, h, i = _density_and_mode(v, start)
    bins, width = len(centers), centers[1] - centers[0]
    mode, peak = float(centers[i]), float(dens[i])
    below = v[v <= mode]
    # Robust spread of the normal mode's left side (pollution seldom lies there; a long
    # left tail, e.g. of log-distances near 0, must not inflate it).
    sd_left = 1.4826 * float(np.median(mode - below)) if len(below) > 5 else h
    # The height VALLEY_RISE_IMAGES images at one value add to the smoothed histogram.
    rise = VALLEY_RISE_IMAGES / (np.sqrt(2 * np.pi) * h / width)
    # The valley is the low point beyond VALLEY_MIN_SD left-side SDs: a lower point left of
    # that floor (a flat stretch of the normal tail) must not hide the valley after it.
    floor = max(i + 1, int(np.searchsorted(centers, mode + VALLEY_MIN_SD * sd_left, "right")))
    end = _valley(dens, floor, VALLEY_DEPTH * peak, rise)
    # A valley at the floor itself: the density already rises there, and its low point lies
    # nearer the mode (issue 34: the floor fell on the second population's rising edge,
    # 0.12 log-units past the low point, and 53 of 798 Fashion-MNIST images between the two
    # passed). Descend to it; the mode's own peak bounds the descent.
    if end == floor < bins - 1:
        while end > i + 1 and dens[end - 1] < dens[end]:
            end -= 1
    if end == bins - 1 and floor > i + 1:
        # None beyond the floor: a valley nearer the mode still counts when it is emptier
        # than a Gaussian normal population is at the floor itself. The left side's SD
        # overstates the right side's when the normal mode is skewed left (a log-distance
        # after self-training, issue 34: the floor lay on the pollution's own peak, 2 SDs
        # of 0.94 above the mode, the empty valley at 1 SD was never looked at, and half the
        # pollution passed the budget quantile).
        end = _valley(dens, i + 1, np.exp(-VALLEY_MIN_SD ** 2 / 2) * peak, rise)
    if end < bins - 1:
        # A second population: cut at the valley, the density's low point between the two.
        # A quantile of the part left of it would lie further left, inside the normal
        # tail, when the pollution is the larger population and pulls the valley towards
        # the normal data.
        return NormalMode(float(centers[end]), mode, sd_left, float(dens[end] / peak))
    # "higher": at most rate * n values lie above the cut, whatever the ties.
    return NormalMode(float(np.quantile(v, 1.0 - rate, method="higher")), mode, sd_left)


def _density_and_mode(v: np.ndarray, start: float | None
                      ) -> tuple[np.ndarray, np.ndarray, float, int]:
    """The smoothed density of sorted values ``v`` (at least 4, not all equal) on 1,024 bins:
    bin centres, density, bandwidth, and the bin of the normal mode climbed to from
    ``start`` (the median when None)."""
    from scipy.ndimage import gaussian_filter1d

    q25, q75 = np.quantile(v, [0.25, 0.75])
    spread = min(float(np.std(v)), (q75 - q25) / 1.349) or float(np.std(v))
    # Half of Silverman's bandwidth: two populations close together must stay two peaks.
    h = max(0.45 * spread * len(v) ** -0.2, 1e-9)
    bins = 1024
    hist, edges = np.histogram(v, bins=bins, range=(v[0] - 3 * h, v[-1] + 3 * h))
    width = edges[1] - edges[0]
    dens = gaussian_filter1d(hist.astype(np.float64), h / width)
    centers = (edges[:-1] + edges[1:]) / 2
    start = float(np.median(v)) if start is None else start
    i = int(np.clip(np.searchsorted(centers, start), 0, bins - 1))
    # Hill-climb to the nearest peak of a twice smoother density, the normal mode: a ripple
    # of the normal population (e.g. the images self-training fits best) is not a mode.
    smooth = gaussian_filter1d(hist.astype(np.float64), 2 * h / width)
    while True:
        if i + 1 < bins and smooth[i + 1] > smooth[i]:
            i += 1
        elif i > 0 and smooth[i - 1] > smooth[i]:
            i -= 1
        else:
            break
    return centers, dens, h, i


def density_share(values: np.ndarray, trusted_values: np.ndarray | None, at: float) -> float:
    """The smoothed density of ``values`` at ``at`` as a share of the normal mode's peak (the
    density :func:`normal_mode_cut` reads, climbed to from the trusted values' median); 1.0
    for fewer than 4 distinct values."""
    v, start = _sorted_and_start(values, trusted_values)
    if len(v) < 4 or np.ptp(v) < 1e-12:
        return 1.0
    centers, dens, _, i = _density_and_mode(v, start)
    j = int(np.clip(np.searchsorted(centers, at), 0, len(centers) - 1))
    return float(dens[j] / dens[i]) if dens[i] > 0 else 1.0


def _valley(dens: np.ndarray, first: int, below: float, rise: float) -> int:
    """Index of the first valley of the smoothed density ``dens`` from bin ``first`` on: its
    low point, lower than ``below``, after which the density rises by ``rise`` (or holds more
    images than it would at the valley's level, :func:`_holds_more`) and to at least
    :data:`VALLEY_RATIO` times the valley's own; the last bin when there is none."""
    end, lowest = len(dens) - 1, first
    images_up_to = np.cumsum(dens)
    for j in range(first, len(dens)):
        if dens[j] <= dens[lowest]:  # the rightmost point of a flat valley
            lowest = j
        if dens[lowest] >= below or dens[j] <= VALLEY_RATIO * dens[lowest]:
            continue
        if dens[j] > dens[lowest] + rise or _holds_more(
                images_up_to[j] - images_up_to[lowest], dens[lowest] * (j - lowest)):
            end = lowest
            break
    return end


def _holds_more(images: float, at_valley_level: float) -> bool:
    """Whether ``images`` found between a valley and a point beyond it are more than the
    ``at_valley_level`` a density that stayed at the valley's level would hold there, by a
    factor :data:`VALLEY_RATIO` and by :data:`VALLEY_RISE_Z` Poisson standard deviations."""
    return (images >= VALLEY_RATIO * at_valley_level
            and images - at_valley_level > VALLEY_RISE_Z * np.sqrt(images + at_valley_level))


def _majority_cut(v: np.ndarray, trusted_values: np.ndarray, rate: float) -> NormalMode:
    """The ``1 - rate`` quantile of the normal part of sorted values ``v`` that are mostly
    pollution. A Gaussian mixture (components chosen by BIC, up to
    :data:`MAJORITY_COMPONENTS`) is fitted to ``v``; the normal part is the component that
    holds most of the trusted values and every component below it (pollution scores higher)."""
    from scipy.stats import norm

    rng = np.random.default_rng(0)
    sub = (v if len(v) <= MAJORITY_MAX_VALUES else rng.choice(v, MAJORITY_MAX_VALUES, False)
           )[:, None]
    gm = min((GaussianMixture(k, random_state=0).fit(sub)
              for k in range(1, MAJORITY_COMPONENTS + 1)), key=lambda g: g.bic(sub))
    means = gm.means_.ravel()
    held = gm.predict_proba(np.asarray(trusted_values, np.float64)[:, None]).mean(axis=0)
    main = int(np.argmax(held))
    normal = means <= means[main]
    sds = np.sqrt(gm.covariances_.ravel())
    weights = gm.weights_[normal] / gm.weights_[normal].sum()
    grid = np.linspace(v[0], v[-1], 4096)
    cdf = (weights * norm.cdf((grid[:, None] - means[normal]) / sds[normal])).sum(axis=1)
    cut = float(grid[min(int(np.searchsorted(cdf, 1.0 - rate)), len(grid) - 1)])
    # The normal mode and spread are the main normal component's.
    return NormalMode(max(cut, float(means[main])), float(means[main]), float(sds[main]))


def budget_threshold(scores: np.ndarray, trusted_scores: np.ndarray | None = None,
                     rate: float = DEFAULT_BUDGET) -> float:
    """Threshold of the ``"budget"`` policy on raw scores (see :func:`normal_mode_cut`)."""
    s = np.asarray(scores, dtype=np.float64)
    if len(s) == 0:
        return 0.0
    logs = log_scores(s)
    t_logs = None if trusted_scores is None or len(trusted_scores) == 0 else log_scores(
        trusted_scores, s)
    cut = normal_mode_cut(logs, t_logs, rate).cut
    # Back to the score scale: the smallest pool score whose log exceeds the cut stays flagged.
    kept = s[logs <= cut]
    return float(kept.max()) if len(kept) else float(s.min()) - 1e-12


def estimate_contamination(n_flagged: int, n: int, rate: float,
                           confidence: float = 0.95) -> dict[str, float]:
    """Estimated share of pollution in a pool of ``n`` from its ``n_flagged`` verdicts.

    The flagged share ``f`` overstates pollution by the false drops (``rate`` of the normal
    data) and understates it by the pollution the cut misses, so the estimate
    ``(f - rate) / (1 - rate)`` is a lower estimate when recall is low. The interval is the
    Clopper-Pearson interval of ``f`` carried through the same correction.

    Returns
    -------
    dict
        ``estimate``, ``low``, ``high`` (fractions in [0, 1]) and ``confidence``.
    """
    from scipy.stats import binomtest

    if n <= 0:
        return {"estimate": 0.0, "low": 0.0, "high": 1.0, "confidence": confidence}
    ci = binomtest(int(n_flagged), int(n)).proportion_ci(confidence, method="exact")

    def correct(f: float) -> float:
        return float(np.clip((f - rate) / (1.0 - rate), 0.0, 1.0))

    return {"estimate": correct(n_flagged / n), "low": correct(ci.low),
            "high": correct(ci.high), "confidence": confidence}


def gmm_threshold(
    scores: np.ndarray,
    min_separation: float = 2.0,
    random_state: int = 0,
    trusted_scores: np.ndarray | None = None,
) -> float:
    """Threshold between the two components of a Gaussian mixture on log scores.

    Parameters
    ----------
    scores : ndarray of shape (n,)
        Pool scores, higher = more anomalous.
    min_separation : float
        Smallest Ashman's D, ``sqrt(2) |m1 - m2| / sqrt(s1^2 + s2^2)``, for which the mixture
        is believed bimodal; below it the threshold is ``mean + 3 std`` of the log scores.
    random_state : int
        Seed of the mixture's initialisation.
    trusted_scores : ndarray, optional
        Scores of the trusted normal images; the upper component counts as anomalous only when
        its mean lies above all of them.

    Returns
    -------
    float
        Threshold on the original score scale.
    """
    s = np.asarray(scores, dtype=np.float64)
    shift = log_shift(s)
    logs = np.log(s + shift)
    if len(logs) < 4 or np.ptp(logs) < 1e-12:
        return float(s.max())
    gm = GaussianMixture(2, random_state=random_state, n_init=2).fit(logs[:, None])
    means = gm.means_.ravel()
    sds = np.sqrt(gm.covariances_.ravel())
    lo, hi = np.argsort(means)
    d = np.sqrt(2) * abs(means[hi] - means[lo]) / np.sqrt(sds[lo] ** 2 + sds[hi] ** 2)
    above_trusted = trusted_scores is None or len(trusted_scores) == 0 or means[hi] > np.log(
        max(float(np.max(trusted_scores)) + shift, 1e-300))
    if d < min_separation or gm.weights_[hi] < 1e-3 or not above_trusted:
        t_log = logs.mean() + 3 * logs.std()
    else:
        grid = np.linspace(means[lo], means[hi], 2001)
        post = gm.predict_proba(grid[:, None])[:, hi]
        above = np.nonzero(post >= GMM_POSTERIOR)[0]
        t_log = grid[above[0]] if len(above) else means[hi]
    return float(np.exp(t_log) - shift)


def compute_threshold(
    policy: str,
    pool_scores: np.ndarray,
    trusted_scores: np.ndarray | None = None,
    value: float | None = None,
    random_state: int = 0,
) -> float:
    """Threshold for ``policy`` (see the module docstring for how each behaves).

    Raises
    ------
    ValueError
        Unknown policy, missing ``value`` for ``"fixed"``, or ``"trusted-quantile"`` without
        trusted scores.
    """
    check_policy_value(policy, value)
    if policy == "budget":
        return budget_threshold(pool_scores, trusted_scores,
                                DEFAULT_BUDGET if value is None else value)
    if policy == "gmm":
        return gmm_threshold(pool_scores, 2.0 if value is None else value, random_state,
                             trusted_scores)
    if policy == "trusted-quantile":
        if trusted_scores is None or len(trusted_scores) == 0:
            raise ValueError(
                "threshold_policy='trusted-quantile' needs trusted images: pass trusted to fit()"
            )
        return float(np.quantile(trusted_scores, 1.0 if value is None else value))
    if policy == "contamination":
        rate = 0.1 if value is None else value
        return float(np.quantile(pool_scores, 1.0 - rate))
    return float(value)
