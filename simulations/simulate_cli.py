"""``fedsieve simulate``: the example apps in Flower's simulation engine; call :func:`register`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fedsieve.shared.cli_common import RootOption, console, fail
from fedsieve.shared.config import FilterSettings, HarnessSettings, RunSettings, TaskSettings
from fedsieve.simulations.pollution_cli import (
    LabelPolicyOption,
    PartitionOption,
    PollutionOption,
    ProfileOption,
)


def simulate(
    out: Annotated[Path, typer.Option(help="Run directory for audit log, results, report.")],
    clients: Annotated[int, typer.Option(min=2, help="Number of simulated clients.")] = 10,
    contamination: Annotated[float, typer.Option(min=0.0, max=1.0)] = 0.2,
    partition: PartitionOption = "iid",
    profile: ProfileOption = "uniform",
    label_policy: LabelPolicyOption = "random",
    pollution: PollutionOption = "fashion",
    rounds: Annotated[int, typer.Option(min=1, help="Federated rounds.")] = 3,
    defense: Annotated[str, typer.Option(
        help="none, rtbigan, egbad, anogan, iforest, deepsvdd, fedmedian, krum, trimmedavg."
    )] = "rtbigan",
    local_epochs: Annotated[int, typer.Option(min=1)] = 3,
    upload_fraction: Annotated[float, typer.Option(min=0.0, max=1.0)] = 1.0,
    max_client_contamination: Annotated[float, typer.Option(min=0.0, max=1.0)] = 0.5,
    threshold_policy: Annotated[str, typer.Option(
        help="budget, gmm, trusted-quantile, contamination or fixed; empty (default): the "
             "detector's own (budget for rtbigan, gmm for the peers).")] = "",
    checkpoint: Annotated[str, typer.Option(help="Meta checkpoint (default: shipped).")] = "",
    seed: Annotated[int, typer.Option(help="Seed of everything random.")] = 0,
    root: RootOption = None,
    verbose: Annotated[bool, typer.Option(help="Show Flower's and Ray's logs.")] = False,
) -> None:
    """Run the fedsieve ServerApp and ClientApp in Flower's simulation engine and report."""
    # Imported here, not at the top: Flower, Ray and torch are slow to import.
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from fedsieve.simulations.simulate import settings_for_defense
    from fedsieve.simulations.simulate import simulate as run

    try:
        settings = settings_for_defense(RunSettings(
            filter=FilterSettings(upload_fraction=upload_fraction,
                                  max_client_contamination=max_client_contamination,
                                  threshold_policy=threshold_policy, checkpoint=checkpoint,
                                  seed=seed),
            task=TaskSettings(num_server_rounds=rounds, local_epochs=local_epochs,
                              data_root=str(root) if root else ""),
            harness=HarnessSettings(num_clients=clients, contamination=contamination,
                                    partition=partition, profile=profile,
                                    label_policy=label_policy, pollution=pollution),
        ).validated(), defense)
    except ValueError as err:
        raise fail(str(err)) from err
    columns = (SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("starting", total=None)
        report = run(settings, out, verbose=verbose,
                     progress=lambda message: progress.update(task, description=message))
        progress.update(task, description="done")
    d = report["detection"]
    console.print(f"final accuracy {report['final_accuracy']:.4f} after {rounds} rounds "
                  f"({report['wall_seconds']:.0f} s)")
    if d.get("screened"):
        console.print(f"uploads {d['uploads']}: AUC {d['auc'] or float('nan'):.4f}, "
                      f"pollution dropped {d['pollution_dropped'] or 0:.1%}, "
                      f"normal dropped {d['normal_dropped'] or 0:.1%}")
    console.print(f"report: {out / 'report.md'}")


def register(app: typer.Typer) -> None:
    """Add ``simulate`` to ``app``."""
    app.command("simulate")(simulate)
