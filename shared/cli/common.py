"""What every ``fedsieve`` command shares: the console, the error exit, the data-root and
device options.

Each domain keeps its own commands beside its code (``shared.data_cli``, ``shared.detector_cli``,
``simulations.pollution_cli``, ``simulations.simulate_cli``, ``simulations.sweep_cli``);
:mod:`fedsieve.simulations.cli` assembles them into the ``fedsieve`` entry point.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

console = Console()

RootOption = Annotated[
    Path | None,
    typer.Option(help="Data folder searched first (IDX files, or torchvision layout)."),
]


DeviceOption = Annotated[
    str,
    typer.Option(help="Where torch runs: auto (a CUDA GPU when torch sees one, else the CPU), "
                      "cpu, cuda, cuda:1, mps."),
]


def fail(message: str) -> typer.Exit:
    """Print ``message`` as an error; the returned ``typer.Exit`` (code 1) is for ``raise``."""
    console.print(f"[bold red]error:[/] {message}", highlight=False)
    return typer.Exit(code=1)
