"""Detection benchmark: Rt-BiGAN (per self-training round), its ablations and the baselines.

Pool = the 4,000 packaged MNIST training digits + Fashion-MNIST training images at each
contamination level; test = 2,000 official MNIST test digits + 2,000 Fashion test images.
Writes ``benchmarks/results/detection.json`` and ``detection.md``.

    python benchmarks/detection.py            # full: 6 levels, 3 seeds
    python benchmarks/detection.py --quick    # 1 seed, levels 0 / 0.2 / 0.4
    python benchmarks/detection.py --methods adegan,agad --update   # add rows, keep the rest
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np

from fedsieve.simulations.benchmark import PAPER_TABLE_1, PEER_SETTINGS, detection_test_set
from fedsieve.simulations.tables import format_mean_std, format_value, mean_std

REPO = Path(__file__).resolve().parents[1]
ABLATIONS = {
    "rtbigan-no-norm": {"training": {"normalize_scores": False}},
    "rtbigan-no-anchors": {"training": {"trusted_anchors": False}},
    "rtbigan+recon": {"training": {"recon_weight": 1.0}},
    "rtbigan-no-pixelweight": {"training": {"pixel_weighting": False}},
    "rtbigan-no-meta": {"meta_checkpoint": None},
    "rtbigan-paper": {"training": {"normalize_scores": False, "trusted_anchors": False,
                                   "recon_weight": 0.0, "pixel_weighting": False}},
}
BASELINES = PEER_SETTINGS


def make_data(contamination: float, seed: int, mnist_test_root: str):
    from fedsieve.shared.data.datasets import load_fashion_mnist, load_mnist

    rng = np.random.default_rng(seed)
    mn = load_mnist("train").images
    fa = load_fashion_mnist("train").images
    n_pol = int(round(len(mn) * contamination / (1 - contamination)))
    pool = np.concatenate([mn, fa[rng.choice(len(fa), n_pol, replace=False)]])
    y = np.r_[np.zeros(len(mn)), np.ones(n_pol)].astype(int)
    seeds = mn[rng.choice(len(mn), 10, replace=False)]
    test = detection_test_set(mnist_test_root)  # a missing root falls through to the defaults
    return pool, y, seeds, test.x, test.y, test.sources["mnist"]


def run_job(method: str, kw: dict, contamination: float, seed: int, root: str) -> dict:
    import torch
    from sklearn.metrics import precision_score, recall_score, roc_auc_score

    from fedsieve.shared.detectors import make_detector

    torch.set_num_threads(1)
    pool, y, seeds, x_test, y_test, test_src = make_data(contamination, seed, root)
    name = "rtbigan" if method.startswith("rtbigan") else method
    det = make_detector(name, random_state=seed, **kw)
    rounds: list[dict] = []

    def cb(d, r):
        rounds.append(
            {
                "round": r,
                "test_auc": float(roc_auc_score(y_test, d.decision_function(x_test))),
                **{k: v for k, v in d.history_[-1].items() if k != "round"},
            }
        )

    # Test AUC per round only for Rt-BiGAN's self-training rounds: for the one-round
    # detectors the callback would repeat the final test scoring inside the timed fit.
    callback = cb if name == "rtbigan" else None
    t0 = time.perf_counter()
    det.fit(pool, seeds, y_true=y if y.any() else None, callback=callback)
    fit_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    s = det.decision_function(x_test)
    score_s = time.perf_counter() - t0
    lab = det.labels_
    return {
        "method": method,
        "contamination": contamination,
        "seed": seed,
        "test_auc": float(roc_auc_score(y_test, s)),
        "pool_auc": float(roc_auc_score(y, det.decision_scores_)) if y.any() else None,
        "pool_recall": float(recall_score(y, lab, zero_division=0)) if y.any() else None,
        "pool_precision": float(precision_score(y, lab, zero_division=0)) if y.any() else None,
        "normal_flagged": float(lab[y == 0].mean()),
        "fit_s": fit_s,
        "samples_per_s": len(x_test) / score_s,
        "n_pool": len(pool),
        "rounds": rounds,
        "test_source": test_src,
    }


def throughput(n: int = 6000, threads: int = 2, **params) -> dict:
    """Scoring speed of a fitted Rt-BiGAN (``params`` passed to it) on n images, and
    adapt+self-train time on n images."""
    import torch

    from fedsieve.shared.data.datasets import load_fashion_mnist, load_mnist
    from fedsieve.shared.detectors import RtBiGAN

    torch.set_num_threads(threads)
    mn, fa = load_mnist("train").images, load_fashion_mnist("train").images
    pool = np.concatenate([mn, fa[: n - len(mn)]])
    t0 = time.perf_counter()
    det = RtBiGAN(random_state=0, **params).fit(pool, mn[:10])
    fit = time.perf_counter() - t0
    det.decision_function(pool[:500])
    t0 = time.perf_counter()
    det.decision_function(pool)
    return {
        "threads": threads,
        "pool": n,
        "adapt_self_train_s": fit,
        "samples_per_s": n / (time.perf_counter() - t0),
    }


def fmt(vals) -> str:
    present = [v for v in vals if v is not None]
    if len(present) == 1:  # one run: no spread to show
        return format_value(present[0])
    return format_mean_std(mean_std(vals))


def _fewer_runs(results: list[dict], n_seeds: int) -> str:
    """A note naming the methods run on fewer seeds or levels than the rest (``--update``)."""
    short = {}
    for m in dict.fromkeys(r["method"] for r in results):
        rs = [r for r in results if r["method"] == m]
        seeds = sorted({r["seed"] for r in rs})
        if len(seeds) < n_seeds and not m.startswith("rtbigan-"):
            short[m] = f"{m} (seeds {seeds}, c = {sorted({r['contamination'] for r in rs})})"
    return f"  \nRun on fewer seeds and levels: {'; '.join(short.values())}." if short else ""


def write_md(out: Path, results: list[dict], meta: dict) -> None:
    methods = list(dict.fromkeys(r["method"] for r in results))
    levels = sorted({r["contamination"] for r in results})
    lines = [
        "# Detection benchmark",
        "",
        f"Command: `{meta['command']}`  ",
        f"Machine: {meta['machine']}  ",
        f"Seeds: {meta['seeds']}; test = 2,000 MNIST test + 2,000 Fashion test images."
        + _fewer_runs(results, len(meta["seeds"])),
        "",
        "## Test AUC (mean ± std over seeds)",
        "",
        "| method | " + " | ".join(f"c={c:g}" for c in levels) + " |",
        "|---|" + "---|" * len(levels),
    ]
    for m in methods:
        row = [
            fmt([r["test_auc"] for r in results if r["method"] == m and r["contamination"] == c])
            for c in levels
        ]
        lines.append(f"| {m} | " + " | ".join(row) + " |")
        if m == "rtbigan":
            n_r = max(len(r["rounds"]) for r in results if r["method"] == m)
            for k in range(n_r):
                row = [
                    fmt(
                        [
                            r["rounds"][k]["test_auc"]
                            for r in results
                            if r["method"] == m and r["contamination"] == c and len(r["rounds"]) > k
                        ]
                    )
                    for c in levels
                ]
                lines.append(
                    f"| rtbigan round {k}{' (adapted only)' if k == 0 else ''} | "
                    + " | ".join(row)
                    + " |"
                )
    lines += [
        "",
        "## Pool filtering, fit time and scoring speed",
        "",
        "| method | c | pool AUC | recall (pollution flagged) | precision | normal flagged"
        " | fit s | samples/s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for m in methods:
        for c in levels:
            rs = [r for r in results if r["method"] == m and r["contamination"] == c]
            if rs:
                lines.append(
                    f"| {m} | {c:g} | {fmt([r['pool_auc'] for r in rs])} | "
                    f"{fmt([r['pool_recall'] for r in rs])} | "
                    f"{fmt([r['pool_precision'] for r in rs])} | "
                    f"{fmt([r['normal_flagged'] for r in rs])} | "
                    f"{np.mean([r['fit_s'] for r in rs]):.1f} | "
                    f"{np.mean([r['samples_per_s'] for r in rs]):.0f} |"
                )
    lines += [
        "",
        "## Paper Table I beside ours (test AUC, clean / polluted)",
        "",
        "| method | paper clean | paper polluted | ours c=0 | ours c=0.2 | ours c=0.4 |",
        "|---|---|---|---|---|---|",
    ]
    for paper_name, m in (("AnoGAN", "anogan"), ("EGBAD", "egbad"), ("Rt-BiGAN", "rtbigan")):
        ours = [
            fmt([r["test_auc"] for r in results if r["method"] == m and r["contamination"] == c])
            for c in (0.0, 0.2, 0.4)
        ]
        lines.append(
            f"| {paper_name} | {PAPER_TABLE_1[paper_name][0]} | {PAPER_TABLE_1[paper_name][1]} | "
            + " | ".join(ours)
            + " |"
        )
    if meta.get("throughput"):
        t = meta["throughput"]
        lines += [
            "",
            f"Rt-BiGAN on a {t['pool']}-image pool with {t['threads']} threads: adapt + "
            f"self-train {t['adapt_self_train_s']:.1f} s, scoring {t['samples_per_s']:.0f} "
            "samples/s.",
        ]
    lines += ["", "Timings in the tables are with 1 torch thread per job (2 jobs in parallel)."]
    out.write_text("\n".join(lines) + "\n")


def _merged(out: Path, results: list[dict], meta: dict) -> tuple[list[dict], dict]:
    """``results`` in place of the rows of ``OUT/detection.json`` they rerun (same method,
    level and seed); the earlier rows, commands and throughput are kept."""
    try:
        earlier = json.loads((out / "detection.json").read_text())
    except (OSError, ValueError) as exc:
        raise SystemExit(f"--update needs an earlier {out / 'detection.json'}: {exc}") from exc
    rerun = {(r["method"], r["contamination"], r["seed"]) for r in results}
    kept = [r for r in earlier["results"]
            if (r["method"], r["contamination"], r["seed"]) not in rerun]
    old = earlier["meta"]
    meta = {**old, "command": f"{old['command']}; then {meta['command']}",
            "seeds": sorted({*old["seeds"], *meta["seeds"]}),
            "levels": sorted({*old["levels"], *meta["levels"]}),
            "wall_s": old.get("wall_s", 0.0) + meta["wall_s"],
            "throughput": meta["throughput"] or old.get("throughput")}
    order = {m: i for i, m in enumerate(dict.fromkeys(r["method"] for r in kept + results))}
    merged = sorted(kept + results, key=lambda r: (order[r["method"]], r["contamination"],
                                                   r["seed"]))
    return merged, meta


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="one seed, levels 0 / 0.2 / 0.4")
    ap.add_argument("--methods", help="comma-separated: run only these (rtbigan, "
                    f"{', '.join(BASELINES)}, {', '.join(ABLATIONS)}); default all")
    ap.add_argument("--update", action="store_true",
                    help="merge into the earlier detection.json: replace the rows rerun, "
                    "keep the rest")
    ap.add_argument("--mnist-test-root", default=str(REPO.parent / "shared/datasets/mnist-test"))
    ap.add_argument("--out", default=str(REPO / "benchmarks/results"))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--no-baselines", action="store_true")
    args = ap.parse_args()
    import torch
    from rich.progress import Progress

    seeds = [0] if args.quick else [0, 1, 2]
    levels = [0.0, 0.2, 0.4] if args.quick else [0.0, 0.1, 0.2, 0.3, 0.4, 0.5]
    jobs = [("rtbigan", {}, c, s) for c in levels for s in seeds]
    if not args.no_baselines:
        jobs += [(m, kw, c, s) for m, kw in BASELINES.items() for c in levels for s in seeds]
    jobs += [(m, kw, 0.2, s) for m, kw in ABLATIONS.items() for s in seeds]
    if args.methods:
        wanted = args.methods.split(",")
        unknown = set(wanted) - {j[0] for j in jobs}
        if unknown:
            ap.error(f"unknown methods {sorted(unknown)}; choose from "
                     f"{', '.join(dict.fromkeys(j[0] for j in jobs))}")
        jobs = [j for j in jobs if j[0] in wanted]
    results = []
    t_start = time.perf_counter()
    with_throughput = any(j[0] == "rtbigan" for j in jobs)
    with Progress() as bar, ProcessPoolExecutor(args.workers) as pool:
        task = bar.add_task("benchmark", total=len(jobs) + with_throughput)
        futs = [pool.submit(run_job, m, kw, c, s, args.mnist_test_root) for m, kw, c, s in jobs]
        for f in as_completed(futs):
            results.append(f.result())
            bar.advance(task)
        tp = throughput() if with_throughput else None
        bar.advance(task)
    order = {m: i for i, m in enumerate(dict.fromkeys(j[0] for j in jobs))}
    results.sort(key=lambda r: (order[r["method"]], r["contamination"], r["seed"]))
    flags = [a for a in sys.argv[1:] if a != "--update"]
    meta = {
        "command": " ".join(["python benchmarks/detection.py", *flags]),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__}",
        "seeds": seeds,
        "levels": levels,
        "wall_s": time.perf_counter() - t_start,
        "throughput": tp,
        "paper_table_1": PAPER_TABLE_1,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.update:
        results, meta = _merged(out, results, meta)
    (out / "detection.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    write_md(out / "detection.md", results, meta)
    print((out / "detection.md").read_text())


if __name__ == "__main__":
    main()
