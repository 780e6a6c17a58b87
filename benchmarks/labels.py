"""The label check beside cleanlab's other rule and a nearest-neighbour filter.

Pools of MNIST digits (the packaged 5,000, a seeded subset of every class) with wrong labels:
consistent flips (every flipped digit of class k claims ``(k + 3) mod 10``), random flips,
duplicates of genuine digits carrying a consistently flipped label (the sweep's ``label-flip``
recipe) and a clean pool. Per pool and method: the share of wrong labels dropped and of genuine
ones dropped. fedsieve's :class:`LabelCheck` (its defaults: 4 folds, 3 passes, the ``margin``
rule, shifted training images) is fitted beside itself without the shifts and the longer
training of small folds (``max_shift=0, min_steps=0``: fedsieve 0.3) and the 0.2 check (2
folds, one pass, cleanlab's ``confident_learning``); cleanlab's ``prune_by_noise_rate`` and the
plain argmax disagreement read the 0.2 check's probabilities (they compare rules, not
classifiers); the nearest-neighbour filter (sklearn, 25 neighbours in a 50-component PCA of the
pixels, copies of an image excluded) drops a sample whose neighbours mostly claim another
label. Writes ``labels.json`` and ``labels.md``.

    python benchmarks/labels.py [--size 4000] [--seeds 2]
"""

from __future__ import annotations

import argparse
import json
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np
from sklearn.decomposition import PCA
from sklearn.neighbors import NearestNeighbors

from fedsieve.shared.data.datasets import load_mnist
from fedsieve.shared.detectors.labels import LabelCheck, _content_groups
from fedsieve.simulations.machine import machine_info

REPO = Path(__file__).resolve().parents[1]
SHIFT = 3  # a consistent flip: class k claims (k + SHIFT) mod 10


def noisy_pools(size: int, seed: int) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Name -> (images, claimed labels, 1 where the label is wrong)."""
    digits = load_mnist("train")
    rng = np.random.default_rng(seed)
    pick = rng.permutation(len(digits.labels))[:size]
    x, y = digits.images[pick], digits.labels[pick]
    flipped = (y + SHIFT) % 10

    def replaced(share: float, wrong: np.ndarray):
        mask = rng.random(size) < share
        claimed = np.where(mask, wrong, y)
        return x, claimed, (claimed != y).astype(np.int64)

    copies = rng.choice(size, int(0.4 / 0.6 * size), replace=False)
    return {
        "consistent flips 25 %": replaced(0.25, flipped),
        "consistent flips 40 %": replaced(0.40, flipped),
        "random labels 30 %": replaced(0.30, rng.integers(0, 10, size)),
        "flipped duplicates 40 %": (np.concatenate([x, x[copies]]),
                                    np.concatenate([y, flipped[copies]]),
                                    np.r_[np.zeros(size, np.int64),
                                          np.ones(len(copies), np.int64)]),
        "clean": (x, y, np.zeros(size, np.int64)),
    }


def neighbour_filter(x: np.ndarray, y: np.ndarray, k: int = 25) -> np.ndarray:
    """1 where most of a sample's ``k`` nearest other images claim another label."""
    features = PCA(50, random_state=0).fit_transform(x.reshape(len(x), -1) / 255.0)
    groups = _content_groups(x)
    _, index = NearestNeighbors(n_neighbors=k + 8).fit(features).kneighbors(features)
    flags = np.zeros(len(x), np.int64)
    for i, row in enumerate(index):
        votes = np.bincount(y[[j for j in row if groups[j] != groups[i]][:k]], minlength=10)
        flags[i] = int(votes.argmax() != y[i])
    return flags


def run(size: int, seeds: int) -> dict:
    from cleanlab.filter import find_label_issues

    rows = []
    for seed in range(seeds):
        for name, (x, claimed, wrong) in noisy_pools(size, seed).items():
            checks = {  # fedsieve's label checks, fitted and timed one by one
                "fedsieve LabelCheck (margin, 3 passes, 4 folds, shifts)":
                    LabelCheck(random_state=seed),
                "fedsieve LabelCheck without shifts (0.3)":
                    LabelCheck(max_shift=0, min_steps=0, random_state=seed),
                "fedsieve 0.2 (confident_learning, 1 pass, 2 folds)":
                    LabelCheck(folds=2, passes=1, filter_by="confident_learning", max_shift=0,
                               min_steps=0, random_state=seed)}
            fit_seconds = {}
            for method, check in checks.items():
                started = time.perf_counter()
                check.fit(x, claimed)
                fit_seconds[method] = time.perf_counter() - started
            *_, before = checks.values()
            encoded = np.searchsorted(before.classes_, claimed)
            probabilities = before.probabilities_
            methods = {
                **{method: check.labels_ for method, check in checks.items()},
                "cleanlab prune_by_noise_rate": find_label_issues(encoded, probabilities,
                                                                  n_jobs=1),
                "argmax differs (predicted_neq_given)": probabilities.argmax(1) != encoded,
                "nearest neighbours (k=25)": neighbour_filter(x, claimed),
            }
            for method, flags in methods.items():
                flags = np.asarray(flags).astype(bool)
                rows.append({
                    "pool": name, "seed": seed, "method": method, "size": len(x),
                    "wrong_dropped": float(flags[wrong == 1].mean()) if wrong.any() else None,
                    "genuine_dropped": float(flags[wrong == 0].mean()),
                    "fit_seconds": fit_seconds.get(method)})
            seconds = list(fit_seconds.values())
            print(f"seed {seed} {name}: LabelCheck fitted in {seconds[0]:.1f} s "
                  f"(without shifts {seconds[1]:.1f} s, 0.2: {seconds[2]:.1f} s)", flush=True)
    return {"machine": machine_info(), "cleanlab": version("cleanlab"), "size": size,
            "seeds": seeds, "rows": rows}


def markdown(result: dict) -> str:
    pools = list(dict.fromkeys(r["pool"] for r in result["rows"]))
    methods = list(dict.fromkeys(r["method"] for r in result["rows"]))
    lines = [f"# Label checks: wrong labels dropped / genuine dropped, mean over "
             f"{result['seeds']} seeds ({result['size']} MNIST digits per pool)", "",
             "| method | " + " | ".join(pools) + " |", "|---|" + "---|" * len(pools)]
    for method in methods:
        cells = []
        for pool in pools:
            here = [r for r in result["rows"] if r["pool"] == pool and r["method"] == method]
            wrong = [r["wrong_dropped"] for r in here if r["wrong_dropped"] is not None]
            genuine = np.mean([r["genuine_dropped"] for r in here])
            cells.append((f"{np.mean(wrong):.1%} / " if wrong else "— / ") + f"{genuine:.1%}")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    fits = {m: np.median([r["fit_seconds"] for r in result["rows"] if r["method"] == m])
            for m in methods if m.startswith("fedsieve")}
    now, unshifted, before = fits.values()
    lines += ["", f"Fit, median over the pools: {now:.1f} s for LabelCheck, {unshifted:.1f} s "
              f"without shifts, {before:.1f} s for the 0.2 check ({now / before:.1f}x), on "
              f"{result['machine'].get('cores', '?')} cores, torch on one thread (cleanlab "
              f"{result['cleanlab']}).", "", "Per seed, the two LabelCheck rows:", "",
              "| method | seed | " + " | ".join(pools) + " |",
              "|---|---|" + "---|" * len(pools)]
    for method in methods[:2]:
        for seed in sorted({r["seed"] for r in result["rows"]}):
            here = {r["pool"]: r for r in result["rows"]
                    if r["method"] == method and r["seed"] == seed}
            cells = [(f"{here[p]['wrong_dropped']:.1%} / " if here[p]["wrong_dropped"]
                      is not None else "— / ") + f"{here[p]['genuine_dropped']:.1%}"
                     for p in pools]
            lines.append(f"| {method} | {seed} | " + " | ".join(cells) + " |")
    lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=4000)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    result = run(args.size, args.seeds)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "labels.json").write_text(json.dumps(result, indent=1))
    (args.out / "labels.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
