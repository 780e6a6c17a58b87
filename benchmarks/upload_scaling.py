"""Upload scaling: the server's screening time and memory as the uploads grow, with the fit
bounded to a sample of the pool (``score_pool(..., max_fit_samples=...)``) and without.

Each run screens ``N`` uploads from 10 clients with the default Rt-BiGAN (fit + score), in a
fresh process so that its peak resident memory (``ru_maxrss``) is the screening's own. The
uploads are the example federation (the packaged MNIST digits, 20 % Fashion-MNIST pollution,
seed 0; :func:`fedsieve.simulations.pollution.federation_for`) scaled up by repetition as in
:mod:`fedsieve.simulations.stress`: each client's samples repeated under fresh ids. The pool
therefore holds only ~5,000 distinct images however large it is. Writes
``upload-scaling.json`` and ``upload-scaling.md`` under ``--out``.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/upload_scaling.py \\
        [--sizes 10000,30000,100000,300000,1000000] [--max-fit-samples 20000] \\
        [--unbounded-up-to 100000] [--fit-sweep 5000,10000,40000] [--fit-sweep-at 100000] \\
        [--threads 2] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: Targets of the issue: 100,000 uploads screened within this many seconds on 2 cores...
TARGET_SECONDS_100K = 120.0
#: ...and the server's peak memory at 1,000,000 uploads within this many MiB (1.5 GB).
TARGET_RSS_MB_1M = 1.5 * 1000**3 / 2**20


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


# -- one run, in its own process ---------------------------------------------------------------
def _rss_now_mb() -> float:
    """Resident memory of this process now, in MiB."""
    with open("/proc/self/statm", encoding="ascii") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _cpu_s() -> float:
    """User + system CPU seconds of this process so far."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def build_uploads(size: int, clients: int, seed: int, folder: Path) -> None:
    """Write ``size`` uploads over ``clients`` nodes to ``folder``: the example federation
    repeated (the stress harness's scaling, cut to exactly ``size``), each node's images and
    ids, each row's pollution flag, and the trusted images. Run in a process of its own, so
    that building the federation (datasets, partitioners) stays out of the screening's
    memory."""
    import numpy as np

    from fedsieve.simulations.pollution import ID_STRIDE, federation_for
    from fedsieve.simulations.stress import stress_settings

    federation = federation_for(stress_settings(clients, seed))
    held = np.array([len(c) for c in federation.clients])
    counts = np.floor(size * held / held.sum()).astype(int)
    counts[: size - counts.sum()] += 1
    folder.mkdir(parents=True, exist_ok=True)
    for node, (client, n) in enumerate(zip(federation.clients, counts), start=1000):
        repeat = np.arange(n) % len(client)  # the stress harness's tiling, exactly n rows
        x = client.x[repeat]
        np.save(folder / f"{node}.x.npy", x.reshape(n, 1, *x.shape[1:]))
        np.save(folder / f"{node}.ids.npy",
                client.client_id * ID_STRIDE + np.arange(n, dtype=np.int64))
        np.save(folder / f"{node}.polluted.npy",
                np.asarray(client.polluted, dtype=np.int64)[repeat])
    np.save(folder / "trusted.npy", np.asarray(federation.trusted_set.images))


def load_uploads(folder: Path):
    """The uploads :func:`build_uploads` wrote, held in memory as a server holds them; each
    node's pollution flags; the trusted images."""
    import numpy as np

    from fedsieve.server.screening import ClientUpload

    uploads, truth = {}, {}
    for path in sorted(folder.glob("*.x.npy")):
        node = int(path.name.split(".")[0])
        x = np.load(path)
        uploads[node] = ClientUpload(node, x, np.load(folder / f"{node}.ids.npy"), len(x))
        truth[node] = np.load(folder / f"{node}.polluted.npy")
    return uploads, truth, np.load(folder / "trusted.npy")


def child(spec: dict) -> dict:
    """One screening: build the uploads, then time ``score_pool`` (fit + score)."""
    import logging

    import numpy as np
    import torch
    from sklearn.metrics import roc_auc_score

    from fedsieve.server.screening import score_pool
    from fedsieve.shared.detectors import RtBiGAN

    torch.set_num_threads(spec["threads"])
    loaded = time.perf_counter()
    uploads, truth, trusted = load_uploads(Path(spec["data"]))
    load_s = time.perf_counter() - loaded
    rss_before, peak_before = _rss_now_mb(), _peak_rss_mb()
    messages: list[str] = []
    stamps: list[float] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(record.getMessage())
            stamps.append(time.perf_counter())

    logging.getLogger("flwr").addHandler(Keep(logging.INFO))
    samples: list[tuple[float, float]] = []  # (time, resident MiB), every 0.1 s
    sampling = threading.Event()

    def sample() -> None:
        while not sampling.wait(0.1):
            samples.append((time.perf_counter(), _rss_now_mb()))

    threading.Thread(target=sample, daemon=True).start()
    made = []

    def detector():
        made.append(RtBiGAN(random_state=spec["seed"]))
        return made[-1]

    load = os.getloadavg()[0]
    cpu = _cpu_s()
    started = time.perf_counter()
    scoring = score_pool(uploads, trusted, detector, max_fit_samples=spec["max_fit_samples"],
                         score_batch=spec["score_batch"], sample_seed=spec["seed"])
    ended = time.perf_counter()
    wall = ended - started
    cpu = _cpu_s() - cpu
    peak = _peak_rss_mb()
    sampling.set()
    nodes = sorted(scoring.verdicts)
    scores = np.concatenate([scoring.verdicts[n].scores for n in nodes])
    verdicts = np.concatenate([scoring.verdicts[n].verdicts for n in nodes])
    polluted = np.concatenate([truth[n] for n in nodes])
    fit_s = float(made[0].fit_time_)
    phases = _phases(started, ended, fit_s, messages, stamps, samples)
    return {
        **spec,
        "bounded": spec["max_fit_samples"] is not None
        and spec["size"] > spec["max_fit_samples"],
        "fitted_on": len(made[0].decision_scores_),
        "fit_rounds": [{k: r[k] for k in ("round", "n_flagged", "changed", "elapsed_s")}
                       for r in made[0].history_],
        "uploads": len(scores),
        "wall_s": wall,
        "uploads_per_s": len(scores) / wall,
        "fit_s": fit_s,
        # Ordering, sampling, scoring the uploads outside the fit, verdicts, statistics.
        "outside_fit_s": wall - fit_s,
        # Seconds and highest sampled resident MiB of each phase of the screening.
        "phases": phases,
        "cpu_s": cpu,
        "load_s": load_s,
        "rss_before_mb": rss_before,
        "uploads_mb": sum(u.x.nbytes + u.ids.nbytes for u in uploads.values()) / 2**20,
        "peak_rss_before_mb": peak_before,
        "peak_rss_mb": peak,
        "screening_overhead_mb": peak - rss_before,
        "auc": float(roc_auc_score(polluted, scores)),
        "pollution_flagged": float(verdicts[polluted == 1].mean()),
        "normal_flagged": float(verdicts[polluted == 0].mean()),
        "threshold": scoring.threshold,
        "contamination": scoring.contamination,
        "true_contamination": float(polluted.mean()),
        "load_average_1m_at_start": load,
        "load_average_1m_at_end": os.getloadavg()[0],
        "torch_threads": torch.get_num_threads(),
        "log": messages,
    }


def _phases(started: float, ended: float, fit_s: float, messages: list[str],
            stamps: list[float], samples: list[tuple[float, float]]) -> dict:
    """Seconds and peak sampled RSS of each phase: ``prepare`` (ordering, the sample), ``fit``,
    ``score`` (the bounded path's scoring of every upload) and ``finish`` (verdicts,
    statistics), cut at the screening's log messages."""
    fitted = next((t for m, t in zip(messages, stamps) if "detector fitted" in m), ended)
    scored = next((t for m, t in zip(messages, stamps) if m.startswith("fedsieve: scored")),
                  fitted)
    edges = {"prepare": (started, fitted - fit_s), "fit": (fitted - fit_s, fitted),
             "score": (fitted, scored), "finish": (scored, ended)}
    return {name: {"s": b - a, "peak_rss_mb": max((r for t, r in samples if a <= t <= b),
                                                   default=None)}
            for name, (a, b) in edges.items()}


# -- the parent: one fresh process per run -----------------------------------------------------
def _python(args: list[str], threads: int, wait_policy: str = "") -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    if wait_policy:
        env["OMP_WAIT_POLICY"] = wait_policy
    return subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True,
                          env=env, cwd=REPO)


def run_one(spec: dict, data: Path, work: Path, wait_policy: str = "") -> dict:
    """``spec`` on the uploads in ``data``, in a fresh interpreter; its result (or the error
    and the output's tail)."""
    result = work / "result.json"
    result.unlink(missing_ok=True)
    done = _python(["--child", json.dumps({**spec, "data": str(data)}),
                    "--child-out", str(result)], spec["threads"], wait_policy)
    if done.returncode != 0 or not result.exists():
        return {**spec, "error": f"exit {done.returncode}",
                "output_tail": (done.stdout + done.stderr)[-3000:]}
    run = json.loads(result.read_text())
    run.pop("data")
    return run


def plan(args: argparse.Namespace) -> list[dict]:
    """The runs: bounded at every size, unbounded where it differs and is allowed, and the
    fit-size sweep."""
    base = {"clients": args.clients, "seed": args.seed, "threads": args.threads,
            "score_batch": args.score_batch}
    runs = [{**base, "size": n, "max_fit_samples": args.max_fit_samples, "role": "scaling"}
            for n in args.sizes]
    runs += [{**base, "size": n, "max_fit_samples": None, "role": "unbounded"}
             for n in args.sizes if args.max_fit_samples < n <= args.unbounded_up_to]
    runs += [{**base, "size": args.fit_sweep_at, "max_fit_samples": k, "role": "fit-sweep"}
             for k in args.fit_sweep if k != args.max_fit_samples]
    return runs


def summary(runs: list[dict], args: argparse.Namespace) -> dict:
    """Ratios and targets, from the runs that finished."""
    ok = [r for r in runs if "error" not in r]
    scaling = {r["size"]: r for r in ok if r["role"] == "scaling"}
    unbounded = {r["size"]: r for r in ok if r["role"] == "unbounded"}
    for n, r in scaling.items():  # within the bound the two paths are one
        if not r["bounded"] and n <= args.unbounded_up_to:
            unbounded.setdefault(n, r)
    out: dict = {}
    at = 100_000 if 100_000 in scaling else max(scaling, default=None)
    if at is not None and at in unbounded:
        b, u = scaling[at], unbounded[at]
        out[f"at_{at}"] = {"bounded_s": b["wall_s"], "unbounded_s": u["wall_s"],
                           "unbounded_over_bounded_time": u["wall_s"] / b["wall_s"],
                           "bounded_cpu_s": b["cpu_s"], "unbounded_cpu_s": u["cpu_s"],
                           "unbounded_over_bounded_cpu": u["cpu_s"] / b["cpu_s"],
                           "bounded_auc": b["auc"], "unbounded_auc": u["auc"],
                           "auc_bounded_minus_unbounded": b["auc"] - u["auc"],
                           "unbounded_over_bounded_peak_rss": u["peak_rss_mb"]
                           / b["peak_rss_mb"]}
    if 100_000 in scaling:
        # Every bounded run at 100,000 with the same fit size: the latest and any kept repeat
        # (on a shared machine the time depends on the other jobs' load).
        tries = [r for r in ok if r["size"] == 100_000 and r["role"] in ("scaling", "repeat")
                 and r["max_fit_samples"] == scaling[100_000]["max_fit_samples"]]
        out["target_100k_s"] = {"target": TARGET_SECONDS_100K,
                                "measured": scaling[100_000]["wall_s"],
                                "met": scaling[100_000]["wall_s"] <= TARGET_SECONDS_100K,
                                "all_runs": [{"wall_s": r["wall_s"], "cpu_s": r["cpu_s"],
                                              "load": [r["load_average_1m_at_start"],
                                                       r.get("load_average_1m_at_end")]}
                                             for r in tries]}
    if 1_000_000 in scaling:
        out["target_1m_peak_rss_mb"] = {"target": TARGET_RSS_MB_1M,
                                        "measured": scaling[1_000_000]["peak_rss_mb"],
                                        "met": scaling[1_000_000]["peak_rss_mb"]
                                        <= TARGET_RSS_MB_1M,
                                        "before_screening": scaling[1_000_000]["rss_before_mb"],
                                        "uploads_mb": scaling[1_000_000].get("uploads_mb")}
    sizes = sorted(n for n, r in scaling.items() if r["bounded"])
    if len(sizes) >= 2:
        lo, hi = scaling[sizes[0]], scaling[sizes[-1]]
        out["bounded_time_growth"] = {
            "sizes": [sizes[0], sizes[-1]], "size_ratio": sizes[-1] / sizes[0],
            "time_ratio": hi["wall_s"] / lo["wall_s"],
            "outside_fit_s_per_1000_uploads_at_largest": 1000 * hi["outside_fit_s"] / sizes[-1]}
    return out


def markdown(result: dict) -> str:
    meta, runs = result["meta"], result["runs"]
    machine = meta["machine"]
    lines = [
        "# Upload scaling: bounded fit vs fit on the whole pool",
        "",
        *(f"`{c}`" + ("  " if i + 1 < len(meta.get("commands", [])) else "")
          for i, c in enumerate(meta.get("commands", [meta["command"]]))),
        "",
        f"{machine['cpu']}, {machine['cores']} cores, {meta['threads']} torch threads; "
        f"default Rt-BiGAN (seed {meta['seed']}), {meta['clients']} clients, score batch "
        f"{meta['score_batch']}, OMP_WAIT_POLICY={meta.get('omp_wait_policy') or 'default'}. "
        "Uploads: the example federation (packaged MNIST digits, 20 % "
        "Fashion-MNIST) repeated under fresh ids, so every pool holds the same ~5,000 "
        "distinct images. Each run is a fresh process that loads the uploads (built "
        "beforehand by another process) and screens them: *peak RSS* is its `ru_maxrss` "
        "after screening, *before* its resident memory once the uploads were loaded (the "
        "uploads themselves, torch, flwr), *overhead* the difference. *fit* is the "
        "detector's `fit_time_`, *rounds* its self-training rounds (it stops early when "
        "fewer than 0.2 % of the verdicts change; ? = not recorded); *rest* = ordering, "
        "sampling, scoring outside the fit, "
        "statistics; *CPU* = user + system seconds of the screening. Load = 1-minute load "
        "average when the screening started and ended (other jobs shared the machine when "
        "it is above ~0).",
        "",
        "| uploads | fit on | wall s | uploads/s | fit s | rounds | rest s | CPU s "
        "| peak RSS MiB | before MiB | overhead MiB | AUC | pollution flagged "
        "| normal flagged | load |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    order = {"scaling": 0, "repeat": 0, "unbounded": 1, "fit-sweep": 2}
    for r in sorted(runs, key=lambda r: (order[r["role"]], r["size"],
                                         r["max_fit_samples"] or 0)):
        if "error" in r:
            lines.append(f"| {r['size']:,} | {r['max_fit_samples']} | failed: {r['error']} |"
                         + " |" * 12)
            continue
        fit_on = f"{r['fitted_on']:,}" + ("" if r["bounded"] else " (all)")
        lines.append(
            f"| {r['size']:,} | {fit_on} | {r['wall_s']:.1f} | {r['uploads_per_s']:,.0f} | "
            f"{r['fit_s']:.1f} | {len(r['fit_rounds']) - 1 if 'fit_rounds' in r else '?'} | "
            f"{r['outside_fit_s']:.1f} | {r['cpu_s']:.0f} | "
            f"{r['peak_rss_mb']:,.0f} | "
            f"{r['rss_before_mb']:,.0f} | {r['screening_overhead_mb']:,.0f} | {r['auc']:.4f} | "
            f"{r['pollution_flagged']:.1%} | {r['normal_flagged']:.2%} | "
            f"{r['load_average_1m_at_start']:.1f}-{r['load_average_1m_at_end']:.1f} |")
    phased = [r for r in runs if "phases" in r]
    if phased:
        lines += ["", "## Where the time and the memory go", "",
                  "Seconds and highest resident MiB (sampled every 0.1 s) of each phase: "
                  "*prepare* = ordering the pool and drawing the sample, *fit*, *score* = "
                  "the bounded path scoring every upload, *finish* = verdicts and statistics.",
                  "", "| uploads | fit on | prepare | fit | score | finish |",
                  "|---:|---:|---:|---:|---:|---:|"]
        for r in sorted(phased, key=lambda r: (r["size"], r["max_fit_samples"] or 0)):
            cells = [f"{p['s']:.1f} s" + ("" if p["peak_rss_mb"] is None
                                           else f" / {p['peak_rss_mb']:,.0f} MiB")
                     for p in (r["phases"][k] for k in ("prepare", "fit", "score", "finish"))]
            lines.append(f"| {r['size']:,} | {r['fitted_on']:,} | " + " | ".join(cells) + " |")
    lines += ["", "## Summary", ""]
    s = result["summary"]
    for key, v in s.items():
        if key.startswith("at_"):
            lines.append(
                f"- At {int(key[3:]):,} uploads: bounded {v['bounded_s']:.1f} s vs whole-pool "
                f"{v['unbounded_s']:.1f} s (**{v['unbounded_over_bounded_time']:.2f}x** "
                f"faster; CPU {v['bounded_cpu_s']:.0f} s vs {v['unbounded_cpu_s']:.0f} s, "
                f"{v['unbounded_over_bounded_cpu']:.2f}x), AUC {v['bounded_auc']:.4f} vs "
                f"{v['unbounded_auc']:.4f} "
                f"({v['auc_bounded_minus_unbounded']:+.4f}), peak RSS ratio "
                f"{v['unbounded_over_bounded_peak_rss']:.2f}x.")
    if "target_100k_s" in s:
        t = s["target_100k_s"]
        lines.append(f"- Target 100,000 uploads in <= {t['target']:.0f} s: {t['measured']:.1f} s "
                     f"({'met' if t['met'] else 'missed'}).")
        if len(t.get("all_runs", [])) > 1:
            lines.append("  Every bounded run at 100,000 (wall s, CPU s, load): " + "; ".join(
                f"{r['wall_s']:.1f} s, {r['cpu_s']:.0f} CPU s, load "
                f"{r['load'][0]:.1f}-{r['load'][1] or 0:.1f}" for r in t["all_runs"]) + ".")
    if "target_1m_peak_rss_mb" in s:
        t = s["target_1m_peak_rss_mb"]
        lines.append(f"- Target peak RSS at 1,000,000 uploads <= {t['target']:,.0f} MiB (1.5 GB): "
                     f"{t['measured']:,.0f} MiB ({'met' if t['met'] else 'missed'}).")
        if t.get("uploads_mb") is not None:
            lines.append(
                f"  Before screening the process already held {t['before_screening']:,.0f} MiB:"
                f" the uploads ({t['uploads_mb']:,.0f} MiB as uint8) and "
                f"{t['before_screening'] - t['uploads_mb']:,.0f} MiB of everything else "
                "(torch, flwr, the detectors' modules); the screening added "
                f"{t['measured'] - t['before_screening']:,.0f} MiB.")
    if "bounded_time_growth" in s:
        g = s["bounded_time_growth"]
        per = g["outside_fit_s_per_1000_uploads_at_largest"]
        lines.append(f"- Bounded, {g['sizes'][0]:,} -> {g['sizes'][1]:,} uploads: "
                     f"{g['size_ratio']:.0f}x the uploads took {g['time_ratio']:.1f}x "
                     f"the time; outside the fit {per:.3f} s per 1,000 uploads at the largest "
                     "size.")
    lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=_ints, default=_ints("10000,30000,100000,300000,1000000"))
    ap.add_argument("--max-fit-samples", type=int, default=None,
                    help="the bounded fit's sample (default: DEFAULT_MAX_FIT_SAMPLES)")
    ap.add_argument("--unbounded-up-to", type=int, default=100_000,
                    help="largest pool also fitted whole (the unbounded path)")
    ap.add_argument("--fit-sweep", type=_ints, default=_ints("5000,10000,40000"),
                    help="other max_fit_samples tried at --fit-sweep-at ('' to skip)")
    ap.add_argument("--fit-sweep-at", type=int, default=100_000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--score-batch", type=int, default=4096)
    ap.add_argument("--clients", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(REPO / "benchmarks/results"))
    ap.add_argument("--omp-wait-policy", default="PASSIVE",
                    help="OMP_WAIT_POLICY of the screening processes ('' leaves OpenMP's "
                         "default). PASSIVE: on a machine shared with other jobs, torch's "
                         "spinning threads otherwise slow small training steps down ~10x")
    ap.add_argument("--merge", action="store_true",
                    help="keep the runs of an earlier upload-scaling.json under --out that "
                         "this invocation does not redo")
    ap.add_argument("--markdown-only", action="store_true",
                    help="rewrite upload-scaling.md from the upload-scaling.json under --out")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--child-out", help=argparse.SUPPRESS)
    ap.add_argument("--build", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--build-to", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        Path(args.child_out).write_text(json.dumps(child(json.loads(args.child))))
        return
    if args.build:
        build_uploads(args.build, args.clients, args.seed, Path(args.build_to))
        return

    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from fedsieve.server.screening import DEFAULT_MAX_FIT_SAMPLES
    from fedsieve.simulations.machine import machine_info

    if args.max_fit_samples is None:
        args.max_fit_samples = DEFAULT_MAX_FIT_SAMPLES
    console = Console()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.markdown_only:
        result = json.loads((out / "upload-scaling.json").read_text())
        meta = result["meta"]
        args.unbounded_up_to = meta["unbounded_up_to"]
        result["summary"] = summary(result["runs"], args)
        (out / "upload-scaling.json").write_text(json.dumps(result, indent=1))
        (out / "upload-scaling.md").write_text(markdown(result))
        console.print(markdown(result))
        return
    specs = plan(args)
    command = "OMP_NUM_THREADS=2 python benchmarks/upload_scaling.py " + " ".join(sys.argv[1:])
    meta = {"command": command, "commands": [command], "machine": machine_info(),
            "threads": args.threads, "seed": args.seed, "clients": args.clients,
            "score_batch": args.score_batch, "max_fit_samples": args.max_fit_samples,
            "unbounded_up_to": args.unbounded_up_to, "omp_wait_policy": args.omp_wait_policy,
            "wall_s": 0.0}
    runs: list[dict] = []
    earlier = out / "upload-scaling.json"
    if args.merge and earlier.exists():
        before = json.loads(earlier.read_text())
        redo = {(s["size"], s["max_fit_samples"], s["role"]) for s in specs}
        runs = [r for r in before["runs"]
                if (r["size"], r["max_fit_samples"], r["role"]) not in redo]
        meta["commands"] = [*before["meta"].get("commands", [before["meta"]["command"]]),
                            command]
        meta["wall_s"] = before["meta"].get("wall_s", 0.0)
    started = time.perf_counter() - meta["wall_s"]
    sizes = sorted({s["size"] for s in specs})
    with tempfile.TemporaryDirectory() as tmp, Progress(
            TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/"
            "{task.total}"), TimeElapsedColumn(), console=console) as progress:
        task = progress.add_task("upload scaling", total=len(specs))
        for size in sizes:  # each size's uploads built once, in a process of their own
            data = Path(tmp) / str(size)
            progress.update(task, description=f"building {size:,} uploads")
            built = _python(["--build", str(size), "--build-to", str(data), "--clients",
                             str(args.clients), "--seed", str(args.seed)], args.threads)
            if built.returncode != 0:
                raise SystemExit(f"building {size} uploads failed:\n{built.stderr[-3000:]}")
            for spec in (s for s in specs if s["size"] == size):
                fit = spec["max_fit_samples"] or "all"
                progress.update(task, description=f"{size:,} uploads, fit on {fit}")
                run = run_one(spec, data, Path(tmp), args.omp_wait_policy)
                runs.append(run)
                if "error" in run:
                    progress.console.print(f"[red]{size:,} / {fit}: {run['error']}[/red]\n"
                                           f"{run['output_tail']}")
                else:
                    progress.console.print(
                        f"{size:>9,} uploads, fit on {run['fitted_on']:>7,}: "
                        f"{run['wall_s']:7.1f} s ({run['uploads_per_s']:,.0f}/s), fit "
                        f"{run['fit_s']:.1f} s, peak RSS {run['peak_rss_mb']:,.0f} MiB "
                        f"(before {run['rss_before_mb']:,.0f}), AUC {run['auc']:.4f}, "
                        f"load {run['load_average_1m_at_start']:.1f}")
                result = {"meta": {**meta, "wall_s": time.perf_counter() - started},
                          "summary": summary(runs, args), "runs": runs}
                earlier.write_text(json.dumps(result, indent=1))
                (out / "upload-scaling.md").write_text(markdown(result))
                progress.advance(task)
            shutil.rmtree(data)
    console.print(markdown(result))

if __name__ == "__main__":
    main()
