"""The committed default sweep: run (or resume) ``fedsieve sweep`` and publish its outputs.

    .venv/bin/python benchmarks/sweep.py [--work runs/sweep-default] [--root DIR] [--report-only]

The work directory keeps every cell (audit logs included, resumable); only the results,
plots and report are copied to ``benchmarks/results/sweep/`` (replacing what was there).
Accuracy and attack success are measured on the official MNIST test split when it lies
beside the checkout (``../shared/datasets/mnist-test``) or ``--root`` names one; otherwise on
the packaged 1,000-digit hold-out (the report says which).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Annotated

import typer

RESULTS = Path(__file__).resolve().parent / "results" / "sweep"
PUBLISHED = ("results.csv", "results.json", "report.md", "paper.json")
#: The official MNIST test split, where the project's checkout has it beside it.
MNIST_TEST = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "mnist-test"


def main(work: Annotated[Path, typer.Option(help="Sweep directory.")] = Path(
        "runs/sweep-default"),
         root: Annotated[Path | None, typer.Option(
             help="Data folder with the MNIST test split [default: ../shared/datasets/"
                  "mnist-test when it exists].")] = None,
         report_only: Annotated[bool, typer.Option(
             help="Run nothing: publish the cells finished so far.")] = False) -> None:
    """Run the default grid, then copy what people read into benchmarks/results/sweep."""
    from fedsieve.simulations.sweep_cli import sweep_cmd

    root = root or (MNIST_TEST if MNIST_TEST.is_dir() else None)
    # What report.md records as the command.
    sys.argv = ["fedsieve", "sweep", "--out", str(work),
                *(["--root", str(root)] if root else [])]
    try:
        sweep_cmd(out=work, root=root, report_only=report_only)
    except typer.Exit as done:
        if done.exit_code:
            sys.exit(done.exit_code)
    shutil.rmtree(RESULTS, ignore_errors=True)
    RESULTS.mkdir(parents=True)
    for path in [*work.glob("*.png"), *(work / name for name in PUBLISHED)]:
        if path.is_file():
            shutil.copy(path, RESULTS / path.name)
    print(f"published to {RESULTS}")


if __name__ == "__main__":
    typer.run(main)
