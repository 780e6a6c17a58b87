"""Federated benchmark: fedsieve-filtered FedAvg against the clean oracle and no defense.

10 clients, 20 % Fashion-MNIST pollution with random labels, the real apps in Flower's
simulation engine. Writes ``benchmarks/results/federated.json`` and ``federated.md``.

    .venv/bin/python benchmarks/federated.py [--seeds 0,1,2] [--rounds 5] [--defenses ...]
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from fedsieve.shared.config import HarnessSettings, RunSettings, TaskSettings
from fedsieve.simulations.machine import machine_info
from fedsieve.simulations.simulate import ORACLE, settings_for_defense, simulate
from fedsieve.simulations.tables import format_mean_std, mean_std

RESULTS = Path(__file__).resolve().parent / "results"
console = Console()


def run_one(label: str, settings: RunSettings, out: Path) -> dict:
    started = time.perf_counter()
    report = simulate(settings, out, progress=lambda m: console.log(f"[{label}] {m}"))
    rounds = {int(r): s for r, s in report["round_seconds"].items() if int(r) >= 1}
    filter_rounds = [h for h in report["filter"] if not h["screened"]]
    screening = [h["screening_seconds"] for h in report["filter"] if h["screened"]]
    detection = report["detection"]
    return {
        "label": label,
        "seed": settings.seed,
        "final_accuracy": report["final_accuracy"],
        "accuracy": report["accuracy"],
        "round_seconds": rounds,
        "later_round_seconds": statistics.mean(s for r, s in rounds.items() if r >= 2),
        "filter_seconds_later_rounds": (statistics.mean(h["filter_seconds"]
                                                        for h in filter_rounds)
                                        if filter_rounds else None),
        "screening_seconds": screening[0] if screening else None,
        "auc": detection.get("auc"),
        "pollution_dropped": detection.get("pollution_dropped"),
        "normal_dropped": detection.get("normal_dropped"),
        "wall_seconds": time.perf_counter() - started,
    }


def summarise(runs: list[dict]) -> dict:
    by_label: dict[str, list[dict]] = {}
    for run in runs:
        by_label.setdefault(run["label"], []).append(run)

    def stat(label: str, key: str) -> dict | None:
        found = mean_std(r[key] for r in by_label.get(label, []))
        return None if found is None else {"mean": found[0], "std": found[1]}

    summary = {label: {k: stat(label, k) for k in (
        "final_accuracy", "auc", "pollution_dropped", "normal_dropped", "later_round_seconds",
        "filter_seconds_later_rounds", "screening_seconds")} for label in by_label}
    if ORACLE in by_label and "rtbigan" in by_label:
        gaps = [o["final_accuracy"] - f["final_accuracy"]
                for o, f in zip(by_label[ORACLE], by_label["rtbigan"])]
        summary["rtbigan_gap_to_oracle_pp"] = 100 * statistics.mean(gaps)
    if "none" in by_label and "rtbigan" in by_label:
        plain = statistics.mean(r["later_round_seconds"] for r in by_label["none"])
        filtered = statistics.mean(r["later_round_seconds"] for r in by_label["rtbigan"])
        wrapper = statistics.mean(r["filter_seconds_later_rounds"] for r in by_label["rtbigan"])
        summary["overhead_round_ratio"] = filtered / plain - 1.0
        summary["overhead_wrapper_ratio"] = wrapper / plain
    return summary


def markdown(result: dict) -> str:
    s = result["summary"]
    lines = ["# Federated benchmark", "",
             f"{result['config']['num_clients']} clients, {result['config']['contamination']:.0%} "
             f"Fashion-MNIST pollution ({result['config']['label_policy']} labels), "
             f"{result['config']['num_server_rounds']} rounds x {result['config']['local_epochs']} "
             f"local epochs, seeds {result['seeds']}. Command: `{result['command']}`.", "",
             "| run | final accuracy | AUC | pollution dropped | normal dropped | "
             "later round (s) |", "|---|---|---|---|---|---|"]

    def cell(label, key, spec=".4f"):
        value = s.get(label, {}).get(key)
        return format_mean_std(value and (value["mean"], value["std"]), spec)

    for label in (ORACLE, "none", "rtbigan", *[k for k in s if k not in (
            ORACLE, "none", "rtbigan") and isinstance(s[k], dict)]):
        if label in s:
            lines.append(f"| {label} | {cell(label, 'final_accuracy')} | {cell(label, 'auc')} | "
                         f"{cell(label, 'pollution_dropped', '.2%')} | "
                         f"{cell(label, 'normal_dropped', '.2%')} | "
                         f"{cell(label, 'later_round_seconds', '.2f')} |")
    lines += ["", f"- Rt-BiGAN gap to the clean oracle: "
              f"{s.get('rtbigan_gap_to_oracle_pp', float('nan')):.2f} percentage points",
              f"- Filter overhead per training round after screening: "
              f"{100 * s.get('overhead_wrapper_ratio', float('nan')):.2f} % (time in the "
              f"wrapper / plain FedAvg round); whole-round ratio "
              f"{100 * s.get('overhead_round_ratio', float('nan')):+.1f} %",
              f"- Machine: {result['machine']['cpu']}, {result['machine']['cores']} cores"]
    return "\n".join(lines) + "\n"


def main(
    seeds: Annotated[str, typer.Option(help="Comma-separated seeds.")] = "0,1,2",
    rounds: Annotated[int, typer.Option()] = 5,
    local_epochs: Annotated[int, typer.Option()] = 2,
    defenses: Annotated[str, typer.Option(help="Defenses besides the oracle.")] = "none,rtbigan",
    out: Annotated[Path, typer.Option()] = RESULTS,
    work: Annotated[Path, typer.Option(help="Run directories.")] = Path("runs/bench-federated"),
) -> None:
    """Run the oracle and each defense for every seed, then write JSON and Markdown."""
    base = RunSettings(
        task=TaskSettings(num_server_rounds=rounds, local_epochs=local_epochs),
        harness=HarnessSettings(num_clients=10, contamination=0.2, label_policy="random"))
    runs = []
    seed_list = [int(s) for s in seeds.split(",")]
    for seed in seed_list:
        oracle = settings_for_defense(base.replace(contamination=0.0, seed=seed), "none")
        runs.append(run_one(ORACLE, oracle, work / f"{ORACLE}-{seed}"))
        for defense in defenses.split(","):
            settings = settings_for_defense(base.replace(seed=seed), defense)
            runs.append(run_one(defense, settings, work / f"{defense}-{seed}"))
    result = {
        "command": "python benchmarks/federated.py " + " ".join(sys.argv[1:]),
        "config": base.to_run_config() | {"num_clients": base.harness.num_clients,
                                          "contamination": base.harness.contamination,
                                          "label_policy": base.harness.label_policy,
                                          "num_server_rounds": rounds,
                                          "local_epochs": local_epochs},
        "seeds": seed_list,
        "machine": machine_info(),
        "runs": runs,
    }
    result["summary"] = summarise(runs)
    out.mkdir(parents=True, exist_ok=True)
    (out / "federated.json").write_text(json.dumps(result, indent=2))
    (out / "federated.md").write_text(markdown(result))
    console.print(markdown(result))


if __name__ == "__main__":
    typer.run(main)
