"""The ``fedsieve`` command line: assembles the commands each domain keeps beside its code.

- ``data info``: :mod:`fedsieve.shared.cli.data` (beside the data loaders);
- ``detect``, ``meta-train``: :mod:`fedsieve.shared.cli.detectors` (operator tools, beside the
  detectors);
- ``pollute``: :mod:`fedsieve.simulations.pollution_cli`; ``simulate``:
  :mod:`fedsieve.simulations.simulate_cli`; ``sweep``: :mod:`fedsieve.simulations.sweep_cli`.
"""

from __future__ import annotations

import typer

from fedsieve.shared.cli import data as data_cli
from fedsieve.shared.cli import detectors as detector_cli
from fedsieve.simulations import pollution_cli, simulate_cli, sweep_cli

app = typer.Typer(
    help="fedsieve: keep polluted client data out of federated learning.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
for domain in (data_cli, pollution_cli, simulate_cli, detector_cli, sweep_cli):
    domain.register(app)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
