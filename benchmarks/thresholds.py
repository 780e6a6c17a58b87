"""Threshold policies side by side on the same Rt-BiGAN scores: ours, gmm, conformal, pythresh.

For each pool (:func:`pollution.make_pool`, seed 0) one default Rt-BiGAN is fitted; its final
pool scores (the calibrated evidence, where 0 is the budget cut) are then cut by every policy:
fedsieve's ``budget`` (the fitted verdicts), ``gmm``, the conformal cut on the trusted images
(with 10 calibration images the smallest p-value is 1/11, so at any level below 1/11 nothing
is flagged and at 1/11 the cut is the largest trusted score: ``trusted max``) and every
thresholder of `pythresh <https://github.com/KulikDM/pythresh>`_ that runs without its extras.
Self-training is not re-run per policy: this compares cuts of one score, not whole fits.
Reported per pool and policy: pollution flagged and normal flagged. Writes
``thresholds.json`` and ``thresholds.md``.

    pip install -e '.[bench]'           # pythresh
    python benchmarks/thresholds.py
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np
from pollution import make_pool

from fedsieve.simulations.machine import machine_info

REPO = Path(__file__).resolve().parents[1]
POOLS = (("fashion", 0.0), ("fashion", 0.2), ("fashion", 0.6), ("ink-fashion", 0.2),
         ("salt-pepper", 0.2), ("trigger:size=3", 0.1))
#: pythresh thresholders left out: they need its extras (torch models, ruptures, pandas), a
#: download, or several score sets.
SKIPPED = {"base", "thresh_utility", "dummy", "vae", "cpd", "meta", "comb", "mcst",
           "gamgmm"}  # gamgmm: > 20 s per call on one score set (it wants several)


def pythresh_policies() -> dict:
    """Name -> a function of the scores returning verdicts, for each thresholder that
    imports without pythresh's optional packages."""
    import importlib
    import inspect
    import pkgutil

    import pythresh.thresholds as package
    from pythresh.thresholds.base import BaseThresholder

    policies = {}
    for module in pkgutil.iter_modules(package.__path__):
        if module.name in SKIPPED:
            continue
        try:
            mod = importlib.import_module(f"pythresh.thresholds.{module.name}")
        except ImportError:  # needs one of pythresh's optional packages
            continue
        for name, cls in inspect.getmembers(mod, inspect.isclass):
            if issubclass(cls, BaseThresholder) and cls is not BaseThresholder \
                    and cls.__module__ == mod.__name__:
                policies[f"pythresh {name}"] = (lambda c: lambda s, t: c().eval(s))(cls)
    return policies


def fedsieve_policies() -> dict:
    from fedsieve.shared.detectors.threshold import gmm_threshold

    return {
        "fedsieve budget (default)": None,  # the fitted verdicts
        "gmm": lambda s, t: (s > gmm_threshold(s, trusted_scores=t)).astype(int),
        "conformal 1/11 (trusted max)": lambda s, t: (s > t.max()).astype(int),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(REPO / "benchmarks/results"))
    args = ap.parse_args()
    import torch

    from fedsieve.shared.detectors import make_detector

    torch.set_num_threads(1)
    policies = {**fedsieve_policies(), **pythresh_policies()}
    rows, started = [], time.perf_counter()
    for kind, rate in POOLS:
        pool, y, trusted = make_pool(kind, rate, 0)
        det = make_detector("rtbigan", random_state=0).fit(pool, trusted)
        s, t = det.decision_scores_, det.trusted_scores_
        for name, policy in policies.items():
            t0 = time.perf_counter()
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    flagged = det.labels_ if policy is None else np.asarray(policy(s, t))
            except Exception as err:  # a thresholder that fails is a result too
                rows.append({"kind": kind, "rate": rate, "policy": name,
                             "error": f"{type(err).__name__}: {err}"[:200]})
                continue
            print(f"  {name}: {time.perf_counter() - t0:.1f} s", flush=True)
            rows.append({
                "kind": kind, "rate": rate, "policy": name,
                "pollution_flagged": float(flagged[y == 1].mean()) if y.any() else None,
                "normal_flagged": float(flagged[y == 0].mean()),
                "seconds": time.perf_counter() - t0,
            })
        print(f"{kind} {rate}: done", flush=True)
    meta = {"command": "python benchmarks/thresholds.py", "machine": machine_info(),
            "pools": POOLS, "wall_s": time.perf_counter() - started}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "thresholds.json").write_text(json.dumps({"meta": meta, "results": rows}, indent=1))
    write_md(out / "thresholds.md", rows, meta)
    print((out / "thresholds.md").read_text())


def write_md(path: Path, rows: list[dict], meta: dict) -> None:
    pools = [f"{k} {r:g}" for k, r in meta["pools"]]
    names = list(dict.fromkeys(r["policy"] for r in rows))
    cell = {(r["policy"], f"{r['kind']} {r['rate']:g}"): r for r in rows}

    def fmt(r: dict | None) -> str:
        if r is None or "error" in r:
            return "error"
        pol = "—" if r["pollution_flagged"] is None else f"{r['pollution_flagged']:.0%}"
        return f"{pol} / {r['normal_flagged']:.1%}"

    lines = ["# Threshold policies on the same Rt-BiGAN scores", "",
             f"Command: `{meta['command']}`; wall time {meta['wall_s'] / 60:.1f} min. "
             "Each cell: pollution flagged / normal flagged (seed 0, pool = 4,000 packaged "
             "digits + pollution, 10 trusted digits; one default Rt-BiGAN fit per pool).", "",
             "| policy | " + " | ".join(pools) + " |", "|---|" + "---|" * len(pools)]
    lines += [f"| {n} | " + " | ".join(fmt(cell.get((n, p))) for p in pools) + " |"
              for n in names]
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
