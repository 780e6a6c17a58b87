"""Evidence from the BiGAN's reconstruction: the paper's score, read from above and below,
and its largest local residual.

global (:class:`GlobalScore`)
    ``log A(x)``, the paper's score (``alpha L_G + (1 - alpha) L_D``, as the detector mixes
    and normalises it): images the networks explain badly.
global-from-below (:class:`GlobalFromBelow`)
    ``-log A(x)``: images the networks explain *better* than any normal one (the typicality
    test of Nalisnick et al., 2019, on ``A(x)``). A reconstruction error grows with an
    image's ink and complexity, so pollution simpler than the normal data (digits among
    clothes) reconstructs best of all. Measured (seed 0): on the reverse protocol
    (Fashion-MNIST normal, 20 % MNIST digits) test AUC 0.16 -> 0.77 from the shipped
    meta-model, but 0.47 -> 0.35 from a Fashion-MNIST meta-model (``benchmarks/shapes.py``);
    public protocol 0.9996 -> 0.9992. Not in the default evidence: the digits overlap the
    simplest clothes (no valley), so its verdicts still flag almost none of them, and the
    gain does not hold across meta-models.
local (:class:`LocalResidual`)
    ``log`` of the largest mean residual ``|x - G(E(x))|`` over any ``window`` x ``window``
    patch: a small patch the generator never draws stands out however little of the image it
    covers. Unweighted: the per-pixel weights adapt to the pseudo-normal set, so a patch the
    pollution carries everywhere would be weighted away.
"""

from __future__ import annotations

from numbers import Integral
from typing import Any, ClassVar

import numpy as np
from sklearn.utils._param_validation import Interval

from fedsieve.shared.detectors.evidence.piece import Batch, EvidencePiece, register

#: Floor under a score before its log (a perfect reconstruction is 0).
LOG_FLOOR = 1e-12


def _log(values: np.ndarray) -> np.ndarray:
    return np.log(np.maximum(values, LOG_FLOOR))


@register
class GlobalScore(EvidencePiece):
    """The paper's score ``A(x)`` on a log scale (see the module)."""

    name = "global"

    def values(self, batch: Batch) -> np.ndarray:
        return _log(batch.reconstruction().score)


@register
class GlobalFromBelow(EvidencePiece):
    """``-log A(x)``: images simpler than any normal one (see the module)."""

    name = "global-from-below"

    def values(self, batch: Batch) -> np.ndarray:
        return -_log(batch.reconstruction().score)


@register
class LocalResidual(EvidencePiece):
    """The largest mean residual over any ``window`` x ``window`` patch, on a log scale.

    Parameters
    ----------
    window : int, default=5
        Side of the patches; at most the images' smaller side.
    """

    name = "local"
    _parameter_constraints: ClassVar[dict[str, list[Any]]] = {
        "window": [Interval(Integral, 1, None, closed="left")]}

    def __init__(self, window: int = 5) -> None:
        self.window = window

    @property
    def residual_window(self) -> int:
        return int(self.window)

    def fit(self, pool: Batch, trusted: Batch, context: Any) -> bool:
        self._validate_params()
        side = min(pool.images.shape[2:])
        if int(self.window) > side:
            raise ValueError(f"LocalResidual(window={self.window}) is larger than the "
                             f"{pool.images.shape[2]}x{pool.images.shape[3]} images; use at "
                             f"most {side}")
        return True

    def values(self, batch: Batch) -> np.ndarray:
        return _log(batch.reconstruction().local)
