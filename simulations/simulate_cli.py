"""``fedsieve simulate``: the example apps in Flower's simulation engine; call :func:`register`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from fedsieve.shared.cli.common import DeviceOption, RootOption, console, fail
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
    dirichlet_alpha: Annotated[float, typer.Option(
        help="Concentration of the dirichlet partition (> 0; 0.1: very non-IID).")] = 0.5,
    profile: ProfileOption = "uniform",
    label_policy: LabelPolicyOption = "random",
    pollution: PollutionOption = "fashion",
    rounds: Annotated[int, typer.Option(min=1, help="Federated rounds.")] = 3,
    defense: Annotated[str, typer.Option(
        help="none, rtbigan, egbad, anogan, iforest, deepsvdd, adegan, agad, anoean, fedmedian, "
             "krum, multikrum, "
             "trimmedavg, bulyan, or a detector composed with an aggregator "
             "(rtbigan+fedmedian); +labels after the detector also checks the clients' "
             "labels (rtbigan+labels, rtbigan+labels+fedmedian).")] = "rtbigan",
    local_epochs: Annotated[int, typer.Option(min=1)] = 3,
    upload_fraction: Annotated[float, typer.Option(min=0.0, max=1.0)] = 1.0,
    max_client_contamination: Annotated[float, typer.Option(min=0.0, max=1.0)] = 0.5,
    threshold_policy: Annotated[str, typer.Option(
        help="budget, gmm, trusted-quantile, contamination or fixed; empty (default): the "
             "detector's own (budget for rtbigan, gmm for the peers).")] = "",
    checkpoint: Annotated[str, typer.Option(help="Meta checkpoint (default: shipped).")] = "",
    seed: Annotated[int, typer.Option(help="Seed of everything random.")] = 0,
    compare: Annotated[str, typer.Option(
        help="Comma-separated extra runs beside this one, each a --defense name or oracle "
             "(the same federation without pollution and without defense), e.g. none,oracle; "
             "they run into OUT/compare/<name>/ and report.md gets a comparison.")] = "",
    dataset: Annotated[str, typer.Option(
        help="The clients' normal data: mnist, fashion-mnist, or a labelled .npz (x, y), "
             "ImageFolder or Hugging Face save_to_disk folder of any image shape.")] = "mnist",
    test_dataset: Annotated[str, typer.Option(
        help="The server's test set; needed when --dataset is a path (built-in datasets "
             "bring their test split).")] = "",
    pollution_dataset: Annotated[str, typer.Option(
        help="Where the fashion pollution's images come from (any --dataset form; resized "
             "to the dataset's shape). Default: Fashion-MNIST, or MNIST digits when the "
             "dataset is fashion-mnist.")] = "",
    mode: Annotated[str, typer.Option(
        help="upload: clients upload their samples to the server; local: the detector is "
             "shipped to the clients, which send back ids and evidence, never an image.")]
    = "upload",
    local_rounds: Annotated[int, typer.Option(
        min=0, help="Local mode: rounds of federated self-training of the detector.")] = 1,
    local_steps: Annotated[int, typer.Option(
        min=0, help="Local mode: training steps each client runs per round.")] = 500,
    device: DeviceOption = "auto",
    spot_check_rate: Annotated[float, typer.Option(
        min=0.0, max=1.0, help="Local mode: share of each client's samples uploaded to "
        "verify its report (0: no image leaves a client).")] = 0.0,
    root: RootOption = None,
    verbose: Annotated[bool, typer.Option(help="Show Flower's and Ray's logs.")] = False,
) -> None:
    """Run the fedsieve ServerApp and ClientApp in Flower's simulation engine and report."""
    # Imported here, not at the top: Flower, Ray and torch are slow to import.
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from fedsieve.server.factory import check_settings
    from fedsieve.simulations.compare import compared_settings, simulate_compare
    from fedsieve.simulations.simulate import settings_for_defense
    from fedsieve.simulations.simulate import simulate as run

    try:
        settings = settings_for_defense(RunSettings(
            filter=FilterSettings(upload_fraction=upload_fraction,
                                  max_client_contamination=max_client_contamination,
                                  threshold_policy=threshold_policy, checkpoint=checkpoint,
                                  seed=seed, mode=mode, local_rounds=local_rounds,
                                  local_steps=local_steps, spot_check_rate=spot_check_rate,
                                  device=device),
            task=TaskSettings(num_server_rounds=rounds, local_epochs=local_epochs,
                              data_root=str(root) if root else "", dataset=dataset,
                              test_dataset=test_dataset),
            harness=HarnessSettings(num_clients=clients, contamination=contamination,
                                    partition=partition, dirichlet_alpha=dirichlet_alpha,
                                    profile=profile,
                                    label_policy=label_policy, pollution=pollution,
                                    pollution_dataset=pollution_dataset),
        ).validated(), defense)
        check_settings(settings.filter)  # a bad mode or option fails here, not in the app
        names = [v.strip() for v in compare.split(",") if v.strip()]
        compared_settings(settings, names)
    except ValueError as err:
        raise fail(str(err)) from err
    columns = (SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("starting", total=None)

        def say(message: str) -> None:
            progress.update(task, description=message)

        if names:
            comparison = simulate_compare(settings, out, names, progress=say, verbose=verbose)
            report = json.loads((out / "report.json").read_text())
        else:
            report = run(settings, out, verbose=verbose, progress=say)
        progress.update(task, description="done")
    d = report["detection"]
    console.print(f"final accuracy {report['final_accuracy']:.4f} after {rounds} rounds "
                  f"({report['wall_seconds']:.0f} s)")
    if d.get("screened"):
        where = "uploads" if mode == "upload" else "samples scored on the clients"
        console.print(f"{where} {d['uploads']}: AUC {d['auc'] or float('nan'):.4f}, "
                      f"pollution dropped {d['pollution_dropped'] or 0:.1%}, "
                      f"normal dropped {d['normal_dropped'] or 0:.1%}")
    if names:
        _print_comparison(comparison)
    console.print(f"report: {out / 'report.md'}")


def _print_comparison(comparison: dict) -> None:
    """The "Compared runs" table of ``report.md`` on the console."""
    from rich.table import Table

    from fedsieve.simulations.compare import table_cells, table_columns

    table = Table(title="Compared runs")
    for i, column in enumerate(table_columns(comparison)):
        table.add_column(column, justify="left" if i == 0 else "right")
    for row in comparison["runs"]:
        table.add_row(*table_cells(comparison, row))
    console.print(table)


def register(app: typer.Typer) -> None:
    """Add ``simulate`` to ``app``."""
    app.command("simulate")(simulate)
