"""``fedsieve sweep``: the command line around :mod:`fedsieve.simulations.sweep`."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer

from fedsieve.shared.cli_common import RootOption, console, fail


def _floats(text: str, what: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError as err:
        raise typer.BadParameter(f"{what} must be comma-separated numbers, got {text!r}") from err


def _names(text: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in text.split(",") if v.strip())


def sweep_cmd(
    out: Annotated[Path, typer.Option(help="Sweep directory (re-run to resume it).")],
    contamination: Annotated[str | None, typer.Option(
        help="Comma-separated rates [default: 0,0.1,0.2,0.3,0.4].")] = None,
    defenses: Annotated[str | None, typer.Option(
        help="Comma-separated: none, rtbigan, egbad, anogan, iforest, deepsvdd, fedmedian, "
             "krum, trimmedavg [default: none,rtbigan,iforest,fedmedian,krum,trimmedavg].")
    ] = None,
    partition: Annotated[str | None, typer.Option(help="iid,dirichlet,... [default: iid]")
                         ] = None,
    profile: Annotated[str | None, typer.Option(help="uniform,skewed [default: uniform]")
                       ] = None,
    label_policy: Annotated[str | None, typer.Option(
        help="random,mapped [default: random]")] = None,
    pollution: Annotated[str | None, typer.Option(
        help="What is injected, as for `fedsieve simulate --pollution`; the detector-only "
             "test set holds the same kind [default: fashion].")] = None,
    seeds: Annotated[int | None, typer.Option(min=1, help="Seeds per cell [default: 2].")
                     ] = None,
    clients: Annotated[int | None, typer.Option(min=2, help="Clients [default: 10].")] = None,
    rounds: Annotated[int | None, typer.Option(min=1, help="Rounds [default: 3].")] = None,
    quick: Annotated[bool, typer.Option(
        help="The reduced grid CI runs (a few minutes); options given still apply.")] = False,
    paper_figures: Annotated[bool, typer.Option(
        help="Regenerate the paper's Table I, Fig. 3 and Fig. 4.")] = True,
    root: RootOption = None,
) -> None:
    """Contamination-rate experiments: every defense on every federation, plots and a report."""
    # Imported here, not at the top: the sweep pulls in Flower, torch and the detectors.
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from fedsieve.simulations.sweep import QUICK, SweepGrid
    from fedsieve.simulations.sweep import sweep as run
    from fedsieve.simulations.zoo import parse_pollution

    grid = QUICK if quick else SweepGrid()
    base = grid.base
    if clients:
        base = base.replace(num_clients=clients)
    if rounds:
        base = base.replace(num_server_rounds=rounds)
    if root:
        base = base.replace(data_root=str(root))
    if pollution:
        try:
            parse_pollution(pollution)
        except ValueError as err:
            raise fail(str(err)) from err
        base = base.replace(pollution=pollution)
    changes: dict[str, object] = {"base": base, "paper_figures": paper_figures}
    if contamination:
        changes["contamination"] = _floats(contamination, "--contamination")
    for name, value in (("defenses", defenses), ("partitions", partition),
                        ("profiles", profile), ("label_policies", label_policy)):
        if value:
            changes[name] = _names(value)
    if seeds:
        changes["seeds"] = seeds
    try:
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

        result = run(grid, out, command="fedsieve " + " ".join(sys.argv[1:]), on_cell=on_cell,
                     on_phase=lambda m: progress.update(task, description=m))
    meta = result["meta"]
    console.print(f"{len(cells)} cells, {len(meta['failed_cells'])} failed; compute time "
                  f"{meta['wall_seconds'] / 60:.1f} min; report: {out / 'report.md'}")
    if meta["failed_cells"]:
        raise typer.Exit(code=1)


def register(app: typer.Typer) -> None:
    """Add ``sweep`` to the ``fedsieve`` command line."""
    app.command("sweep")(sweep_cmd)
