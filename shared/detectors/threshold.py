"""Threshold policies: turn anomaly scores into verdicts (1 = anomaly).

Four policies, chosen with ``threshold_policy`` and parameterised by ``threshold_value``:

``"gmm"`` (default, unsupervised)
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

import numpy as np
from sklearn.mixture import GaussianMixture

POLICIES = ("gmm", "trusted-quantile", "contamination", "fixed")
#: Posterior of the anomalous mixture component at which ``"gmm"`` cuts.
GMM_POSTERIOR = 0.5


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
    if policy == "contamination" and value is not None and not 0.0 < value < 0.5 + 1e-9:
        raise ValueError(f"contamination threshold_value must be in (0, 0.5], got {value}")
    if policy == "trusted-quantile" and value is not None and not 0.0 <= value <= 1.0:
        raise ValueError(f"trusted-quantile threshold_value must be in [0, 1], got {value}")


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
    shift = 0.0 if s.min() > 0 else 1e-6 - s.min() + 1e-3 * (np.ptp(s) + 1e-12)
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
