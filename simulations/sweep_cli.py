"""``fedsieve sweep``: the command line around :mod:`fedsieve.simulations.sweep`."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer

from fedsieve.shared.cli.common import RootOption, console, fail


def _floats(text: str, what: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError as err:
        raise typer.BadParameter(f"{what} must be comma-separated numbers, got {text!r}") from err


def _names(text: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in text.split(",") if v.strip())


def sweep_cmd(
    out: Annotated[Path, typer.Option(help="Sweep directory (re-run to resume it).")],
    families: Annotated[str | None, typer.Option(
        help="Comma-separated federation families of the default grid: backdoor-iid, "
             "backdoor-dirichlet, label-flip, fashion-mapped-skewed, fashion-random "
             "[default: all].")] = None,
    contamination: Annotated[str | None, typer.Option(
        help="Comma-separated rates; replaces every family's own [default: each family's].")
    ] = None,
    defenses: Annotated[str | None, typer.Option(
        help="Comma-separated: none, rtbigan, egbad, anogan, iforest, deepsvdd, adegan, agad, "
             "anoean, fedmedian, "
             "krum, multikrum, trimmedavg, bulyan, or a detector composed with an "
             "aggregator (rtbigan+fedmedian) [default: none, rtbigan, rtbigan+fedmedian, "
             "iforest, fedmedian, trimmedavg, krum, multikrum, bulyan].")] = None,
    partition: Annotated[str | None, typer.Option(
        help="Instead of the named families: cross these partitions (iid,dirichlet,...) ...")
    ] = None,
    profile: Annotated[str | None, typer.Option(
        help="... with these profiles (uniform,skewed,attackers:3) ...")] = None,
    label_policy: Annotated[str | None, typer.Option(
        help="... and label policies (random,mapped,original,target:0) [default: iid, "
             "uniform, random].")] = None,
    pollution: Annotated[str | None, typer.Option(
        help="What the crossed families inject, as for `fedsieve simulate --pollution` "
             "[default: fashion].")] = None,
    seeds: Annotated[int | None, typer.Option(min=1, help="Seeds per cell [default: 2].")
                     ] = None,
    clients: Annotated[int | None, typer.Option(min=2, help="Clients [default: 10].")] = None,
    rounds: Annotated[int | None, typer.Option(min=1, help="Rounds [default: 5].")] = None,
    detector_only: Annotated[bool | None, typer.Option(
        "--detector-only/--no-detector-only",
        help="Also fit each filter cell's detector on the pooled data, with the ground truth "
             "at hand: test AUC and AUC per self-training round [default: no].")] = None,
    report_only: Annotated[bool, typer.Option(
        help="Run nothing: write the report of the cells finished so far.")] = False,
    quick: Annotated[bool, typer.Option(
        help="The reduced grid CI runs (a few minutes); options given still apply.")] = False,
    paper_figures: Annotated[bool, typer.Option(
        help="Regenerate the paper's Table I, Fig. 3 and Fig. 4.")] = True,
    root: RootOption = None,
) -> None:
    """Poisoning experiments: every defense on every federation family, plots and a report."""
    # Imported here, not at the top: the sweep pulls in Flower, torch and the detectors.
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from fedsieve.simulations.sweep import FAMILIES, QUICK, Family, SweepGrid
    from fedsieve.simulations.sweep import sweep as run

    grid = QUICK if quick else SweepGrid()
    base = grid.base
    if clients:
        base = base.replace(num_clients=clients)
    if rounds:
        base = base.replace(num_server_rounds=rounds)
    if root:
        base = base.replace(data_root=str(root))
    changes: dict[str, object] = {"base": base, "paper_figures": paper_figures}
    if detector_only is not None:
        changes["detector_only"] = detector_only
    try:
        if families:
            unknown = [n for n in _names(families) if n not in FAMILIES]
            if unknown:
                raise ValueError(f"unknown famil{'y' if len(unknown) == 1 else 'ies'} "
                                 f"{', '.join(unknown)}; choose from {', '.join(FAMILIES)}")
            changes["families"] = tuple(FAMILIES[n] for n in _names(families))
        if partition or profile or label_policy or pollution:
            changes["families"] = tuple(Family.crossed(
                _names(partition or "iid"), _names(profile or "uniform"),
                _names(label_policy or "random"), pollution or "fashion"))
        if contamination:
            rates = _floats(contamination, "--contamination")
            changes["contamination"] = rates
            changes["families"] = tuple(replace(f, contamination=None) for f in
                                        changes.get("families", grid.families))
        if defenses:
            changes["defenses"] = _names(defenses)
        if seeds:
            changes["seeds"] = seeds
        grid = replace(grid, **changes)
        base.validated()
    except ValueError as err:
        raise fail(str(err)) from err

    cells = grid.cells()
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("sweep", total=len(cells))

        def on_cell(cell, status):
            if status == "start":
                progress.update(task, description=f"running {cell.key}")
                return
            progress.advance(task)
            if status == "failed":
                progress.console.print(f"[red]cell {cell.key} failed[/] (see "
                                       f"{out / 'cells' / cell.key / 'error.txt'})")

        # The command that runs the whole grid (what a report cut short asks for).
        command = "fedsieve " + " ".join(a for a in sys.argv[1:] if a != "--report-only")
        result = run(grid, out, command=command, on_cell=on_cell,
                     on_phase=lambda m: progress.update(task, description=m),
                     report_only=report_only)
    meta = result["meta"]
    if meta.get("missing_cells"):
        console.print(f"{len(meta['missing_cells'])} of {len(cells)} cells not run yet (run "
                      "the same command without --report-only)")
    console.print(f"{len(cells)} cells, {len(meta['failed_cells'])} failed; compute time "
                  f"{meta['wall_seconds'] / 60:.1f} min; report: {out / 'report.md'}")
    if meta["failed_cells"]:
        raise typer.Exit(code=1)


def register(app: typer.Typer) -> None:
    """Add ``sweep`` to the ``fedsieve`` command line."""
    app.command("sweep")(sweep_cmd)
