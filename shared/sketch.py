"""Mergeable fixed-grid histogram sketches of anomaly scores, for federated quantiles.

In local screening mode a client scores its own samples with the shipped detector and never
uploads an image. Instead of the per-sample scores it may upload a :class:`ScoreSketch`: a
histogram of its scores on a grid every party agrees on beforehand (:class:`SketchGrid`). The
server merges the clients' sketches (:meth:`ScoreSketch.merge`) and reads federated quantiles
(:meth:`ScoreSketch.quantile`) or a pseudo-sample (:meth:`ScoreSketch.expand`) that the
existing threshold policies take.

Why a fixed grid
----------------
The bins are uniform in ``u = arcsinh(x / scale)`` over ``[-limit, limit]``: roughly linear
within ``scale`` of zero and logarithmic beyond, so one grid serves scores of either sign and
of any magnitude (log-scores, calibrated scores around 0, reconstruction errors up to ~1e4 or
more). Fixing the grid up front, rather than adapting it to each client's data as t-digests or
KLL sketches do, buys three things:

- **Exact merge.** Every client counts into the same bins, so merging adds counts: the merge
  of the clients' sketches *is* the sketch of the pooled scores, independent of how the scores
  were split over clients and of the merge order.
- **Bounded error.** Wherever the scores are denser than the grid, a quantile read from a
  sketch lies in the same bin as numpy's quantile of the pooled scores, so the error is at most
  one bin width: ``scale * 2 * limit / bins`` near zero and a relative ``~2 * limit / bins``
  (1.6 % with the defaults) for ``|x| >> scale``. In a sparse tail it is at most the width of
  the bins of the two pooled scores numpy interpolates between, and
  :meth:`ScoreSketch.quantile_bounds` gives guaranteed bounds (see :meth:`ScoreSketch.quantile`).
- **Constant size.** A sketch holds ``bins`` counts and the exact minimum and maximum,
  whatever the number of samples: 8 KiB + 16 B with the default 2048 bins
  (:attr:`ScoreSketch.nbytes`).

What the server learns
----------------------
Only the histogram: how many of a client's scores fall into each bin, their number, and the
exact smallest and largest score. No individual score beyond those two, no sample, no
ordering, no sample ids. (The histogram is not differentially private: a client with few
samples, or an isolated outlier, is still visible as a count in its bin.)

Wire format
-----------
:meth:`ScoreSketch.to_record` gives a ``RecordDict`` with two records:

- :data:`SKETCH_RECORD` (``"fedsieve.sketch"``), an ``ArrayRecord`` with ``"counts"``
  (``bins`` counts, uint32 when they all fit, else int64) and ``"range"`` (float64
  ``[minimum, maximum]``, NaN for an empty sketch);
- :data:`SKETCH_GRID` (``"fedsieve.sketch_grid"``), a ``ConfigRecord`` with ``"bins"`` (int),
  ``"limit"`` and ``"scale"`` (float): :meth:`SketchGrid.to_config`.

:meth:`ScoreSketch.from_record` reads it back on the server, treating it as hostile input: it
returns a valid sketch or raises :class:`~fedsieve.shared.protocol.ProtocolError` (a
``ValueError``) naming what is wrong, never anything else.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict
from numpy.typing import ArrayLike, NDArray

from fedsieve.shared.protocol import MAX_LOCAL_SAMPLES, ProtocolError

__all__ = [
    "SKETCH_GRID",
    "SKETCH_RECORD",
    "ScoreSketch",
    "SketchGrid",
]

#: Name of the ``ArrayRecord`` holding a sketch's ``counts`` and ``range`` arrays.
SKETCH_RECORD = "fedsieve.sketch"
#: Name of the ``ConfigRecord`` holding a sketch's grid (``bins``, ``limit``, ``scale``).
SKETCH_GRID = "fedsieve.sketch_grid"

_MIN_BINS = 16
_MAX_BINS = 65_536
#: Largest total count a sketch may hold (sums of int64 counts stay exact below it).
_MAX_TOTAL = 2**62
_UINT32_MAX = int(np.iinfo(np.uint32).max)


@dataclass(frozen=True)
class SketchGrid:
    """The bins every party of a federation sketches its scores into.

    Bins are uniform in ``u = arcsinh(x / scale)`` over ``[-limit, limit]``; values beyond
    ``±scale * sinh(limit)`` (about ±4.4e6 with the defaults) land in the two end bins.

    Parameters
    ----------
    bins : int, default 2048
        Number of bins, 16..65536. Each bin is ``2 * limit / bins`` wide in ``u``.
    limit : float, default 16.0
        Half-width of the grid in ``u``; positive, and ``scale * sinh(limit)`` must be a finite
        float.
    scale : float, default 1.0
        Where the grid turns from linear to logarithmic: bins are about
        ``scale * 2 * limit / bins`` wide for ``|x| << scale`` and a relative
        ``2 * limit / bins`` of ``|x|`` for ``|x| >> scale``. Positive and finite.

    Raises
    ------
    ValueError
        When a field is out of range; the message names the field and what is allowed.
    """

    bins: int = 2048
    limit: float = 16.0
    scale: float = 1.0

    def __post_init__(self) -> None:
        bins, limit, scale = self.bins, self.limit, self.scale
        if isinstance(bins, bool) or not isinstance(bins, int | np.integer):
            raise ValueError(f"sketch grid 'bins' must be an integer in "
                             f"{_MIN_BINS}..{_MAX_BINS}, got {bins!r}")
        if not _MIN_BINS <= bins <= _MAX_BINS:
            raise ValueError(f"sketch grid 'bins' must lie in {_MIN_BINS}..{_MAX_BINS}, "
                             f"got {bins}")
        for name, value in (("limit", limit), ("scale", scale)):
            if isinstance(value, bool) or not isinstance(value, int | float | np.number):
                raise ValueError(f"sketch grid {name!r} must be a positive finite number, "
                                 f"got {value!r}")
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"sketch grid {name!r} must be a positive finite number, "
                                 f"got {value!r}")
        try:
            top = float(scale) * math.sinh(float(limit))
        except OverflowError:
            top = math.inf
        if not math.isfinite(top):
            raise ValueError(f"sketch grid 'limit' {limit!r} is too large for scale "
                             f"{scale!r}: scale * sinh(limit) must be a finite float "
                             f"(limit <= ~709 with scale 1)")
        object.__setattr__(self, "bins", int(bins))
        object.__setattr__(self, "limit", float(limit))
        object.__setattr__(self, "scale", float(scale))

    @property
    def du(self) -> float:
        """Width of every bin in ``u = arcsinh(x / scale)``: ``2 * limit / bins``."""
        return 2.0 * self.limit / self.bins

    def u_edges(self) -> NDArray[np.float64]:
        """Bin edges in ``u`` space.

        Returns
        -------
        numpy.ndarray
            float64, ``bins + 1`` edges from ``-limit`` to ``limit``.
        """
        return np.linspace(-self.limit, self.limit, self.bins + 1)

    def edges(self) -> NDArray[np.float64]:
        """Bin edges in score (``x``) space.

        Returns
        -------
        numpy.ndarray
            float64, ``bins + 1`` increasing edges ``scale * sinh(u_edges())``. The end bins
            also hold everything beyond the outer edges.
        """
        return self.scale * np.sinh(self.u_edges())

    def to_u(self, x: ArrayLike) -> NDArray[np.float64]:
        """Map scores to grid coordinates ``u = arcsinh(x / scale)``.

        Parameters
        ----------
        x : array_like
            Scores.

        Returns
        -------
        numpy.ndarray
            float64 array of the shape of ``x``.
        """
        return np.arcsinh(np.asarray(x, dtype=np.float64) / self.scale)

    def index(self, x: ArrayLike) -> NDArray[np.int64]:
        """The bin of each value.

        Parameters
        ----------
        x : array_like
            Scores; ``±inf`` and values beyond the grid go to the end bins.

        Returns
        -------
        numpy.ndarray
            int64 bin indices in ``0..bins - 1``, of the shape of ``x``.

        Raises
        ------
        ValueError
            When ``x`` holds NaN.
        """
        u = self.to_u(x)
        if np.isnan(u).any():
            raise ValueError(f"cannot bin NaN scores ({int(np.isnan(u).sum())} NaN)")
        position = np.floor((u + self.limit) * (self.bins / (2.0 * self.limit)))
        return np.clip(position, 0, self.bins - 1).astype(np.int64)

    def bin_width_at(self, x: ArrayLike) -> float | NDArray[np.float64]:
        """Width in score space of the bin holding each value.

        Parameters
        ----------
        x : array_like
            Scores.

        Returns
        -------
        float or numpy.ndarray
            ``edges()[k + 1] - edges()[k]`` for the bin ``k = index(x)``; ``inf`` beyond the
            outer edges, where the end bins are unbounded. A float for a scalar ``x``.
        """
        values = np.asarray(x, dtype=np.float64)
        edges = self.edges()
        k = self.index(values)
        width = np.where((values >= edges[0]) & (values <= edges[-1]),
                         edges[k + 1] - edges[k], np.inf)
        return float(width) if width.ndim == 0 else width

    def to_config(self) -> ConfigRecord:
        """The grid as a Flower ``ConfigRecord`` (``bins``: int, ``limit``, ``scale``: float).

        Returns
        -------
        flwr.app.ConfigRecord
        """
        return ConfigRecord({"bins": self.bins, "limit": self.limit, "scale": self.scale})

    @classmethod
    def from_config(cls, record: ConfigRecord) -> SketchGrid:
        """Read a grid from a ``ConfigRecord`` written by :meth:`to_config`.

        Parameters
        ----------
        record : flwr.app.ConfigRecord
            Must hold ``bins`` (int in 16..65536), ``limit`` and ``scale`` (positive finite
            numbers). Other keys are ignored.

        Returns
        -------
        SketchGrid

        Raises
        ------
        ValueError
            When a key is missing or a value is out of range; the message names the field.
        """
        if not isinstance(record, ConfigRecord):
            raise ValueError(f"sketch grid must be a ConfigRecord, got {type(record).__name__}")
        fields = {}
        for name in ("bins", "limit", "scale"):
            if name not in record:
                raise ValueError(f"sketch grid lacks {name!r} (needs bins, limit and scale)")
            fields[name] = record[name]
        return cls(**fields)


@dataclass(frozen=True, eq=False)
class ScoreSketch:
    """A histogram of scores on a :class:`SketchGrid`, with the exact minimum and maximum.

    Build one with :meth:`of`; combine with :meth:`merge` or ``+`` (also ``sum(sketches)``).
    Construction validates the fields, so every sketch is consistent.

    Parameters
    ----------
    grid : SketchGrid
        The bins.
    counts : numpy.ndarray
        Non-negative integer counts, one per bin (stored as a read-only int64 copy).
    count : int
        Total number of values; must equal ``counts.sum()``.
    minimum, maximum : float
        Exact smallest and largest value: finite, in the first and last non-empty bin
        respectively; NaN for an empty sketch.

    Raises
    ------
    ValueError
        When the fields are inconsistent.
    """

    grid: SketchGrid
    counts: NDArray[np.int64]
    count: int
    minimum: float
    maximum: float

    def __post_init__(self) -> None:
        grid = self.grid
        if not isinstance(grid, SketchGrid):
            raise ValueError(f"grid must be a SketchGrid, got {type(grid).__name__}")
        counts = self.counts
        if not isinstance(counts, np.ndarray):
            raise ValueError(f"counts must be a numpy array, got {type(counts).__name__}")
        if counts.dtype.kind not in "iu":
            raise ValueError(f"counts must be integers, got dtype {counts.dtype}")
        if counts.shape != (grid.bins,):
            raise ValueError(f"counts must be 1-D with one count per bin ({grid.bins}), "
                             f"got shape {counts.shape}")
        if counts.size and counts.min() < 0:
            raise ValueError(f"counts must be non-negative, got {int((counts < 0).sum())} "
                             f"negative count(s) (smallest {int(counts.min())})")
        if counts.size and counts.max() > _MAX_TOTAL:
            raise ValueError(f"a count of {int(counts.max())} exceeds {_MAX_TOTAL}")
        counts = counts.astype(np.int64)  # a copy, so the caller's array cannot change it
        if counts.sum(dtype=np.float64) > _MAX_TOTAL:
            raise ValueError(f"total count exceeds {_MAX_TOTAL}")
        total = int(counts.sum())
        count = self.count
        if isinstance(count, bool) or not isinstance(count, int | np.integer):
            raise ValueError(f"count must be an integer, got {count!r}")
        if int(count) != total:
            raise ValueError(f"count {count} does not match the sum of the counts ({total})")
        minimum, maximum = float(self.minimum), float(self.maximum)
        if total == 0:
            if not (math.isnan(minimum) and math.isnan(maximum)):
                raise ValueError(f"an empty sketch must have NaN minimum and maximum, got "
                                 f"{minimum!r} and {maximum!r}")
        else:
            if not (math.isfinite(minimum) and math.isfinite(maximum)):
                raise ValueError(f"minimum and maximum of a sketch of {total} values must be "
                                 f"finite, got {minimum!r} and {maximum!r}")
            if minimum > maximum:
                raise ValueError(f"minimum {minimum!r} exceeds maximum {maximum!r}")
            if total == 1 and minimum != maximum:
                raise ValueError(f"a sketch of one value has minimum {minimum!r} != maximum "
                                 f"{maximum!r}")
            occupied = np.flatnonzero(counts)
            first, last = int(occupied[0]), int(occupied[-1])
            if int(grid.index(minimum)) != first:
                raise ValueError(f"minimum {minimum!r} is in bin {int(grid.index(minimum))} "
                                 f"but the first non-empty bin is {first}")
            if int(grid.index(maximum)) != last:
                raise ValueError(f"maximum {maximum!r} is in bin {int(grid.index(maximum))} "
                                 f"but the last non-empty bin is {last}")
        counts.flags.writeable = False
        object.__setattr__(self, "counts", counts)
        object.__setattr__(self, "count", total)
        object.__setattr__(self, "minimum", minimum)
        object.__setattr__(self, "maximum", maximum)

    # -- building and merging ----------------------------------------------------------------
    @classmethod
    def of(cls, values: ArrayLike, grid: SketchGrid | None = None) -> ScoreSketch:
        """Sketch a set of scores.

        Parameters
        ----------
        values : array_like
            Scores, any shape (flattened); may be empty.
        grid : SketchGrid, optional
            The bins; ``SketchGrid()`` when omitted. All sketches to be merged need the same.

        Returns
        -------
        ScoreSketch

        Raises
        ------
        ValueError
            When ``values`` holds NaN or ``±inf`` (the message says how many).
        """
        grid = SketchGrid() if grid is None else grid
        x = np.asarray(values, dtype=np.float64).ravel()
        bad = int(np.count_nonzero(~np.isfinite(x)))
        if bad:
            raise ValueError(f"cannot sketch non-finite scores: {bad} of {x.size} values are "
                             "NaN or ±inf; fix or drop them before sketching")
        counts = np.bincount(grid.index(x), minlength=grid.bins).astype(np.int64)
        if x.size == 0:
            return cls(grid, counts, 0, math.nan, math.nan)
        return cls(grid, counts, int(x.size), float(x.min()), float(x.max()))

    @classmethod
    def merge(cls, *sketches: ScoreSketch) -> ScoreSketch:
        """Merge sketches exactly: the result is the sketch of the pooled values.

        Counts add and the minimum and maximum combine, so the result does not depend on the
        order of the sketches.

        Parameters
        ----------
        *sketches : ScoreSketch
            At least one; all on the same grid.

        Returns
        -------
        ScoreSketch

        Raises
        ------
        ValueError
            When no sketch is given, or the grids differ.
        """
        if not sketches:
            raise ValueError("merge needs at least one sketch")
        for sketch in sketches:
            if not isinstance(sketch, ScoreSketch):
                raise ValueError(f"can only merge ScoreSketch objects, got "
                                 f"{type(sketch).__name__}")
        grid = sketches[0].grid
        for sketch in sketches[1:]:
            if sketch.grid != grid:
                raise ValueError(f"cannot merge sketches on different grids: {grid} and "
                                 f"{sketch.grid}")
        counts = np.zeros(grid.bins, np.int64)
        for sketch in sketches:
            counts += sketch.counts
        occupied = [s for s in sketches if s.count]
        if not occupied:
            return cls(grid, counts, 0, math.nan, math.nan)
        return cls(grid, counts, int(counts.sum()), min(s.minimum for s in occupied),
                   max(s.maximum for s in occupied))

    def __add__(self, other: object) -> ScoreSketch:
        if not isinstance(other, ScoreSketch):
            return NotImplemented
        return ScoreSketch.merge(self, other)

    def __radd__(self, other: object) -> ScoreSketch:
        if isinstance(other, int) and not isinstance(other, bool) and other == 0:
            return self  # sum(sketches) starts from 0
        if not isinstance(other, ScoreSketch):
            return NotImplemented
        return ScoreSketch.merge(other, self)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ScoreSketch):
            return NotImplemented
        return (self.grid == other.grid and self.count == other.count
                and np.array_equal(self.counts, other.counts)
                and _same_float(self.minimum, other.minimum)
                and _same_float(self.maximum, other.maximum))

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (f"ScoreSketch(grid={self.grid}, count={self.count}, minimum={self.minimum!r}, "
                f"maximum={self.maximum!r})")

    # -- reading ------------------------------------------------------------------------------
    def quantile(self, q: ArrayLike) -> float | NDArray[np.float64]:
        """Estimate quantiles of the sketched values.

        Follows numpy's default ('linear') rule: the ``q`` quantile of ``n`` values is
        ``(1 - f) * x[j] + f * x[j + 1]`` with ``x`` sorted, ``j + f = q * (n - 1)``. Each order
        statistic ``x[j]`` is estimated inside the bin the counts place it in: the bin's values
        are spread evenly in ``u`` over the bin (midpoint ranks, ``(i + 0.5) / c`` of the way
        through it), the bin being narrowed to ``[minimum, maximum]``; ``x[0]`` and ``x[n - 1]``
        are the exact minimum and maximum. So ``q = 0`` gives the minimum, ``q = 1`` the
        maximum, and the result is non-decreasing in ``q``.

        Error bound: the estimate and the true quantile of the sketched (pooled) values both lie
        in :meth:`quantile_bounds`, and ``|error| <= (1 - f) * w(x[j]) + f * w(x[j + 1])``,
        ``w`` the width of the bin holding that order statistic (:meth:`bin_width_at`, whose end
        bins reach out to the minimum and maximum). Where ``x[j]`` and ``x[j + 1]`` share a bin
        -- everywhere the data are denser than the grid -- the estimate lies in the same bin as
        numpy's quantile of the pooled values, so ``|error| <= bin_width_at(that quantile)``:
        at most one bin width in ``u``. Only where neighbouring values lie in different bins (a
        sparse far tail) can the error exceed the width of the true quantile's bin, and then it
        is still at most the wider of the two neighbours' bins.

        Parameters
        ----------
        q : float or array_like
            Probabilities in ``[0, 1]``.

        Returns
        -------
        float or numpy.ndarray
            A float for a scalar ``q``, else an array of the shape of ``q``.

        Raises
        ------
        ValueError
            When the sketch is empty or ``q`` is outside ``[0, 1]``.
        """
        probabilities = self._probabilities(q)
        estimate, _, _ = self._interpolate(probabilities.ravel())
        return _out(estimate.reshape(probabilities.shape))

    def quantile_bounds(
        self, q: ArrayLike
    ) -> tuple[float | NDArray[np.float64], float | NDArray[np.float64]]:
        """Guaranteed bounds on the true quantiles of the sketched values.

        Parameters
        ----------
        q : float or array_like
            Probabilities in ``[0, 1]``.

        Returns
        -------
        (low, high) : tuple of float or numpy.ndarray
            numpy's ('linear') quantile of the values the sketch was built from lies in
            ``[low, high]`` (up to floating-point rounding of the bin edges), and so does
            :meth:`quantile`. Each is a float for a scalar ``q``.

        Raises
        ------
        ValueError
            When the sketch is empty or ``q`` is outside ``[0, 1]``.
        """
        probabilities = self._probabilities(q)
        _, low, high = self._interpolate(probabilities.ravel())
        return _out(low.reshape(probabilities.shape)), _out(high.reshape(probabilities.shape))

    def cdf(self, x: ArrayLike) -> float | NDArray[np.float64]:
        """Estimate the fraction of the sketched values that are ``<= x``.

        Within a bin the fraction grows linearly in ``u`` across the bin (narrowed to
        ``[minimum, maximum]``); it is 0 below the minimum and 1 from the maximum on, and
        non-decreasing. The true fraction lies between the fractions at the two edges of the
        bin holding ``x``.

        Parameters
        ----------
        x : float or array_like
            Scores.

        Returns
        -------
        float or numpy.ndarray
            Values in ``[0, 1]``; a float for a scalar ``x``.

        Raises
        ------
        ValueError
            When the sketch is empty or ``x`` holds NaN.
        """
        self._require_values()
        values = np.asarray(x, dtype=np.float64)
        if np.isnan(values).any():
            raise ValueError("cdf of NaN is undefined")
        low, high = self._bin_ranges()
        k = self.grid.index(values)
        u = self.grid.to_u(values)
        span = high[k] - low[k]
        with np.errstate(invalid="ignore", divide="ignore"):
            inside = np.where(span > 0, (u - low[k]) / span, 1.0)
        below = np.concatenate(([0], np.cumsum(self.counts)[:-1]))
        fraction = (below[k] + self.counts[k] * np.clip(inside, 0.0, 1.0)) / self.count
        fraction = np.where(values < self.minimum, 0.0,
                            np.where(values >= self.maximum, 1.0, fraction))
        return _out(np.clip(fraction, 0.0, 1.0))

    def expand(self, n: int | None = None, max_points: int = 200_000) -> NDArray[np.float64]:
        """A sorted pseudo-sample whose empirical distribution matches the sketch.

        The ``m`` points are ``quantile(linspace(0, 1, m))`` (one point: the median): numpy's
        'linear' plotting positions, so the pseudo-sample holds the exact minimum and maximum
        and ``numpy.quantile(expand(), q)`` equals :meth:`quantile` at ``q = k / (m - 1)``; with
        ``m == count`` (the default up to ``max_points`` values) the points are the estimated
        order statistics themselves and ``numpy.quantile(expand(), q) == quantile(q)`` for
        every ``q``. Run existing threshold policies, which take a sample of scores, on it.

        Parameters
        ----------
        n : int, optional
            Number of points ``m``; by default ``min(count, max_points)``.
        max_points : int, default 200_000
            Cap on the default number of points.

        Returns
        -------
        numpy.ndarray
            float64, sorted, ``m`` points (none for an empty sketch).

        Raises
        ------
        ValueError
            When ``n`` is negative or not an integer, or ``max_points`` is not positive.
        """
        if n is not None and (isinstance(n, bool) or int(n) != n or n < 0):
            raise ValueError(f"n must be a non-negative integer, got {n!r}")
        if max_points < 1:
            raise ValueError(f"max_points must be positive, got {max_points!r}")
        m = min(self.count, int(max_points)) if n is None else int(n)
        if self.count == 0 or m == 0:
            return np.empty(0, np.float64)
        if m == 1:
            return np.array([self.quantile(0.5)], dtype=np.float64)
        if m == self.count:
            points, _, _ = self._order_statistics(np.arange(m, dtype=np.int64))
        else:
            points = np.asarray(self.quantile(np.linspace(0.0, 1.0, m)), dtype=np.float64)
        return np.sort(np.clip(points, self.minimum, self.maximum))

    def bin_width_at(self, x: ArrayLike) -> float | NDArray[np.float64]:
        """Width in score space of this sketch's bin holding each value.

        The unit of the error bounds of :meth:`quantile`. Within the grid it is the grid's bin
        width (:meth:`SketchGrid.bin_width_at`); the two end bins, which also take every value
        beyond the grid's outer edges, reach out to the sketch's minimum and maximum (and to
        ``x`` itself) when those lie beyond the edges, so the width is always finite.

        Parameters
        ----------
        x : array_like
            Scores.

        Returns
        -------
        float or numpy.ndarray
            Bin widths; a float for a scalar ``x``.

        Raises
        ------
        ValueError
            When ``x`` holds NaN.
        """
        values = np.asarray(x, dtype=np.float64)
        edges = self.grid.edges()
        k = self.grid.index(values)
        lower = np.where(k == 0, np.fmin(np.fmin(edges[0], self.minimum), values), edges[k])
        upper = np.where(k == self.grid.bins - 1,
                         np.fmax(np.fmax(edges[-1], self.maximum), values), edges[k + 1])
        return _out(upper - lower)

    # -- the wire format ---------------------------------------------------------------------
    @property
    def nbytes(self) -> int:
        """Bytes the record's arrays take: ``4 * bins`` (uint32 counts) or ``8 * bins`` (int64,
        when a count exceeds 2**32 - 1), plus 16 for ``[minimum, maximum]``.

        Independent of the number of sketched values: 8208 with the default 2048 bins.
        (Flower's serialisation adds a small constant header per array.)
        """
        return self._wire_counts().nbytes + 16

    def to_record(self) -> RecordDict:
        """The sketch as a Flower ``RecordDict`` (see the module docstring for the layout).

        Returns
        -------
        flwr.app.RecordDict
            :data:`SKETCH_RECORD`: ``ArrayRecord`` with ``counts`` (uint32 when they fit, else
            int64) and ``range`` (float64 ``[minimum, maximum]``); :data:`SKETCH_GRID`:
            the grid's ``ConfigRecord``.
        """
        arrays = ArrayRecord({
            "counts": Array(self._wire_counts()),
            "range": Array(np.array([self.minimum, self.maximum], dtype=np.float64)),
        })
        return RecordDict({SKETCH_RECORD: arrays, SKETCH_GRID: self.grid.to_config()})

    @classmethod
    def from_record(cls, content: RecordDict, grid: SketchGrid | None = None, *,
                    max_count: int = MAX_LOCAL_SAMPLES) -> ScoreSketch:
        """Read a sketch from an untrusted record written by :meth:`to_record`.

        Parameters
        ----------
        content : flwr.app.RecordDict
            A message's content holding :data:`SKETCH_RECORD` and :data:`SKETCH_GRID` (other
            records are ignored).
        grid : SketchGrid, optional
            The grid the server expects; a sketch on another grid is refused. When omitted any
            valid grid is accepted.
        max_count : int, default ``MAX_LOCAL_SAMPLES``
            Largest total count accepted (a client sketches at most its local samples).

        Returns
        -------
        ScoreSketch

        Raises
        ------
        fedsieve.shared.protocol.ProtocolError
            (a ``ValueError``) for anything wrong: a missing record or array, counts that are
            not a 1-D uint32/int64 array with one count per bin, negative counts, a total above
            ``max_count``, a ``range`` that is not two float64 values, a non-finite or
            inconsistent minimum/maximum, an invalid grid or one other than ``grid``. Never
            raises anything else.
        """
        try:
            return cls._from_record(content, grid, max_count)
        except ProtocolError:
            raise
        except ValueError as err:
            raise ProtocolError(f"invalid score sketch: {err}") from err
        except Exception as err:  # noqa: BLE001 - anything else a hostile record triggers
            raise ProtocolError(f"malformed score sketch: {type(err).__name__}: {err}") from err

    @classmethod
    def _from_record(cls, content: RecordDict, expected: SketchGrid | None,
                     max_count: int) -> ScoreSketch:
        if not isinstance(content, RecordDict):
            raise ProtocolError(f"sketch content must be a RecordDict, got "
                                f"{type(content).__name__}")
        for name, kind in ((SKETCH_RECORD, ArrayRecord), (SKETCH_GRID, ConfigRecord)):
            if name not in content:
                raise ProtocolError(f"sketch lacks the {name!r} record")
            if not isinstance(content[name], kind):
                raise ProtocolError(f"{name!r} must be a {kind.__name__}, got "
                                    f"{type(content[name]).__name__}")
        grid = SketchGrid.from_config(content[SKETCH_GRID])
        if expected is not None and grid != expected:
            raise ProtocolError(f"sketch is on grid {grid} but the server expects {expected}")
        arrays = content[SKETCH_RECORD]
        missing = {"counts", "range"} - set(arrays.keys())
        if missing:
            raise ProtocolError(f"sketch lacks array(s) {sorted(missing)}")
        counts = arrays["counts"].numpy()
        if counts.dtype not in (np.dtype(np.uint32), np.dtype(np.int64)):
            raise ProtocolError(f"sketch counts must be uint32 or int64, got {counts.dtype}")
        if counts.shape != (grid.bins,):
            raise ProtocolError(f"sketch counts must be 1-D with one count per bin "
                                f"({grid.bins}), got shape {counts.shape}")
        if counts.min() < 0:
            raise ProtocolError(f"sketch counts must be non-negative, got "
                                f"{int((counts < 0).sum())} negative count(s)")
        total = counts.sum(dtype=np.float64)
        if total > max_count:
            raise ProtocolError(f"sketch counts {total:.0f} values, over the cap of "
                                f"{max_count}")
        bounds = arrays["range"].numpy()
        if bounds.dtype != np.float64 or bounds.shape != (2,):
            raise ProtocolError(f"sketch range must be float64 [minimum, maximum], got "
                                f"{bounds.dtype} {bounds.shape}")
        return cls(grid, counts, int(counts.sum(dtype=np.int64)), float(bounds[0]),
                   float(bounds[1]))

    # -- internals ---------------------------------------------------------------------------
    def _wire_counts(self) -> NDArray[np.integer]:
        if int(self.counts.max()) <= _UINT32_MAX:
            return self.counts.astype(np.uint32)
        return self.counts.copy()

    def _require_values(self) -> None:
        if self.count == 0:
            raise ValueError("the sketch is empty: it holds no values to take quantiles of")

    def _probabilities(self, q: ArrayLike) -> NDArray[np.float64]:
        self._require_values()
        probabilities = np.asarray(q, dtype=np.float64)
        if not np.all((probabilities >= 0) & (probabilities <= 1)):  # NaN fails too
            raise ValueError("quantile probabilities must lie in [0, 1]")
        return probabilities

    def _bin_ranges(self) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """Each bin's extent in ``u``, the end bins unbounded, narrowed to [minimum, maximum]."""
        edges = self.grid.u_edges()
        low, high = edges[:-1].copy(), edges[1:].copy()
        low[0], high[-1] = -np.inf, np.inf
        u_min, u_max = self.grid.to_u(self.minimum), self.grid.to_u(self.maximum)
        return np.clip(low, u_min, u_max), np.clip(high, u_min, u_max)

    def _order_statistics(self, ranks: NDArray[np.int64]) -> tuple[NDArray[np.float64], ...]:
        """Estimate, lower and upper bound (score space) of the sorted values at ``ranks``."""
        low, high = self._bin_ranges()
        cumulative = np.cumsum(self.counts)
        k = np.searchsorted(cumulative, ranks, side="right")
        within = ranks - (cumulative[k] - self.counts[k])
        fraction = (within + 0.5) / self.counts[k]
        u = low[k] + fraction * (high[k] - low[k])
        scale = self.grid.scale
        estimate = scale * np.sinh(u)
        lower, upper = scale * np.sinh(low[k]), scale * np.sinh(high[k])
        for values in (estimate, lower, upper):
            values[ranks == 0] = self.minimum
            values[ranks == self.count - 1] = self.maximum
        return estimate, lower, upper

    def _interpolate(self, probabilities: NDArray[np.float64]) -> tuple[NDArray[np.float64], ...]:
        position = probabilities * (self.count - 1)
        j = np.minimum(np.floor(position), max(self.count - 2, 0)).astype(np.int64)
        f = np.clip(position - j, 0.0, 1.0)
        below = self._order_statistics(j)
        above = self._order_statistics(np.minimum(j + 1, self.count - 1))
        estimate, low, high = ((1.0 - f) * a + f * b for a, b in zip(below, above))
        # Round-off must not leave [minimum, maximum]; q = 0 and q = 1 are exact.
        estimate = np.clip(estimate, self.minimum, self.maximum)
        estimate = np.where(probabilities == 0, self.minimum, estimate)
        estimate = np.where(probabilities == 1, self.maximum, estimate)
        return estimate, np.minimum(low, estimate), np.maximum(high, estimate)


def _same_float(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


def _out(values: NDArray[np.float64]) -> float | NDArray[np.float64]:
    return float(values) if values.ndim == 0 else values
