"""What fewer trusted images cost: the default detector with 3, 5 and 10 trusted digits.

Pool = the 4,000 packaged MNIST training digits + 1,000 polluting images (20 %) of one kind
(:func:`pollution.make_pool`, one pool per kind and seed): Fashion-MNIST (the paper's
pollution) and occluded digits (the kind Rt-BiGAN finds least well in the pollution grid
after a held-out digit class). The
trusted images are the first 3, 5 or 10 of the pool's 10 trusted digits, so that each smaller
set is part of the larger one and the pool is the same. Test = 2,000 official MNIST test digits
+ 2,000 anomalies of the same kind (:func:`fedsieve.simulations.benchmark.detection_test_set`).
Reported per kind and trusted count (mean ± std over the seeds): test AUC, pool AUC, the share
of the pool's normal digits dropped and the share of its pollution dropped. Writes
``trusted-count.json`` and ``trusted-count.md``;
:data:`fedsieve.shared.data.trusted.FEW_TRUSTED_COST` quotes the result.

    python benchmarks/trusted_count.py                  # 2 kinds x 3/5/10 trusted x 3 seeds
    python benchmarks/trusted_count.py --kinds occluded --update   # add a kind, keep the rest

18 fits of ~70 s each on one thread, two at a time: ~10 min on an idle 2-core machine (the
committed results took 36 min on one shared with other jobs).
"""

from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from pollution import make_pool

from fedsieve.simulations.machine import machine_info
from fedsieve.simulations.tables import format_mean_std, mean_std

REPO = Path(__file__).resolve().parents[1]
MNIST_TEST_ROOT = REPO.parent / "shared" / "datasets" / "mnist-test"
COUNTS = (3, 5, 10)
SEEDS = (0, 1, 2)
KINDS = ("fashion", "occluded")
RATE = 0.2


def run_job(kind: str, count: int, seed: int, mnist_test_root: str) -> dict:
    """Fit the default Rt-BiGAN on the kind's and seed's pool with ``count`` trusted digits."""
    import torch
    from sklearn.metrics import roc_auc_score

    from fedsieve.shared.detectors import make_detector
    from fedsieve.simulations.benchmark import detection_test_set

    torch.set_num_threads(1)
    pool, y, trusted = make_pool(kind, RATE, seed)
    test = detection_test_set(mnist_test_root, pollution=kind)
    started = time.perf_counter()
    det = make_detector("rtbigan", random_state=seed).fit(pool, trusted[:count])
    fit_s = time.perf_counter() - started
    labels = np.asarray(det.labels_)
    return {
        "kind": kind, "trusted": count, "seed": seed,
        "test_auc": float(roc_auc_score(test.y, det.decision_function(test.x))),
        "pool_auc": float(roc_auc_score(y, det.decision_scores_)),
        "normal_dropped": float(labels[y == 0].mean()),
        "pollution_dropped": float(labels[y == 1].mean()),
        "fit_s": fit_s, "n_pool": len(pool), "test_source": test.sources["mnist"],
    }


def summarize(results: list[dict]) -> dict[str, dict[int, dict[str, list[float]]]]:
    """Kind -> trusted count -> metric -> [mean, std] over the seeds."""
    out: dict[str, dict] = {}
    for kind in dict.fromkeys(r.get("kind", "fashion") for r in results):
        for count in sorted({r["trusted"] for r in results}):
            rows = [r for r in results
                    if r.get("kind", "fashion") == kind and r["trusted"] == count]
            if rows:
                out.setdefault(kind, {})[count] = {
                    key: list(mean_std([r[key] for r in rows]))
                    for key in ("test_auc", "pool_auc", "normal_dropped", "pollution_dropped",
                                "fit_s")}
    return out


def write_md(path: Path, summary: dict, meta: dict) -> None:
    machine = meta["machine"]
    lines = ["# Trusted images: 3 vs 5 vs 10", "",
             f"Command: `{meta['command']}`; wall time {meta['wall_s'] / 60:.1f} min on "
             f"{machine['cpu']} ({machine['cores']} cores, shared; 1 torch thread per fit).  ",
             f"Default Rt-BiGAN (`make_detector(\"rtbigan\")`), seeds {list(meta['seeds'])}; "
             "pool = 4,000 packaged MNIST digits + 1,000 polluting images (20 %) of the kind, "
             "the same pool for every count; the smaller trusted sets are part of the larger "
             "ones. Test = 2,000 MNIST test digits + 2,000 anomalies of the kind made from the "
             "test splits. Mean ± std over seeds; fit time depends on the machine's load.", "",
             "| pollution | trusted | test AUC | pool AUC | normal dropped | pollution dropped "
             "| fit s |", "|---|---|---|---|---|---|---|"]
    for kind, count, row in ((k, c, r) for k, rows in summary.items() for c, r in rows.items()):
        lines.append(f"| {kind} | {count} | " + " | ".join(
            format_mean_std(tuple(row[k]), spec) for k, spec in
            (("test_auc", ".4f"), ("pool_auc", ".4f"), ("normal_dropped", ".3f"),
             ("pollution_dropped", ".3f"), ("fit_s", ".0f"))) + " |")
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(REPO / "benchmarks/results"))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seeds", default=",".join(map(str, SEEDS)))
    ap.add_argument("--kinds", default=",".join(KINDS))
    ap.add_argument("--update", action="store_true",
                    help="keep the rows of other kinds already in trusted-count.json")
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    kinds = args.kinds.split(",")
    out = Path(args.out)
    started = time.perf_counter()
    jobs = [(kind, count, seed) for kind in kinds for seed in seeds for count in COUNTS]
    with ProcessPoolExecutor(args.workers) as pool:
        results = list(pool.map(run_job, *zip(*jobs), [str(MNIST_TEST_ROOT)] * len(jobs)))
    for r in results:
        print(f"{r['kind']}: trusted {r['trusted']:2d} seed {r['seed']}: test AUC "
              f"{r['test_auc']:.4f}, normal dropped {r['normal_dropped']:.3f}, pollution "
              f"dropped {r['pollution_dropped']:.3f} ({r['fit_s']:.0f} s)", flush=True)
    wall = time.perf_counter() - started
    command = "python benchmarks/trusted_count.py"
    if args.update and (out / "trusted-count.json").is_file():
        old = json.loads((out / "trusted-count.json").read_text())
        results = [{"kind": "fashion", **r} for r in old["results"]
                   if r.get("kind", "fashion") not in kinds] + results
        wall += old["meta"]["wall_s"]
        command = f"{old['meta']['command']}; {command} --kinds {args.kinds} --update"
    meta = {"command": command, "machine": machine_info(), "seeds": seeds, "counts": COUNTS,
            "kinds": list(dict.fromkeys(r["kind"] for r in results)), "rate": RATE,
            "wall_s": wall}
    summary = summarize(results)
    out.mkdir(parents=True, exist_ok=True)
    (out / "trusted-count.json").write_text(json.dumps(
        {"meta": meta, "summary": summary, "results": results}, indent=1))
    write_md(out / "trusted-count.md", summary, meta)
    print((out / "trusted-count.md").read_text())


if __name__ == "__main__":
    main()
