"""Pollution benchmark: every detector on every kind of the pollution zoo, side by side.

Pool = the 4,000 packaged MNIST training digits (without the held-out class, for
``held-out``) + pollution of one kind at each rate, made by :mod:`fedsieve.simulations.zoo`;
10 trusted digits from the pool's normal digits. Test = 2,000 official MNIST test digits + 2,000
anomalies of the same kind made from the test splits
(:func:`fedsieve.simulations.benchmark.detection_test_set`). Reported per detector, kind and
rate (mean ± std over seeds): test AUC, fraction of the pollution flagged, fraction of the
normal pool flagged, fit time. Writes ``pollution.json`` and ``pollution.md``.

    python benchmarks/pollution.py                 # every kind x 0/0.1/0.2/0.4/0.6 x 3 seeds
    python benchmarks/pollution.py --quick         # rtbigan + iforest, 0.2 / 0.6, 1 seed
    python benchmarks/pollution.py --kinds trigger:size=3,black --rates 0.1 --detectors rtbigan

``--add`` runs jobs beside those already in the log and reports them all, e.g. new detectors
on one seed and rate of the grid:

    python benchmarks/pollution.py --add --detectors adegan --rates 0.2 --seeds 1

Every finished job is appended to ``pollution.jsonl`` beside the results; ``--resume`` skips the
jobs found there, so the full grid (about 3 h on 2 cores for the first five detectors, about 4 h
more for the three paper detectors) can be run in pieces. Jobs run seed by seed: a grid cut
short still has every detector at its first seeds.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np

from fedsieve.shared.detectors.evidence import DEFAULT_EVIDENCE
from fedsieve.simulations.benchmark import PEER_SETTINGS
from fedsieve.simulations.machine import machine_info
from fedsieve.simulations.tables import format_mean_std, format_value, mean_std

REPO = Path(__file__).resolve().parents[1]
#: One of each elementary kind, with its default parameters.
KINDS = ("fashion", "ink-fashion", "black", "white", "grey", "noise", "salt-pepper", "inverted",
         "blurred", "low-contrast", "occluded", "trigger:size=3", "held-out:digit=9",
         "fashion,ink-fashion,black,noise,inverted,blurred,occluded,trigger:size=3")
RATES = (0.0, 0.1, 0.2, 0.4, 0.6)
DETECTORS = {"rtbigan": {}, **PEER_SETTINGS}
#: Rt-BiGAN's switches that are off by default, measured only when named in --detectors.
ABLATIONS = {"rtbigan+push": {"evidence": [*DEFAULT_EVIDENCE, "latent-push"]}}


def make_pool(kind: str, rate: float, seed: int, claimed: bool = False):
    """The pool (uint8), its ground truth (1 = pollution) and 10 trusted normal digits; with
    ``claimed``, also the labels its samples claim (a digit's own, a random one for pollution,
    the harness's default label policy)."""
    from fedsieve.shared.data.datasets import load_fashion_mnist, load_mnist
    from fedsieve.simulations.zoo import Material, parse_pollution

    rng = np.random.default_rng(seed)
    mix = parse_pollution(kind)
    mnist = load_mnist("train")
    held = mix.held_out_class
    normal = np.ones(len(mnist.labels), bool) if held is None else mnist.labels != held
    digits, labels = mnist.images[normal], mnist.labels[normal].astype(np.int64)
    n_pol = int(round(len(digits) * rate / (1 - rate)))
    fashion = None
    if mix.needs_fashion and n_pol:
        images = load_fashion_mnist("train").images
        fashion = images[rng.permutation(len(images))[:mix.fashion_needed(n_pol)]]
    made = mix.sample_with_kinds(n_pol, rng, Material(
        digits, labels, fashion, mnist.images[~normal], mnist.labels[~normal].astype(np.int64)))
    pool = np.concatenate([digits, made.images])
    y = np.r_[np.zeros(len(digits)), np.ones(n_pol)].astype(int)
    trusted = digits[rng.choice(len(digits), 10, replace=False)]
    if claimed:
        return pool, y, trusted, np.r_[labels, rng.integers(0, 10, n_pol)].astype(np.int64)
    return pool, y, trusted


def run_job(detector: str, kind: str, rate: float, seed: int, mnist_test_root: str,
            test_kinds: list[str] | None = None) -> list[dict]:
    """Fit one detector on one pool; score the test set of ``kind`` (or of each of
    ``test_kinds``: a clean pool is the same for every kind, so it is fitted once)."""
    import torch

    from fedsieve.shared.detectors import make_detector
    from fedsieve.simulations.benchmark import detection_test_set

    torch.set_num_threads(1)
    pool, y, trusted = make_pool(kind, rate, seed)
    name, params = ("rtbigan", ABLATIONS[detector]) if detector in ABLATIONS else (
        detector, DETECTORS[detector])
    det = make_detector(name, random_state=seed, **params)
    started = time.perf_counter()
    det.fit(pool, trusted, y_true=y if y.any() else None)
    fit_s = time.perf_counter() - started
    return [_scored(det, detector, test_kind, rate, seed, pool, y, fit_s,
                    detection_test_set(mnist_test_root, pollution=test_kind))
            for test_kind in (test_kinds or [kind])]


def _scored(det, detector: str, kind: str, rate: float, seed: int, pool: np.ndarray,
            y: np.ndarray, fit_s: float, test) -> dict:
    from sklearn.metrics import roc_auc_score

    scores = det.decision_function(test.x)
    labels = det.labels_
    return {
        "detector": detector, "kind": kind, "rate": rate, "seed": seed,
        "test_auc": float(roc_auc_score(test.y, scores)),
        "pool_auc": float(roc_auc_score(y, det.decision_scores_)) if y.any() else None,
        "pollution_flagged": float(labels[y == 1].mean()) if y.any() else None,
        "normal_flagged": float(labels[y == 0].mean()),
        "test_normal_flagged": float((scores[test.y == 0] > det.threshold_).mean()),
        "fit_s": fit_s,
        "n_pool": len(pool),
        "rounds_flagged": [h["n_flagged"] for h in det.history_],
        "test_sources": test.sources,
    }


def _values(results: list[dict], detector: str, kind: str, rate: float, key: str) -> list:
    """``key`` of every seed's row for one detector, kind and rate."""
    return [r[key] for r in results
            if (r["detector"], r["kind"], r["rate"]) == (detector, kind, rate)]


def _cell(results: list[dict], detector: str, kind: str, rate: float, key: str,
          spec: str = ".4f", n_seeds: int = 1) -> str:
    values = _values(results, detector, kind, rate, key)
    if not values:
        return "—"
    # A grid cut short: say how many seeds a cell has.
    short = f" (n={len(values)})" if len(values) < n_seeds else ""
    if len(values) == 1:  # one seed: no spread to show
        return format_value(values[0], spec) + short
    return format_mean_std(mean_std(values), spec) + short


def _mean(results: list[dict], detector: str, kind: str, rate: float, key: str) -> float | None:
    stat = mean_std(_values(results, detector, kind, rate, key))
    return None if stat is None else stat[0]


def _summary(results: list[dict], kinds: list[str], rates: list[float],
             detectors: list[str]) -> list[str]:
    """Rt-BiGAN's three figures per kind and rate, beside the best other detector's AUC."""
    lines = ["", "## Summary", "",
             "Rt-BiGAN: test AUC / pollution flagged / normal flagged (means over seeds); "
             "best other: the other detector with the highest mean test AUC.", "",
             "| kind | " + " | ".join(f"Rt-BiGAN c={r:g} | best other c={r:g}" for r in rates)
             + " |", "|---|" + "---|---|" * len(rates)]
    for kind in kinds:
        cells = []
        for rate in rates:
            figures = [_mean(results, "rtbigan", kind, rate, key)
                       for key in ("test_auc", "pollution_flagged", "normal_flagged")]
            cells.append(" / ".join(format_value(v, spec) for v, spec in
                                    zip(figures, (".3f", ".0%", ".1%"))))
            others = {d: _mean(results, d, kind, rate, "test_auc") for d in detectors
                      if d != "rtbigan"}
            others = {d: v for d, v in others.items() if v is not None}
            best = max(others, key=others.get) if others else None
            cells.append("—" if best is None else f"{best} {others[best]:.3f}")
        lines.append(f"| `{kind}` | " + " | ".join(cells) + " |")
    return lines


def write_md(path: Path, results: list[dict], meta: dict) -> None:
    """The Markdown report: one table per figure, kinds as rows, detectors x rates as cells."""
    detectors = list(dict.fromkeys(r["detector"] for r in results))
    kinds = list(dict.fromkeys(r["kind"] for r in results))
    rates = sorted({r["rate"] for r in results})
    lines = [
        "# Pollution benchmark", "",
        f"Command: `{meta['command']}`  ",
        f"Machine: {meta['machine']['cpu']}, {meta['machine']['cores']} cores, torch "
        f"{meta['machine']['packages']['torch']}; 1 torch thread per job, "
        f"{meta['workers']} jobs in parallel; wall time "
        f"{meta.get('wall_s_total', meta['wall_s']) / 60:.1f} min"
        + (f" over several runs ({meta['resumed_jobs']} jobs kept from earlier runs)"
           if meta.get("resumed_jobs") else "")
        + (f"; jobs added later (`--add`) ran on {meta['added_on']['cpu']}"
           if meta.get("added_on") else "") + ".  ",
        *([f"**Cut short: {meta['jobs_done']} of {meta['jobs']} jobs finished** (cells say n "
           "when they have fewer seeds; `--resume` runs the rest).  "]
          if meta.get("jobs_done", meta.get("jobs")) != meta.get("jobs") else []),
        f"Seeds: {meta['seeds']}. Pool: 4,000 packaged MNIST training digits + pollution of "
        "one kind; 10 trusted digits from the pool. Test: 2,000 official MNIST test digits + "
        "2,000 anomalies of the same kind made from the test splits. Mean ± std over seeds "
        "(the value alone with one seed).",
    ]
    if "rtbigan" in detectors and len(detectors) > 1:
        lines += _summary(results, kinds, [r for r in rates if r > 0], detectors)
    sections = (("Test AUC", "test_auc", ".4f", True),
                ("Pollution flagged (recall on the pool)", "pollution_flagged", ".1%", False),
                ("Normal pool images flagged", "normal_flagged", ".1%", True),
                ("Fit seconds", "fit_s", ".0f", True))
    for title, key, spec, with_clean in sections:
        shown = [r for r in rates if with_clean or r > 0]
        lines += ["", f"## {title}", "",
                  "| kind | detector | " + " | ".join(f"c={r:g}" for r in shown) + " |",
                  "|---|---|" + "---|" * len(shown)]
        for kind in kinds:
            for det in detectors:
                lines.append(f"| `{kind}` | {det} | " + " | ".join(
                    _cell(results, det, kind, r, key, spec, len(meta["seeds"])) for r in shown)
                    + " |")
    path.write_text("\n".join(lines) + "\n")


def _job_of(row: dict, kinds: list[str]) -> tuple:
    """The job that produced ``row``: a clean pool is fitted once, under the first kind."""
    return (row["detector"], row["kind"] if row["rate"] > 0 else kinds[0], row["rate"],
            row["seed"])


def _finished(log: Path, jobs: list[tuple], kinds: list[str]) -> list[dict]:
    """Rows of ``log`` that belong to ``jobs`` (a clean pool's rows: one per kind)."""
    wanted = set(jobs)
    rows = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    return [r for r in rows if r["kind"] in kinds and _job_of(r, kinds) in wanted]


def _earlier_wall_s(out: Path) -> float:
    """Wall time of the earlier runs whose jobs a resumed run keeps."""
    try:
        meta = json.loads((out / "pollution.json").read_text())["meta"]
    except (OSError, ValueError, KeyError):
        return 0.0
    return float(meta.get("wall_s_total", meta.get("wall_s", 0.0)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true",
                    help="rtbigan and iforest, rates 0.2 / 0.6, one seed")
    ap.add_argument("--kinds", help="kinds separated by ';' (default: every kind and a mix)")
    ap.add_argument("--rates", help="comma-separated rates (default: 0,0.1,0.2,0.4,0.6)")
    ap.add_argument("--seeds", type=int, help="seeds 0..n-1 (default 3)")
    ap.add_argument("--detectors", help=f"comma-separated, of {', '.join(DETECTORS)} "
                    f"(default) and the ablations {', '.join(ABLATIONS)}")
    ap.add_argument("--mnist-test-root", default=str(REPO.parent / "shared/datasets/mnist-test"))
    ap.add_argument("--out", default=str(REPO / "benchmarks/results"))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--resume", action="store_true",
                    help="keep the jobs already in OUT/pollution.jsonl and run only the rest")
    ap.add_argument("--add", action="store_true",
                    help="keep every job already in OUT/pollution.jsonl, run the jobs asked "
                    "for that are not there, report them all")
    ap.add_argument("--report-only", action="store_true",
                    help="run nothing, write the results of the jobs finished so far")
    args = ap.parse_args()
    args.resume = args.resume or args.report_only or args.add  # never wipe what it reports
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    kinds = args.kinds.split(";") if args.kinds else list(KINDS)
    rates = ([float(r) for r in args.rates.split(",")] if args.rates
             else [0.2, 0.6] if args.quick else list(RATES))
    seeds = list(range(args.seeds or (1 if args.quick else 3)))
    detectors = (args.detectors.split(",") if args.detectors
                 else ["rtbigan", "iforest"] if args.quick else list(DETECTORS))
    unknown = set(detectors) - set(DETECTORS) - set(ABLATIONS)
    if unknown:
        ap.error(f"unknown detectors {sorted(unknown)}; choose from "
                 f"{', '.join([*DETECTORS, *ABLATIONS])}")
    # A clean pool is the same for every kind: fit it once, under the first kind.
    jobs = [(d, k, r, s) for s in seeds for d in detectors for k in kinds for r in rates
            if r > 0 or k == kinds[0]]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = out / "pollution.jsonl"
    done = _finished(log, jobs, kinds) if args.resume else []
    if args.add:  # the earlier grid's rows too, and its kinds, rates, seeds and detectors
        done = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
        earlier = json.loads((out / "pollution.json").read_text())["meta"] if done else {}
        kinds = list(dict.fromkeys([*earlier.get("kinds", []), *kinds]))
        rates = sorted({*earlier.get("rates", []), *rates})
        seeds = sorted({*earlier.get("seeds", []), *seeds})
        detectors = list(dict.fromkeys([*earlier.get("detectors", []), *detectors]))
    if not args.resume:
        log.write_text("")
    finished = {_job_of(r, kinds) for r in done}
    todo = [] if args.report_only else [job for job in jobs if job not in finished]
    results, started = list(done), time.perf_counter()
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())
    with Progress(*columns) as bar, ProcessPoolExecutor(args.workers) as pool:
        task = bar.add_task("pollution benchmark", total=len(jobs), completed=len(jobs) - len(todo))
        futures = [pool.submit(run_job, *job, args.mnist_test_root,
                               kinds if job[2] == 0 else None) for job in todo]
        for future in as_completed(futures):
            rows = future.result()
            results += rows
            with log.open("a") as f:  # a grid cut short keeps what it finished
                f.writelines(json.dumps(row) + "\n" for row in rows)
            bar.advance(task)
    order = {(d, k): i for i, (d, k) in enumerate((d, k) for k in kinds for d in detectors)}
    results.sort(key=lambda r: (order[(r["detector"], r["kind"])], r["rate"], r["seed"]))
    # The command that reproduces the whole grid in one run.
    argv = [a for a in sys.argv[1:] if a not in ("--resume", "--report-only")]
    command = "python benchmarks/pollution.py " + shlex.join(argv)
    if args.add and done:
        command = earlier["command"] if not todo else f"{earlier['command']}; then {command}"
    meta = {"command": command,
            "machine": machine_info(), "workers": args.workers, "seeds": seeds,
            "rates": rates, "kinds": kinds, "detectors": detectors,
            "wall_s": time.perf_counter() - started,
            "resumed_jobs": len({_job_of(r, kinds) for r in done}) if args.add
            else len(set(jobs) & finished),
            "jobs": earlier.get("jobs", 0) + len(todo) if args.add and done else len(jobs),
            "jobs_done": len({_job_of(r, kinds) for r in results})}
    if args.add and done:  # the grid's machine; the added jobs' beside it
        meta["machine"], meta["added_on"] = earlier["machine"], meta["machine"]
    meta["wall_s_total"] = meta["wall_s"] + (_earlier_wall_s(out) if args.resume else 0.0)
    (out / "pollution.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    write_md(out / "pollution.md", results, meta)
    print((out / "pollution.md").read_text())


if __name__ == "__main__":
    main()
