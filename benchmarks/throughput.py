"""Rt-BiGAN's fit time and scoring speed with its default evidence, beside the paper's score.

Pool = the 4,000 packaged MNIST digits + 2,000 Fashion-MNIST images (6,000), 10 trusted digits,
2 torch threads, run one after the other in the same process. Writes ``throughput.json``.

    python benchmarks/throughput.py
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from detection import throughput

from fedsieve.simulations.machine import machine_info

REPO = Path(__file__).resolve().parents[1]
#: The 0.1 configuration: the paper's score A(x) alone, the gmm cut, no normal core.
PAPER_SCORE = {"typicality": False, "detached_ink": False, "core_width": None,
               "threshold_policy": "gmm"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(REPO / "benchmarks/results"))
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    started = time.perf_counter()
    rows = {"rtbigan (defaults)": throughput(threads=args.threads),
            "rtbigan (paper score, gmm)": throughput(threads=args.threads, **PAPER_SCORE)}
    new, old = rows["rtbigan (defaults)"], rows["rtbigan (paper score, gmm)"]
    result = {
        "meta": {"command": "python benchmarks/throughput.py", "machine": machine_info(),
                 "wall_s": time.perf_counter() - started, "paper_score_params": PAPER_SCORE},
        "results": rows,
        "ratios": {"fit_time_defaults_over_paper": new["adapt_self_train_s"]
                   / old["adapt_self_train_s"],
                   "scoring_speed_defaults_over_paper": new["samples_per_s"]
                   / old["samples_per_s"]},
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "throughput.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
