"""``fedsieve data info``: where each dataset was found; call :func:`register` on the app."""

from __future__ import annotations

import json
from typing import Annotated

import numpy as np
import typer
from rich.table import Table

from fedsieve.shared.cli.common import RootOption, console
from fedsieve.shared.data.datasets import DataNotFoundError, load_fashion_mnist, load_mnist

data_app = typer.Typer(help="Inspect the datasets fedsieve uses.", no_args_is_help=True)


@data_app.command("info")
def data_info(
    root: RootOption = None,
    download: Annotated[bool, typer.Option(
        help="Download missing datasets (torchvision).")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Where each dataset was found, counts per split and class, and hashes."""
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


def register(app: typer.Typer) -> None:
    """Add the ``data`` command group to ``app``."""
    app.add_typer(data_app, name="data")
