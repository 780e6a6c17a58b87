"""The ``fedsieve`` command line (typer + rich)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(
    help="fedsieve: keep polluted client data out of federated learning.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
data_app = typer.Typer(help="Inspect the datasets fedsieve uses.", no_args_is_help=True)
app.add_typer(data_app, name="data")
console = Console()

RootOption = Annotated[
    Path | None,
    typer.Option(help="Data folder searched first (IDX files, or torchvision layout)."),
]


def _fail(message: str) -> typer.Exit:
    console.print(f"[bold red]error:[/] {message}", highlight=False)
    return typer.Exit(code=1)


@data_app.command("info")
def data_info(
    root: RootOption = None,
    download: Annotated[bool, typer.Option(
        help="Download missing datasets (torchvision).")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Where each dataset was found, counts per split and class, and hashes."""
    from fedsieve.shared.data import DataNotFoundError, load_fashion_mnist, load_mnist

    rows, missing = [], []
    for loader in (load_mnist, load_fashion_mnist):
        for split in ("train", "test"):
            try:
                found = loader(split, root=root, download=download)
            except DataNotFoundError as err:
                missing.append(str(err))
                continue
            rows.append({**found.source.to_dict(),
                         "per_class": np.bincount(found.labels, minlength=10).tolist()})
    if as_json:
        print(json.dumps({"datasets": rows, "missing": missing}, indent=2))
    else:
        table = Table(title="fedsieve datasets")
        for column in ("dataset", "split", "source", "location", "count", "per class 0-9",
                       "sha256"):
            table.add_column(column, overflow="fold")
        for r in rows:
            table.add_row(r["dataset"], r["split"], r["source"], r["location"], str(r["count"]),
                          " ".join(map(str, r["per_class"])), r["sha256"][:16] + "…")
        console.print(table)
        for message in missing:
            console.print(f"[yellow]{message}[/]", highlight=False)
    if missing:
        raise typer.Exit(code=1)


@app.command()
def pollute(
    out: Annotated[Path, typer.Option(help="Output folder.")],
    clients: Annotated[int, typer.Option(min=1, help="Number of clients.")] = 10,
    contamination: Annotated[float, typer.Option(min=0.0, max=1.0,
                                                 help="Target polluted fraction.")] = 0.2,
    partition: Annotated[str, typer.Option(
        help="iid, dirichlet, shard, pathological, linear, square or exponential.")] = "iid",
    profile: Annotated[str, typer.Option(help="uniform or skewed.")] = "uniform",
    label_policy: Annotated[str, typer.Option(help="random, mapped or original.")] = "random",
    rates: Annotated[str | None, typer.Option(
        help="Explicit per-client rates, comma separated (overrides --profile).")] = None,
    alpha: Annotated[float, typer.Option(help="Dirichlet concentration.")] = 0.5,
    seed: Annotated[int, typer.Option(help="Seed of every random choice.")] = 0,
    trusted_size: Annotated[int, typer.Option(help="Trusted seed images for the server.")] = 10,
    root: RootOption = None,
) -> None:
    """Write a polluted federation: one .npz per client, trusted.npz, summary.json, PNG grids."""
    from fedsieve.simulations.figures import framed_grid
    from fedsieve.simulations.pollution import build_federation

    try:
        rate_list = [float(r) for r in rates.split(",")] if rates else None
        federation = build_federation(
            clients, contamination, partition=partition, profile=profile,
            label_policy=label_policy, rates=rate_list, seed=seed,
            trusted_size=trusted_size, alpha=alpha, root=root,
        )
    except (ValueError, FileNotFoundError) as err:
        raise _fail(str(err)) from err
    out.mkdir(parents=True, exist_ok=True)
    table = Table(title=f"polluted federation -> {out}")
    for column in ("client", "samples", "polluted", "rate"):
        table.add_column(column, justify="right")
    for c in federation.clients:
        name = f"client_{c.client_id:03d}"
        np.savez_compressed(out / f"{name}.npz", x=c.x, y=c.y, ids=c.ids, polluted=c.polluted)
        framed_grid(c.x, c.polluted, out / "grids" / f"{name}.png")
        table.add_row(str(c.client_id), str(len(c)), str(int(c.polluted.sum())),
                      f"{c.contamination:.3f}")
    federation.trusted_set.save(out / "trusted.npz")
    (out / "summary.json").write_text(json.dumps(federation.summary(), indent=2))
    console.print(table)
    console.print(f"trusted seed set: {out / 'trusted.npz'} ({len(federation.trusted_set.labels)} "
                  f"images); grids: {out / 'grids'}")


@app.command()
def simulate(
    out: Annotated[Path, typer.Option(help="Run directory for audit log, results, report.")],
    clients: Annotated[int, typer.Option(min=2, help="Number of simulated clients.")] = 10,
    contamination: Annotated[float, typer.Option(min=0.0, max=1.0)] = 0.2,
    partition: Annotated[str, typer.Option(help="iid, dirichlet, shard, ...")] = "iid",
    profile: Annotated[str, typer.Option(help="uniform or skewed.")] = "uniform",
    label_policy: Annotated[str, typer.Option(help="random, mapped or original.")] = "random",
    rounds: Annotated[int, typer.Option(min=1, help="Federated rounds.")] = 3,
    defense: Annotated[str, typer.Option(
        help="none, rtbigan, egbad, anogan, iforest, deepsvdd, fedmedian, krum, trimmedavg."
    )] = "rtbigan",
    local_epochs: Annotated[int, typer.Option(min=1)] = 3,
    upload_fraction: Annotated[float, typer.Option(min=0.0, max=1.0)] = 1.0,
    max_client_contamination: Annotated[float, typer.Option(min=0.0, max=1.0)] = 0.5,
    threshold_policy: Annotated[str, typer.Option(help="gmm, trusted-quantile, contamination "
                                                       "or fixed.")] = "gmm",
    checkpoint: Annotated[str, typer.Option(help="Meta checkpoint (default: shipped).")] = "",
    seed: Annotated[int, typer.Option(help="Seed of everything random.")] = 0,
    root: RootOption = None,
    verbose: Annotated[bool, typer.Option(help="Show Flower's and Ray's logs.")] = False,
) -> None:
    """Run the fedsieve ServerApp and ClientApp in Flower's simulation engine and report."""
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from fedsieve.shared.config import RunSettings
    from fedsieve.simulations.simulate import settings_for_defense
    from fedsieve.simulations.simulate import simulate as run

    try:
        settings = settings_for_defense(RunSettings(
            num_server_rounds=rounds, local_epochs=local_epochs, num_clients=clients,
            contamination=contamination, partition=partition, profile=profile,
            label_policy=label_policy, upload_fraction=upload_fraction,
            max_client_contamination=max_client_contamination,
            threshold_policy=threshold_policy, checkpoint=checkpoint, seed=seed,
            data_root=str(root) if root else "").validated(), defense)
    except ValueError as err:
        raise _fail(str(err)) from err
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


def _register_commands() -> None:
    from fedsieve.simulations import detector_cli, sweep_cli

    detector_cli.register(app)
    sweep_cli.register(app)


_register_commands()


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
