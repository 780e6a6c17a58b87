"""Shape benchmark: every detector on tasks of other image shapes, side by side.

Tasks (:mod:`fedsieve.simulations.image_tasks`): ``mnist`` (the public protocol, 1x28x28),
``fashion`` (the reverse protocol: Fashion-MNIST normal, MNIST digits as 20 % pollution) and
both padded to 32x32 and tinted into 3 channels (``*-tint32``). Rt-BiGAN runs from the shipped
meta-model (``default``; random weights with a warning for shapes it was not made for), from
random weights (``scratch``) and from a meta-model of the task's own normal data
(``own-meta``: ``meta_train`` on 4,000 normal training images disjoint from the pool, 200
iterations, as the shipped one). For Rt-BiGAN the test AUC of each piece of its evidence is
recorded too. Scoring throughput is measured with the torch threads given (2 by default).
Writes ``benchmarks/results/shapes.json`` and ``shapes.md``.

    python benchmarks/shapes.py                     # every task, seed 0
    python benchmarks/shapes.py --tasks fashion --seeds 0,1
    python benchmarks/shapes.py --tasks mnist-tint32 --update   # rerun one task, keep the rest
    python benchmarks/shapes.py --tasks fashion --seeds 1,2 --update   # add seeds
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
import warnings
from pathlib import Path

import numpy as np

from fedsieve.simulations.benchmark import PEER_SETTINGS

REPO = Path(__file__).resolve().parents[1]
MNIST_TEST = REPO.parent / "shared" / "datasets" / "mnist-test"
DETECTORS = {
    "rtbigan/default": ("rtbigan", {}),
    "rtbigan/scratch": ("rtbigan", {"meta_checkpoint": None}),
    "rtbigan/own-meta": ("rtbigan", {"meta_checkpoint": "OWN"}),
    "rtbigan/own-meta+two-sided": ("rtbigan", {"meta_checkpoint": "OWN", "evidence": [
        "global", "global-from-below", "typicality", "detached-ink", "reachability"]}),
    **{name: (name, params) for name, params in PEER_SETTINGS.items()},
}
PIECES = ("global", "global-from-below", "typicality", "detached-ink", "reachability")


def run_task(task_name: str, seed: int, threads: int, out: Path, say,
             detectors: list[str] | None = None) -> list[dict]:
    import torch
    from sklearn.metrics import roc_auc_score

    from fedsieve.shared.detectors import RtBiGAN, make_detector
    from fedsieve.shared.detectors.checkpoint import save_meta
    from fedsieve.shared.detectors.evidence.reachability import atlas_sample
    from fedsieve.shared.detectors.metatrain import MetaConfig, meta_train
    from fedsieve.simulations.image_tasks import make_task

    torch.set_num_threads(threads)
    task = make_task(task_name, seed, mnist_test_root=str(MNIST_TEST))
    labels = detectors or list(DETECTORS)
    meta_path, meta_seconds = None, 0.0
    if any("OWN" in DETECTORS[label][1].values() for label in labels):
        t0 = time.perf_counter()
        phi = meta_train(task.meta_images, task.meta_labels,
                         MetaConfig(iterations=200, seed=seed))
        meta_path = save_meta(phi, out / "meta" / f"{task_name}-s{seed}",
                              {"data": f"{task_name} normal training images", "seed": seed},
                              atlas=atlas_sample(task.meta_images, task.meta_labels, seed=seed))
        meta_seconds = time.perf_counter() - t0
    rows = []
    for label in labels:
        name, params = DETECTORS[label]
        params = {k: (str(meta_path) if v == "OWN" else v) for k, v in params.items()}
        det = make_detector(name, random_state=seed, **params)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t0 = time.perf_counter()
            det.fit(task.pool, trusted=task.trusted)
            fit_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        scores = det.decision_function(task.test)
        score_s = time.perf_counter() - t0
        row = {
            "task": task_name, "shape": list(task.image_shape), "seed": seed,
            "detector": label, "test_auc": float(roc_auc_score(task.test_y, scores)),
            "pool_auc": float(roc_auc_score(task.pool_y, det.decision_scores_)),
            "pollution_flagged": float(det.labels_[task.pool_y == 1].mean()),
            "normal_flagged": float(det.labels_[task.pool_y == 0].mean()),
            "fit_s": round(fit_s, 1), "images_per_s": round(len(task.test) / score_s),
        }
        if label.startswith("rtbigan/own"):
            row["meta_seconds"] = round(meta_seconds, 1)
        if isinstance(det, RtBiGAN) and det.calibration_ is not None:
            explanation = det.explain(task.test)
            row["piece_auc"] = {p: float(roc_auc_score(task.test_y, explanation.values[:, i]))
                                for i, p in enumerate(explanation.names)}
        rows.append(row)
        say(row)
    return rows


def table(rows: list[dict]) -> str:
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    lines = ["| detector | " + " | ".join(tasks) + " |", "|---" * (len(tasks) + 1) + "|"]
    for det in DETECTORS:
        cells = []
        for t in tasks:
            hits = [r for r in rows if r["task"] == t and r["detector"] == det]
            if not hits:
                cells.append("—")
                continue
            auc = np.mean([r["test_auc"] for r in hits])
            pol = np.mean([r["pollution_flagged"] for r in hits])
            nor = np.mean([r["normal_flagged"] for r in hits])
            cells.append(f"{auc:.4f} ({100 * pol:.0f} % / {100 * nor:.1f} %)")
        lines.append(f"| {det} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def per_seed(rows: list[dict]) -> list[str]:
    """Markdown lines: each detector's test AUC at every seed, per task (only with more
    than one seed), so that a mean does not hide a weak seed."""
    seeds = sorted({r["seed"] for r in rows})
    if len(seeds) < 2:
        return []
    lines = ["## Test AUC per seed", "", "| task | detector | " + " | ".join(
        f"seed {s}" for s in seeds) + " | min |", "|---|---|" + "---|" * (len(seeds) + 1)]
    for task in dict.fromkeys(r["task"] for r in rows):
        for det in DETECTORS:
            auc = {r["seed"]: r["test_auc"] for r in rows
                   if r["task"] == task and r["detector"] == det}
            if len(auc) > 1:
                lines.append(f"| {task} | {det} | " + " | ".join(
                    f"{auc[s]:.4f}" if s in auc else "—" for s in seeds)
                    + f" | {min(auc.values()):.4f} |")
    return [*lines, ""]


def main() -> None:
    from rich.console import Console

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="mnist,fashion,mnist-tint32,fashion-tint32")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument("--detectors", default=",".join(DETECTORS),
                        help="comma-separated, of " + ", ".join(DETECTORS))
    parser.add_argument("--update", action="store_true",
                        help="Replace only these detectors' rows of these tasks at these seeds "
                        "in an existing shapes.json.")
    args = parser.parse_args()
    detectors = args.detectors.split(",")
    if set(detectors) - set(DETECTORS):
        parser.error(f"unknown detectors {sorted(set(detectors) - set(DETECTORS))}; choose "
                     f"from {', '.join(DETECTORS)}")
    console = Console()
    args.out.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    commands: list[str] = []
    previous = args.out / "shapes.json"
    if args.update and previous.is_file():
        old = json.loads(previous.read_text())
        rerun = {(t, int(s), d) for t in args.tasks.split(",") for s in args.seeds.split(",")
                 for d in detectors}
        rows = [r for r in old["rows"] if (r["task"], r["seed"], r["detector"]) not in rerun]
        commands = old.get("commands", [old.get("command")])
    for task in args.tasks.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            console.print(f"[bold]{task}[/] seed {seed}")
            rows += run_task(task, seed, args.threads, args.out / "shapes-work",
                             lambda r: console.print(r), detectors)
    import torch

    command = "python benchmarks/shapes.py " + " ".join(
        f"--{k} {v}" for k, v in vars(args).items()
        if k not in ("out", "update") and not (k == "detectors" and v == ",".join(DETECTORS))
    ) + (
        " --update" if args.update else "")
    result = {"rows": rows, "commands": [*commands, command],
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "cpus": os.cpu_count(), "torch": torch.__version__,
                    "threads": args.threads}}
    (args.out / "shapes.json").write_text(json.dumps(result, indent=2) + "\n")
    md = ["# Detection on other image shapes", "",
          "Test AUC (pollution flagged / normal flagged in the pool), means over the seeds "
          "run, from: "
          + "; ".join(f"`{c}`" for c in result["commands"]), "",
          table(rows), ""]
    md += per_seed(rows)
    pieces = [r for r in rows if "piece_auc" in r]
    if pieces:
        md += ["## Rt-BiGAN: test AUC of each piece of evidence", "",
               "| task | detector | " + " | ".join(PIECES) + " |",
               "|---|---|" + "---|" * len(PIECES)]
        md += [f"| {r['task']} | {r['detector']} | " + " | ".join(
            f"{r['piece_auc'][p]:.3f}" if p in r["piece_auc"] else "—"
            for p in PIECES) + " |" for r in pieces]
        md.append("")
    md += ["Scoring throughput (images/s, test set): " + ", ".join(
        f"{r['task']} {r['detector']} {r['images_per_s']}" for r in rows
        if r["detector"].startswith("rtbigan/own")), ""]
    (args.out / "shapes.md").write_text("\n".join(md))
    console.print("\n".join(md))


if __name__ == "__main__":
    main()
