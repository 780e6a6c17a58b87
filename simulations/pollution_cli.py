"""``fedsieve pollute``: a polluted federation written as files; call :func:`register`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from rich.table import Table

from fedsieve.shared.cli.common import RootOption, console, fail

# The options that describe a simulated federation (``pollute`` and ``simulate`` share them).
PartitionOption = Annotated[str, typer.Option(
    help="iid, dirichlet, shard, pathological, linear, square or exponential.")]
ProfileOption = Annotated[str, typer.Option(
    help="uniform, skewed, or attackers:k (only clients 0..k-1 polluted, each at "
         "--contamination).")]
LabelPolicyOption = Annotated[str, typer.Option(
    help="Labels of the injected samples: random, mapped, original, or target:d (all d: "
         "a backdoor with a trigger pollution).")]
PollutionOption = Annotated[str, typer.Option(
    help="What is injected: kinds separated by ',', parameters after ':' "
         "(fashion, ink-fashion, black, white, grey, noise, salt-pepper, inverted, blurred, "
         "low-contrast, occluded, trigger:size=3:position=random-corner, held-out:digit=9, "
         "relabelled: genuine digits whose label the label policy sets), "
         "an optional weight as '*w'.")]


def pollute(
    out: Annotated[Path, typer.Option(help="Output folder.")],
    clients: Annotated[int, typer.Option(min=1, help="Number of clients.")] = 10,
    contamination: Annotated[float, typer.Option(min=0.0, max=1.0,
                                                 help="Target polluted fraction.")] = 0.2,
    partition: PartitionOption = "iid",
    profile: ProfileOption = "uniform",
    label_policy: LabelPolicyOption = "random",
    pollution: PollutionOption = "fashion",
    rates: Annotated[str | None, typer.Option(
        help="Explicit per-client rates, comma separated (overrides --profile).")] = None,
    alpha: Annotated[float, typer.Option(help="Dirichlet concentration.")] = 0.5,
    seed: Annotated[int, typer.Option(help="Seed of every random choice.")] = 0,
    trusted_size: Annotated[int, typer.Option(
        help="Trusted normal images kept out of every client for the server (trusted.npz).")
    ] = 10,
    root: RootOption = None,
) -> None:
    """Write a polluted federation: one .npz per client, trusted.npz, summary.json, PNG grids."""
    # Imported here, not at the top: they pull in torch, which `fedsieve --help` does not need.
    from fedsieve.simulations.figures import framed_grid
    from fedsieve.simulations.pollution import build_federation

    try:
        rate_list = [float(r) for r in rates.split(",")] if rates else None
        federation = build_federation(
            clients, contamination, partition=partition, profile=profile,
            label_policy=label_policy, rates=rate_list, pollution=pollution, seed=seed,
            trusted_size=trusted_size, alpha=alpha, root=root,
        )
    except (ValueError, FileNotFoundError) as err:
        raise fail(str(err)) from err
    out.mkdir(parents=True, exist_ok=True)
    table = Table(title=f"polluted federation -> {out}")
    for column in ("client", "samples", "polluted", "rate", "kinds"):
        table.add_column(column, justify="right")
    summary = federation.summary()
    for c in federation.clients:
        name = f"client_{c.client_id:03d}"
        np.savez_compressed(out / f"{name}.npz", x=c.x, y=c.y, ids=c.ids, polluted=c.polluted,
                            kinds=c.kinds)
        framed_grid(c.x, c.polluted, out / "grids" / f"{name}.png")
        kinds = summary["clients"][c.client_id]["kinds"]
        table.add_row(str(c.client_id), str(len(c)), str(int(c.polluted.sum())),
                      f"{c.contamination:.3f}", ", ".join(f"{k} {n}" for k, n in kinds.items()))
    federation.trusted_set.save(out / "trusted.npz")
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    console.print(table)
    console.print(f"trusted images: {out / 'trusted.npz'} ({len(federation.trusted_set.labels)} "
                  f"images, the server's trusted-file); grids: {out / 'grids'}")


def register(app: typer.Typer) -> None:
    """Add ``pollute`` to ``app``."""
    app.command("pollute")(pollute)
