"""How every results table shows numbers: one value, or a mean ± std over seeds.

The sweep report, the simulation report and the benchmark scripts all format through these,
so that a "±" means the same everywhere: the sample standard deviation (n - 1) over seeds.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable

#: Shown where a table has no value.
MISSING = "—"


def mean_std(values: Iterable[float | None]) -> tuple[float, float] | None:
    """Mean and sample standard deviation (n - 1) of the values that are not None.

    One value has std 0.0; no values give None.
    """
    present = [v for v in values if v is not None]
    if not present:
        return None
    return statistics.mean(present), statistics.stdev(present) if len(present) > 1 else 0.0


def format_value(value: float | None, spec: str = ".4f") -> str:
    """``value`` formatted with ``spec``, or :data:`MISSING`."""
    return MISSING if value is None else format(value, spec)


def format_mean_std(stat: tuple[float, float] | None, spec: str = ".4f") -> str:
    """``"mean ± std"`` (each formatted with ``spec``) of a :func:`mean_std` result."""
    if stat is None:
        return MISSING
    return f"{format_value(stat[0], spec)} ± {format_value(stat[1], spec)}"
