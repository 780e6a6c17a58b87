"""Rt-BiGAN's fit time and scoring speed with its default evidence, beside the paper's score.

Pool = the 4,000 packaged MNIST digits + 2,000 Fashion-MNIST images (6,000), 10 trusted digits,
2 torch threads, run one after the other in the same process. A third row scores colour
images with every piece of evidence: the ``fashion-tint32`` task (3x32x32, Fashion-MNIST
normal, 20 % digits; :mod:`fedsieve.simulations.image_tasks`) from a meta-model of its own
normal data with an atlas, so the reachability evidence is on (a 20-iteration meta-model:
speed does not depend on how well it was meta-trained). Writes ``throughput.json``.

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
PAPER_SCORE = {"evidence": ["global"], "training": {"core_width": None},
               "threshold_policy": "gmm"}


def colour_throughput(threads: int = 2, work: Path = REPO / "benchmarks/results/shapes-work"
                      ) -> dict:
    """Fit time and scoring speed of Rt-BiGAN on the 3x32x32 ``fashion-tint32`` task with
    the reachability evidence on."""
    import torch
    from sklearn.metrics import roc_auc_score

    from fedsieve.shared.detectors import RtBiGAN
    from fedsieve.shared.detectors.checkpoint import save_meta
    from fedsieve.shared.detectors.evidence.reachability import atlas_sample
    from fedsieve.shared.detectors.metatrain import MetaConfig, meta_train
    from fedsieve.simulations.image_tasks import make_task

    torch.set_num_threads(threads)
    task = make_task("fashion-tint32", 0,
                     mnist_test_root=str(REPO.parent / "shared/datasets/mnist-test"))
    phi = meta_train(task.meta_images, task.meta_labels, MetaConfig(iterations=20, seed=0))
    meta = save_meta(phi, work / "meta" / "throughput-tint32", {"data": "fashion-tint32"},
                     atlas=atlas_sample(task.meta_images, task.meta_labels))
    t0 = time.perf_counter()
    det = RtBiGAN(random_state=0, meta_checkpoint=str(meta)).fit(task.pool, task.trusted)
    fit = time.perf_counter() - t0
    det.decision_function(task.pool[:500])
    t0 = time.perf_counter()
    det.decision_function(task.pool)
    return {"threads": threads, "pool": len(task.pool), "image_shape": list(task.image_shape),
            "evidence": det.evidence_names_, "adapt_self_train_s": fit,
            "samples_per_s": len(task.pool) / (time.perf_counter() - t0),
            "test_auc": float(roc_auc_score(task.test_y, det.decision_function(task.test)))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(REPO / "benchmarks/results"))
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    started = time.perf_counter()
    rows = {"rtbigan (defaults)": throughput(threads=args.threads),
            "rtbigan (paper score, gmm)": throughput(threads=args.threads, **PAPER_SCORE),
            "rtbigan 3x32x32 (every piece, reachability on)": colour_throughput(args.threads)}
    new, old = rows["rtbigan (defaults)"], rows["rtbigan (paper score, gmm)"]
    result = {
        "meta": {"command": "python benchmarks/throughput.py", "machine": machine_info(),
                 "wall_s": time.perf_counter() - started, "paper_score_params": PAPER_SCORE},
        "results": rows,
        "ratios": {"fit_time_defaults_over_paper": new["adapt_self_train_s"]
                   / old["adapt_self_train_s"],
                   "scoring_speed_defaults_over_paper": new["samples_per_s"]
                   / old["samples_per_s"],
                   "scoring_speed_colour_over_defaults": rows[
                       "rtbigan 3x32x32 (every piece, reachability on)"]["samples_per_s"]
                   / new["samples_per_s"]},
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "throughput.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
