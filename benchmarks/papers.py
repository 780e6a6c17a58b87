"""Paper benchmark: ADe-GAN, AGAD and AnoEAN on their own papers' protocols, beside the papers.

Each method's protocol lives in ``benchmarks/papers_<method>.py`` (its ``PAPER`` record: the
paper's figures and where they come from, and ``run(classes, seed, threads, say, dataset)``):

- ``adegan``: MNIST leave-one-class-out (nine digits normal, the tenth anomalous), test AUC;
- ``agad``: one-class (one digit normal, the other nine anomalous), test AUC, MNIST and
  Fashion-MNIST;
- ``anoean``: one digit normal plus 10 % labelled anomalies from four other digits, test
  set with 20 % anomalies, area under the precision-recall curve.

Training data are the 4,000 packaged MNIST digits (400 a class, where the papers had 6,000) and
the full Fashion-MNIST; test data the official test splits. Every finished class is appended
to ``papers.jsonl``; ``--resume`` skips the rows found there. Writes ``papers.json`` and
``papers.md`` (ours beside the paper's, per class).

    python benchmarks/papers.py                                   # every method, every class
    python benchmarks/papers.py --methods anoean --classes 0,1 --resume
    python benchmarks/papers.py --methods agad --dataset fashion
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path
from types import ModuleType

import numpy as np

REPO = Path(__file__).resolve().parents[1]
METHODS = ("adegan", "agad", "anoean")
#: The official MNIST test split beside the checkout.
MNIST_TEST_ROOT = REPO.parent / "shared" / "datasets" / "mnist-test"
#: The datasets each method's paper reports.
DATASETS = {"adegan": ("mnist",), "agad": ("mnist", "fashion"), "anoean": ("mnist",)}


def load_splits(dataset: str):
    """The training and test splits (``LabelledImages``) of ``"mnist"`` (the packaged training
    digits, the official test split beside the checkout) or ``"fashion"`` (both in full)."""
    from fedsieve.shared.data.datasets import load_fashion_mnist, load_mnist

    if dataset == "mnist":
        return load_mnist("train"), load_mnist("test", root=MNIST_TEST_ROOT)
    if dataset == "fashion":
        return load_fashion_mnist("train"), load_fashion_mnist("test")
    raise ValueError(f"unknown dataset {dataset!r}; choose mnist or fashion")


def protocol(method: str) -> ModuleType:
    """The ``benchmarks/papers_<method>.py`` module."""
    path = Path(__file__).with_name(f"papers_{method}.py")
    spec = importlib.util.spec_from_file_location(f"papers_{method}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _key(row: dict) -> tuple:
    return row["method"], row["dataset"], int(row["class"]), int(row["seed"])


def write_reports(out: Path, rows: list[dict], papers: dict[tuple[str, str], dict],
                  commands: list[str]) -> None:
    """``papers.json`` (rows, paper records, machine) and ``papers.md`` (tables)."""
    from fedsieve.simulations.machine import machine_info

    (out / "papers.json").write_text(json.dumps({
        "rows": rows, "papers": {f"{m}/{d}": p for (m, d), p in papers.items()},
        "commands": commands, "machine": machine_info()}, indent=2, default=str) + "\n")
    md = ["# Paper benchmark: each method on its own paper's protocol", "",
          "Commands: " + "; ".join(f"`{c}`" for c in commands), "",
          "Ours: mean over the seeds run. Training data: 400 packaged MNIST digits a class "
          "(the papers had about 6,000) or the full Fashion-MNIST; test: the official test "
          "splits.", ""]
    for (method, dataset), paper in papers.items():
        mine = [r for r in rows if (r["method"], r["dataset"]) == (method, dataset)
                and "protocol" not in r]
        if not mine:
            continue
        # Other detectors run on this paper's protocol (rows with "protocol": method).
        others = [r for r in rows if r.get("protocol") == method and r["dataset"] == dataset]
        names = list(dict.fromkeys(r["method"] for r in others))
        classes = sorted({int(r["class"]) for r in mine} | {int(c) for c in paper["per_class"]})
        md += [f"## {method} — {dataset} ({paper['metric'].upper()})", "",
               f"Protocol: {paper['protocol']}  ", f"Paper figures: {paper['source']}", "",
               "| class | ours | paper | fit s |" + "".join(f" {n} here |" for n in names),
               "|---|---|---|---|" + "---|" * len(names)]
        ours_all: list[float] = []
        other_all: dict[str, list[float]] = {n: [] for n in names}
        for c in classes:
            values = [r["value"] for r in mine if int(r["class"]) == c]
            fit = [r["fit_s"] for r in mine if int(r["class"]) == c]
            ref = paper["per_class"].get(c, paper["per_class"].get(str(c)))
            ours = f"{np.mean(values):.3f}" if values else "—"
            ours_all += [np.mean(values)] if values else []
            cells = []
            for n in names:
                theirs = [r["value"] for r in others if r["method"] == n and int(r["class"]) == c]
                other_all[n] += [np.mean(theirs)] if theirs else []
                cells.append(f" {np.mean(theirs):.3f} |" if theirs else " — |")
            md.append(f"| {c} | {ours} | {'—' if ref is None else f'{ref:.3f}'} | "
                      f"{f'{np.mean(fit):.0f}' if fit else '—'} |" + "".join(cells))
        avg = f"{np.mean(ours_all):.3f} ({len(ours_all)} classes)" if ours_all else "—"
        paper_avg = paper.get("average")
        md += [f"| **average** | **{avg}** | "
               f"{'—' if paper_avg is None else f'{paper_avg:.3f}'} | |"
               + "".join(f" {np.mean(v):.3f} |" if v else " — |" for v in other_all.values()),
               ""]
        if names:
            md += [f"Other detectors on this protocol: `python benchmarks/papers_{method}.py "
                   f"--detector NAME` (their defaults; see the script).", ""]
    (out / "papers.md").write_text("\n".join(md))


def main() -> None:
    from rich.console import Console

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--classes", default="0,1,2,3,4,5,6,7,8,9")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--dataset", default=None,
                        help="mnist or fashion (default: every dataset the paper reports)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--resume", action="store_true",
                        help="skip the classes already in papers.jsonl")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args()
    console = Console()
    args.out.mkdir(parents=True, exist_ok=True)
    log = args.out / "papers.jsonl"
    done = [json.loads(line) for line in log.read_text().splitlines()] \
        if args.resume and log.is_file() else []
    if not args.resume:
        log.write_text("")
    finished = {_key(r) for r in done}
    rows, papers, ran = list(done), {}, False
    classes = [int(c) for c in args.classes.split(",")]
    started = time.perf_counter()
    for method in args.methods.split(","):
        module = protocol(method)
        for dataset in [args.dataset] if args.dataset else DATASETS[method]:
            papers[(method, dataset)] = module.paper(dataset) if hasattr(module, "paper") \
                else module.PAPER
            for seed in (int(s) for s in args.seeds.split(",")):
                todo = [c for c in classes if (method, dataset, c, seed) not in finished]
                if not todo:
                    continue
                console.print(f"[bold]{method}[/] {dataset} seed {seed}: classes {todo}")

                def say(row: dict) -> None:
                    console.print(row)
                    with log.open("a") as f:
                        f.write(json.dumps(row, default=float) + "\n")

                rows += module.run(todo, seed, args.threads, say, dataset=dataset)
                ran = True
    for method, dataset in dict.fromkeys((r.get("protocol", r["method"]), r["dataset"])
                                         for r in rows):
        if (method, dataset) not in papers:  # kept rows of methods not run this time
            module = protocol(method)
            papers[(method, dataset)] = module.paper(dataset) if hasattr(module, "paper") \
                else module.PAPER
    command = "python benchmarks/papers.py " + " ".join(
        f"--{k} {v}" for k, v in vars(args).items()
        if k not in ("out", "resume") and v is not None) + (" --resume" if args.resume else "")
    console.print(f"{time.perf_counter() - started:.0f} s")
    # A resumed run keeps the commands that made the rows it kept.
    earlier = args.out / "papers.json"
    commands = json.loads(earlier.read_text()).get("commands", []) \
        if args.resume and earlier.is_file() else []
    write_reports(args.out, rows, papers, [*commands, *([command] if ran or not commands else [])])
    console.print((args.out / "papers.md").read_text())


if __name__ == "__main__":
    main()
