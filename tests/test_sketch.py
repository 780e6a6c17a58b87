"""fedsieve.shared.sketch: mergeable fixed-grid score sketches and federated quantiles."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsieve.shared.protocol import ProtocolError
from fedsieve.shared.sketch import SKETCH_GRID, SKETCH_RECORD, ScoreSketch, SketchGrid

QS = np.array([0.0, 0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.995, 0.999,
               0.9999, 1.0])
#: Room for the rounding of bin edges (sinh vs arcsinh) in the bound checks.
RTOL = 1e-9


# -- data -----------------------------------------------------------------------------------
def _mixture(rng: np.random.Generator) -> np.ndarray:
    """Inlier scores near 0 plus anomalies in a far tail, reaching raw errors of ~1e4."""
    return np.concatenate([rng.normal(0.0, 1.0, 20_000), rng.normal(40.0, 10.0, 150),
                           rng.uniform(1e3, 1e4, 12)])


def _negative(rng: np.random.Generator) -> np.ndarray:
    """Calibrated scores around 0 and log-scores, mostly negative, heavy lower tail."""
    return np.concatenate([rng.normal(-3.0, 2.0, 15_000), -rng.lognormal(2.0, 1.0, 400),
                           rng.standard_t(2, 3_000)])


def _lognormal(rng: np.random.Generator) -> np.ndarray:
    return rng.lognormal(0.0, 2.5, 30_000)


DATASETS = {"mixture": _mixture, "negative": _negative, "lognormal": _lognormal}


def _split(values: np.ndarray, rng: np.random.Generator, *, by_value: bool) -> list[np.ndarray]:
    """Seven uneven clients (one empty); ``by_value``: each holds a band of scores (non-IID)."""
    order = np.argsort(values, kind="stable") if by_value else rng.permutation(values.size)
    shares = np.array([0.0, 0.0001, 0.02, 0.05, 0.13, 0.3, 0.4999])
    cuts = np.round(np.cumsum(shares)[:-1] * values.size).astype(int)
    parts = np.split(values[order], cuts)
    assert len(parts) == 7 and parts[0].size == 0
    return parts


def _pooled_and_merged(name: str, seed: int, by_value: bool, grid: SketchGrid | None = None):
    rng = np.random.default_rng(seed)
    pooled = DATASETS[name](rng)
    parts = _split(pooled, rng, by_value=by_value)
    sketches = [ScoreSketch.of(part, grid) for part in parts]
    return pooled, parts, sketches, ScoreSketch.merge(*sketches)


def _neighbours(pooled: np.ndarray, q: np.ndarray):
    """numpy's 'linear' quantile: the two order statistics and the weight between them."""
    ordered = np.sort(pooled)
    position = q * (ordered.size - 1)
    j = np.minimum(np.floor(position).astype(int), ordered.size - 1)
    f = position - j
    return ordered[j], ordered[np.minimum(j + 1, ordered.size - 1)], f


def _assert_quantile_bound(sketch: ScoreSketch, pooled: np.ndarray, q: np.ndarray) -> None:
    truth = np.quantile(pooled, q)
    estimate = np.asarray(sketch.quantile(q))
    low, high = sketch.quantile_bounds(q)
    below, above, f = _neighbours(pooled, q)
    # Bin membership is decided in u = arcsinh(x / scale) to within a few ulp of u.
    slack = RTOL * (np.abs(truth) + sketch.grid.scale)
    # The documented guarantee: both lie in the bounds ...
    assert np.all(low - slack <= truth) and np.all(truth <= high + slack)
    assert np.all(low <= estimate) and np.all(estimate <= high)
    # ... so the error is at most the widths of the two neighbours' bins, weighted ...
    bound = (1 - f) * sketch.bin_width_at(below) + f * sketch.bin_width_at(above)
    assert np.all(np.abs(estimate - truth) <= bound + slack)
    # ... and where the neighbours share a bin (data denser than the grid), the estimate lies
    # in the same bin as numpy's pooled quantile: the error is at most one bin width there.
    shared = sketch.grid.index(below) == sketch.grid.index(above)
    assert np.all(np.abs(estimate - truth)[shared]
                  <= sketch.bin_width_at(below)[shared] + slack[shared])
    edges = sketch.grid.edges()
    edges[0], edges[-1] = -np.inf, np.inf  # the end bins take everything beyond
    k = sketch.grid.index(below)[shared]
    for values in (estimate[shared], truth[shared]):
        assert np.all(edges[k] - slack[shared] <= values)
        assert np.all(values <= edges[k + 1] + slack[shared])


# -- federated quantiles ----------------------------------------------------------------------
@pytest.mark.parametrize("by_value", [False, True], ids=["iid", "bands"])
@pytest.mark.parametrize("name", sorted(DATASETS))
def test_merged_quantiles_match_pooled_within_the_documented_bound(name, by_value):
    pooled, _, _, merged = _pooled_and_merged(name, 1, by_value)
    _assert_quantile_bound(merged, pooled, QS)
    # The simple form of the bound holds at the usual cuts of these (dense enough) data.
    dense = np.array([0.01, 0.1, 0.5, 0.9, 0.99])
    truth = np.quantile(pooled, dense)
    assert np.all(np.abs(np.asarray(merged.quantile(dense)) - truth)
                  <= merged.bin_width_at(truth))


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_merge_is_exact_the_sketch_of_the_pooled_values(name):
    pooled, parts, sketches, merged = _pooled_and_merged(name, 2, False)
    assert merged == ScoreSketch.of(pooled)
    assert merged.count == pooled.size == sum(part.size for part in parts)
    assert merged.minimum == pooled.min() and merged.maximum == pooled.max()
    assert merged.quantile(0.0) == pooled.min() and merged.quantile(1.0) == pooled.max()


def test_merge_is_order_independent():
    _, _, sketches, merged = _pooled_and_merged("mixture", 3, True)
    rng = np.random.default_rng(0)
    for _ in range(5):
        shuffled = [sketches[i] for i in rng.permutation(len(sketches))]
        assert ScoreSketch.merge(*shuffled) == merged
    assert sum(sketches) == merged
    assert (sketches[3] + sketches[1]) + (sketches[6] + sketches[0] + sketches[2]) \
        + (sketches[5] + sketches[4]) == merged
    assert np.array_equal(ScoreSketch.merge(*reversed(sketches)).quantile(QS), merged.quantile(QS))


def test_merge_needs_one_grid():
    a = ScoreSketch.of([1.0, 2.0])
    b = ScoreSketch.of([1.0, 2.0], SketchGrid(bins=1024))
    with pytest.raises(ValueError, match="different grids"):
        ScoreSketch.merge(a, b)
    with pytest.raises(ValueError, match="different grids"):
        _ = a + b
    with pytest.raises(ValueError, match="at least one"):
        ScoreSketch.merge()


def test_merge_with_empty_sketches():
    empty = ScoreSketch.of([])
    assert empty.count == 0 and math.isnan(empty.minimum) and math.isnan(empty.maximum)
    assert ScoreSketch.merge(empty, empty) == empty
    one = ScoreSketch.of([-2.5, 7.0])
    assert one + empty == one and empty + one == one


@settings(max_examples=150, deadline=None)
@given(values=st.lists(st.floats(-1e7, 1e7, allow_nan=False, allow_infinity=False),
                       min_size=1, max_size=60),
       bins=st.sampled_from([16, 64, 256, 2048]),
       scale=st.sampled_from([0.01, 1.0, 300.0]),
       q=st.lists(st.floats(0.0, 1.0), min_size=1, max_size=8))
def test_bound_holds_for_small_and_sparse_samples(values, bins, scale, q):
    pooled = np.array(values + values[: len(values) // 3])  # some duplicates
    sketch = ScoreSketch.of(pooled, SketchGrid(bins=bins, scale=scale))
    _assert_quantile_bound(sketch, pooled, np.array(q))
    assert sketch.quantile(0.0) == pooled.min() and sketch.quantile(1.0) == pooled.max()


def test_quantile_is_monotone_and_takes_scalars_and_arrays():
    _, _, _, merged = _pooled_and_merged("negative", 4, False)
    grid = np.linspace(0, 1, 5001)
    values = merged.quantile(grid)
    assert isinstance(values, np.ndarray) and values.shape == grid.shape
    assert np.all(np.diff(values) >= 0)
    assert isinstance(merged.quantile(0.5), float)
    assert merged.quantile(np.array([[0.1, 0.9]])).shape == (1, 2)
    for bad in (-0.01, 1.01, math.nan, [0.5, 2.0]):
        with pytest.raises(ValueError, match=r"\[0, 1\]"):
            merged.quantile(bad)


def test_single_value_and_empty_sketch():
    one = ScoreSketch.of([3.25])
    assert one.quantile(0.0) == one.quantile(0.37) == one.quantile(1.0) == 3.25
    assert np.array_equal(one.expand(), [3.25])
    empty = ScoreSketch.of(np.array([]))
    with pytest.raises(ValueError, match="empty"):
        empty.quantile(0.5)
    with pytest.raises(ValueError, match="empty"):
        empty.cdf(0.0)
    assert empty.expand().shape == (0,)


def test_values_beyond_the_grid_go_to_the_end_bins():
    grid = SketchGrid()
    top = grid.edges()[-1]
    assert 4e6 < top < 5e6
    values = np.array([-1e9, -5.0, 0.0, 5.0, 2e7, 1e12])
    sketch = ScoreSketch.of(values)
    assert sketch.counts[0] == 1 and sketch.counts[-1] == 2
    assert sketch.minimum == -1e9 and sketch.maximum == 1e12
    assert sketch.quantile(1.0) == 1e12
    assert grid.bin_width_at(2e7) == math.inf
    # The sketch's end bins reach out to its minimum and maximum.
    assert sketch.bin_width_at(2e7) == 1e12 - grid.edges()[-2]
    assert sketch.bin_width_at(-1e9) == grid.edges()[1] + 1e9
    assert sketch.bin_width_at(1.0) == grid.bin_width_at(1.0)
    assert np.array_equal(grid.index([-np.inf, np.inf]), [0, grid.bins - 1])
    with pytest.raises(ValueError, match="NaN"):
        grid.index([0.0, math.nan])


def test_of_refuses_non_finite_scores_and_says_how_many():
    with pytest.raises(ValueError, match="2 of 5 values"):
        ScoreSketch.of([0.0, math.nan, 1.0, math.inf, 2.0])


# -- cdf and expand ---------------------------------------------------------------------------
def test_cdf_is_monotone_and_brackets_the_empirical_cdf():
    pooled, _, _, merged = _pooled_and_merged("mixture", 5, True)
    xs = np.concatenate([np.linspace(-6, 60, 3000), [pooled.min() - 1, pooled.max(), 1e5]])
    xs.sort()
    cdf = merged.cdf(xs)
    assert np.all(np.diff(cdf) >= 0) and np.all((cdf >= 0) & (cdf <= 1))
    assert merged.cdf(pooled.min() - 1) == 0.0 and merged.cdf(pooled.max()) == 1.0
    assert isinstance(merged.cdf(0.0), float)
    # The true fraction <= x and the estimate lie between the fractions at the bin's edges.
    k = merged.grid.index(xs)
    below = np.concatenate(([0], np.cumsum(merged.counts)))
    lo, hi = below[k] / merged.count, below[k + 1] / merged.count
    empirical = np.searchsorted(np.sort(pooled), xs, side="right") / pooled.size
    inside = (xs >= pooled.min()) & (xs < pooled.max())
    assert np.all((lo <= empirical) & (empirical <= hi))
    assert np.all(((lo <= cdf) & (cdf <= hi))[inside])
    # cdf inverts quantile
    q = np.array([0.05, 0.5, 0.95])
    assert np.allclose(merged.cdf(merged.quantile(q)), q, atol=1e-3)


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_expand_reproduces_the_quantiles(name):
    pooled, _, _, merged = _pooled_and_merged(name, 6, False)
    points = merged.expand()
    assert points.shape == (merged.count,)
    assert np.all(np.diff(points) >= 0)
    assert points[0] == merged.minimum and points[-1] == merged.maximum
    # With one point per value the pseudo-sample's quantiles are the sketch's.
    assert np.allclose(np.quantile(points, QS), merged.quantile(QS), rtol=1e-12, atol=0)
    # A capped pseudo-sample stays within the bound (twice: sketch error + spacing).
    few = merged.expand(max_points=5_000)
    assert few.shape == (5_000,) and np.all(np.diff(few) >= 0)
    assert few[0] == merged.minimum and few[-1] == merged.maximum
    q = np.array([0.01, 0.1, 0.5, 0.9, 0.99])
    truth = np.quantile(pooled, q)
    assert np.all(np.abs(np.quantile(few, q) - truth) <= 2 * merged.bin_width_at(truth))
    assert merged.expand(n=7).shape == (7,)
    with pytest.raises(ValueError, match="non-negative"):
        merged.expand(n=-1)


# -- grid ----------------------------------------------------------------------------------------
def test_grid_edges_index_and_precision():
    grid = SketchGrid()
    edges = grid.edges()
    assert edges.shape == (grid.bins + 1,) and np.all(np.diff(edges) > 0)
    assert edges[grid.bins // 2] == 0.0
    mids = (edges[:-1] + edges[1:]) / 2
    assert np.array_equal(grid.index(mids), np.arange(grid.bins))
    du = 2 * grid.limit / grid.bins
    assert math.isclose(grid.bin_width_at(1e4) / 1e4, du, rel_tol=0.01)     # relative far out
    assert math.isclose(grid.bin_width_at(0.001), grid.scale * du, rel_tol=0.01)  # absolute at 0
    wide = SketchGrid(scale=100.0)
    assert math.isclose(wide.bin_width_at(0.5), 100.0 * du, rel_tol=0.01)


def test_grid_config_round_trip_and_validation():
    grid = SketchGrid(bins=4096, limit=12.0, scale=0.5)
    assert SketchGrid.from_config(grid.to_config()) == grid
    assert SketchGrid(2048, 16, 1) == SketchGrid()
    for kwargs, field in [({"bins": 15}, "bins"), ({"bins": 65_537}, "bins"),
                          ({"bins": 2048.0}, "bins"), ({"bins": True}, "bins"),
                          ({"limit": 0.0}, "limit"), ({"limit": -1.0}, "limit"),
                          ({"limit": math.inf}, "limit"), ({"limit": math.nan}, "limit"),
                          ({"limit": 800.0}, "limit"), ({"scale": 0.0}, "scale"),
                          ({"scale": math.inf}, "scale"), ({"scale": "1"}, "scale")]:
        with pytest.raises(ValueError, match=field):
            SketchGrid(**kwargs)
        config = SketchGrid().to_config()
        config[field] = kwargs[field]
        with pytest.raises(ValueError, match=field):
            SketchGrid.from_config(config)
    with pytest.raises(ValueError, match="scale"):
        SketchGrid.from_config(ConfigRecord({"bins": 2048, "limit": 16.0}))


# -- the wire format ---------------------------------------------------------------------------
def test_record_round_trip():
    pooled, _, _, merged = _pooled_and_merged("mixture", 7, False)
    content = merged.to_record()
    assert set(content.array_records) == {SKETCH_RECORD}
    assert set(content.config_records) == {SKETCH_GRID}
    arrays = content.array_records[SKETCH_RECORD]
    assert arrays["counts"].numpy().dtype == np.uint32
    assert arrays["range"].numpy().dtype == np.float64
    back = ScoreSketch.from_record(content, SketchGrid())
    assert back == merged and back.counts.dtype == np.int64
    assert np.array_equal(back.quantile(QS), merged.quantile(QS))
    empty = ScoreSketch.of([], SketchGrid(bins=64))
    assert ScoreSketch.from_record(empty.to_record()) == empty


def test_large_counts_travel_as_int64():
    grid = SketchGrid(bins=16)
    counts = np.zeros(16, np.int64)
    counts[8] = 2**33
    sketch = ScoreSketch(grid, counts, 2**33, 0.5, 0.75)
    content = sketch.to_record()
    assert content.array_records[SKETCH_RECORD]["counts"].numpy().dtype == np.int64
    assert sketch.nbytes == 16 * 8 + 16
    with pytest.raises(ValueError, match="cap"):
        ScoreSketch.from_record(content, grid)
    assert ScoreSketch.from_record(content, grid, max_count=2**40) == sketch


def test_nbytes_is_independent_of_the_number_of_values():
    small = ScoreSketch.of(np.arange(10.0))
    big = ScoreSketch.of(np.random.default_rng(0).normal(size=1_000_000))
    assert small.nbytes == big.nbytes == 2048 * 4 + 16 == 8208
    for sketch in (small, big):
        arrays = sketch.to_record().array_records[SKETCH_RECORD]
        assert sum(a.numpy().nbytes for a in arrays.values()) == sketch.nbytes
    assert ScoreSketch.of([1.0], SketchGrid(bins=4096)).nbytes == 4096 * 4 + 16


SMALL = SketchGrid(bins=16)


def _content(counts, bounds, grid: SketchGrid | ConfigRecord = SMALL) -> RecordDict:
    config = grid if isinstance(grid, ConfigRecord) else grid.to_config()
    arrays = ArrayRecord({"counts": Array(np.asarray(counts)),
                          "range": Array(np.asarray(bounds))})
    return RecordDict({SKETCH_RECORD: arrays, SKETCH_GRID: config})


def _valid_counts(dtype=np.uint32) -> np.ndarray:
    counts = np.zeros(16, dtype)
    counts[8] = 3  # [0, 2) in u: values 0..sinh(2)
    return counts


def _hostile() -> dict[str, tuple[RecordDict, str]]:
    grid = SketchGrid(bins=16)
    good = [0.5, 1.5]
    negative = _valid_counts(np.int64)
    negative[3] = -1
    negative[8] = 4
    float_counts = _valid_counts(np.float64)
    wrong_length = np.zeros(17, np.uint32)
    wrong_length[8] = 3
    two_d = _valid_counts().reshape(4, 4)
    wrong_min_bin = [-3.0, 1.5]  # bin 3, but the first non-empty bin is 8
    no_range = RecordDict({SKETCH_RECORD: ArrayRecord({"counts": Array(_valid_counts())}),
                           SKETCH_GRID: grid.to_config()})
    garbage = RecordDict({
        SKETCH_RECORD: ArrayRecord({"counts": Array(dtype="uint32", shape=(16,),
                                                    stype="numpy.ndarray", data=b"\x00garbage"),
                                    "range": Array(np.array(good))}),
        SKETCH_GRID: grid.to_config()})
    swapped = RecordDict({SKETCH_RECORD: grid.to_config(),
                          SKETCH_GRID: ArrayRecord({"counts": Array(_valid_counts())})})
    return {
        "negative counts": (_content(negative, good), "negative"),
        "float counts": (_content(float_counts, good), "uint32 or int64"),
        "int32 counts": (_content(_valid_counts(np.int32), good), "uint32 or int64"),
        "wrong length": (_content(wrong_length, good), "one count per bin"),
        "2-D counts": (_content(two_d, good), "one count per bin"),
        "NaN minimum": (_content(_valid_counts(), [math.nan, 1.5]), "finite"),
        "inf maximum": (_content(_valid_counts(), [0.5, math.inf]), "finite"),
        "min > max": (_content(_valid_counts(), [1.5, 0.5]), "exceeds"),
        "minimum outside its bin": (_content(_valid_counts(), wrong_min_bin), "first non-empty"),
        "range of three": (_content(_valid_counts(), [0.5, 1.0, 1.5]), "range"),
        "float32 range": (_content(_valid_counts(), np.float32(good)), "range"),
        "empty with a range": (_content(np.zeros(16, np.uint32), good), "NaN"),
        "over the cap": (_content(_valid_counts() * 5_000_000, good), "cap"),
        "mismatched grid": (_content(_valid_counts(), good, SketchGrid(bins=16, scale=2.0)),
                            "expects"),
        "bad grid": (_content(_valid_counts(), good,
                              ConfigRecord({"bins": 3, "limit": 16.0, "scale": 1.0})), "bins"),
        "grid lacks limit": (_content(_valid_counts(), good,
                                      ConfigRecord({"bins": 16, "scale": 1.0})), "limit"),
        "no range": (no_range, "lacks array"),
        "no sketch": (RecordDict({SKETCH_GRID: grid.to_config()}), "lacks"),
        "swapped records": (swapped, "must be"),
        "undecodable counts": (garbage, "sketch"),
    }


@pytest.mark.parametrize("case", sorted(_hostile()))
def test_hostile_records_are_refused_with_value_error(case):
    content, message = _hostile()[case]
    with pytest.raises(ProtocolError, match=message) as caught:
        ScoreSketch.from_record(content, SketchGrid(bins=16))
    assert isinstance(caught.value, ValueError)


def test_from_record_refuses_what_is_not_a_record_dict():
    for content in (None, {"a": 1}, ArrayRecord()):
        with pytest.raises(ValueError, match="RecordDict"):
            ScoreSketch.from_record(content)  # type: ignore[arg-type]


def test_the_valid_hostile_baseline_is_accepted():
    sketch = ScoreSketch.from_record(_content(_valid_counts(), [0.5, 1.5]), SketchGrid(bins=16))
    assert sketch.count == 3 and sketch.minimum == 0.5 and sketch.maximum == 1.5


# -- construction ---------------------------------------------------------------------------------
def test_sketches_are_immutable_and_validated():
    counts = _valid_counts(np.int64)
    sketch = ScoreSketch(SketchGrid(bins=16), counts, 3, 0.5, 1.5)
    counts[8] = 99
    assert sketch.counts[8] == 3
    with pytest.raises(ValueError):
        sketch.counts[8] = 5
    with pytest.raises(ValueError, match="does not match"):
        ScoreSketch(SketchGrid(bins=16), _valid_counts(np.int64), 4, 0.5, 1.5)
    with pytest.raises(ValueError, match="one value"):
        one = np.zeros(16, np.int64)
        one[8] = 1
        ScoreSketch(SketchGrid(bins=16), one, 1, 0.5, 1.5)


def test_all_combinations_of_merge_pairs_agree():
    rng = np.random.default_rng(8)
    parts = [rng.normal(i, 1 + i, 50 * (i + 1)) for i in range(4)]
    sketches = [ScoreSketch.of(part) for part in parts]
    pooled = ScoreSketch.of(np.concatenate(parts))
    for order in itertools.permutations(range(4)):
        assert ScoreSketch.merge(*(sketches[i] for i in order)) == pooled
