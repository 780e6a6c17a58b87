"""Stress benchmark: screening >100,000 uploads from 100 clients with every fault injected, and a
100-client Flower simulation. Writes ``benchmarks/results/stress.json``.

    .venv/bin/python benchmarks/stress.py [--images 120000] [--clients 100] [--sim-clients 100]

Phase 1 runs :func:`fedsieve.simulations.stress.screening_stress` in a fresh process so that
its peak resident memory (``ru_maxrss``) is the server's plus that of the in-process clients
(their files and local training): an upper bound for the server alone. Phase 2 runs
``fedsieve simulate`` with ``--sim-clients`` simulated clients in Flower's simulation engine
and reports its wall time.
"""

from __future__ import annotations

import json
import multiprocessing
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from fedsieve.simulations.machine import machine_info

RESULTS = Path(__file__).resolve().parent / "results"
console = Console()


def _screening_child(clients: int, images: int, seed: int, queue) -> None:
    from fedsieve.simulations.stress import screening_stress, stress_settings

    result = screening_stress(stress_settings(clients, seed), images,
                              say=lambda m: console.log(f"[screening] {m}"))
    queue.put(result)


def run_screening(clients: int, images: int, seed: int) -> dict:
    """Phase 1 in a spawned process (its own peak memory)."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    child = context.Process(target=_screening_child, args=(clients, images, seed, queue))
    started = time.perf_counter()
    child.start()
    result = queue.get()
    child.join()
    result["process_seconds"] = time.perf_counter() - started
    return result


def run_simulation(clients: int, rounds: int, seed: int, work: Path) -> dict:
    """Phase 2: the real apps in Flower's simulation engine with ``clients`` SuperNodes."""
    from fedsieve.simulations.simulate import simulate
    from fedsieve.simulations.stress import stress_settings

    # The example training defaults (3 local epochs): 100 clients hold ~50 samples each.
    settings = stress_settings(clients, seed).replace(num_server_rounds=rounds, local_epochs=3)
    started = time.perf_counter()
    report = simulate(settings, work, progress=lambda m: console.log(f"[simulation] {m}"))
    detection = report["detection"]
    return {
        "clients": clients,
        "rounds": rounds,
        "wall_seconds": time.perf_counter() - started,
        "round_seconds": report["round_seconds"],
        "screening_seconds": report["filter"][0]["screening_seconds"],
        "final_accuracy": report["final_accuracy"],
        "uploaded": report["filter"][0]["uploaded"],
        "auc": detection.get("auc"),
        "pollution_dropped": detection.get("pollution_dropped"),
        "normal_dropped": detection.get("normal_dropped"),
        "excluded": report["filter"][-1]["excluded"],
        "settings": report["settings"],
    }


def main(
    images: Annotated[int, typer.Option(help="Samples held by all clients together (the "
                        "85 % held by clients that pass screening are uploaded).")] = 120_000,
    clients: Annotated[int, typer.Option(help="Clients in the screening phase.")] = 100,
    sim_clients: Annotated[int, typer.Option(help="Simulated clients (0: skip).")] = 100,
    sim_rounds: Annotated[int, typer.Option(help="Rounds of the simulation.")] = 5,
    seed: Annotated[int, typer.Option(help="Seed of the federation and the detector.")] = 0,
    work: Annotated[Path, typer.Option(help="Run directory of the simulation.")] = Path(
        "runs/stress-simulation"),
    out: Annotated[Path, typer.Option(help="JSON result.")] = RESULTS / "stress.json",
) -> None:
    """Run both phases and write the JSON result."""
    started = time.perf_counter()
    screening = run_screening(clients, images, seed)
    simulation = run_simulation(sim_clients, sim_rounds, seed, work) if sim_clients else None
    result = {
        "command": "python benchmarks/stress.py " + " ".join(sys.argv[1:]),
        "machine": machine_info(),
        "screening": screening,
        "simulation": simulation,
        "targets": {"peak_rss_mb": 2048, "lost_verdicts": 0},
        "wall_seconds": time.perf_counter() - started,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    table = Table(title="fedsieve stress")
    table.add_column("figure")
    table.add_column("value", justify="right")
    rows = [
        ("clients held (screening)", f"{screening['clients']}"),
        ("uploads screened", f"{screening['uploaded']:,}"),
        ("uploads screened / s", f"{screening['uploads_screened_per_second']:,.0f}"),
        ("peak RSS after screening (MiB)", f"{screening['peak_rss_mb_after_screening']:,.0f}"),
        ("peak RSS incl. local training (MiB)", f"{screening['peak_rss_mb']:,.0f}"),
        ("faults injected / survived",
         f"{screening['faults_injected']} / {screening['faults_survived']}"),
        ("verdicts lost", f"{screening['lost_verdicts']}"),
        ("pollution dropped", f"{screening['pollution_dropped']:.2%}"),
        ("normal dropped", f"{screening['normal_dropped']:.2%}"),
    ]
    if simulation:
        rows += [(f"simulation, {simulation['clients']} clients (s)",
                  f"{simulation['wall_seconds']:.0f}"),
                 ("simulation final accuracy", f"{simulation['final_accuracy']:.4f}")]
    for row in rows:
        table.add_row(*row)
    console.print(table)
    console.print(f"written to {out}")


if __name__ == "__main__":
    typer.run(main)
