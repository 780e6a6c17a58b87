"""The committed default sweep: run (or resume) ``fedsieve sweep`` and publish its outputs.

    .venv/bin/python benchmarks/sweep.py [--work runs/sweep-default]

The work directory keeps every cell (audit logs included, resumable); only the results,
plots and report are copied to ``benchmarks/results/sweep/``.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Annotated

import typer

RESULTS = Path(__file__).resolve().parent / "results" / "sweep"
PUBLISHED = ("results.csv", "results.json", "report.md", "paper.json")


def main(work: Annotated[Path, typer.Option(help="Sweep directory.")] = Path(
        "runs/sweep-default")) -> None:
    """Run the default grid, then copy what people read into benchmarks/results/sweep."""
    from fedsieve.simulations.sweep_cli import sweep_cmd

    sys.argv = ["fedsieve", "sweep", "--out", str(work)]  # what report.md records as command
    try:
        sweep_cmd(out=work)
    except typer.Exit as done:
        if done.exit_code:
            sys.exit(done.exit_code)
    RESULTS.mkdir(parents=True, exist_ok=True)
    for path in [*work.glob("*.png"), *(work / name for name in PUBLISHED)]:
        if path.is_file():
            shutil.copy(path, RESULTS / path.name)
    print(f"published to {RESULTS}")


if __name__ == "__main__":
    typer.run(main)
