"""The paper's figures regenerated on our data: Table I, Fig. 3 (few-shot adaptation to a
held-out class) and Fig. 4 (ROC of clean-trained BiGAN, polluted-trained BiGAN and Rt-BiGAN).

``budget`` scales every training length (1.0 = the detectors' defaults), so that the quick
sweep can draw the same figures in seconds.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score, roc_curve

from fedsieve.shared.config import RunSettings
from fedsieve.shared.data.datasets import load_mnist
from fedsieve.shared.data.images import check_images
from fedsieve.shared.detectors import EGBAD, AnoGAN, RtBiGAN
from fedsieve.shared.detectors.bigan import as_batch
from fedsieve.shared.detectors.checkpoint import save_meta
from fedsieve.shared.detectors.metatrain import MetaConfig, meta_train
from fedsieve.simulations.benchmark import (
    PAPER_CONTAMINATION,
    PAPER_TABLE_1,
    FittedScores,
    detection_test_set,
)
from fedsieve.simulations.pollution import federation_for

#: The digit class held out of meta-training in Fig. 3.
HELD_OUT_CLASS = 9


def _steps(default: int, budget: float) -> int:
    return max(10, int(round(default * budget)))


def table_one(settings: RunSettings, out: Path, budget: float = 1.0,
              fitted: FittedScores | None = None) -> dict:
    """Fit AnoGAN, EGBAD and Rt-BiGAN on the clean and on the 20 %-polluted pooled client
    data; test AUC of each, ROC figure ``fig4_roc.png`` in the style of the paper's Fig. 4.

    Parameters
    ----------
    settings, out, budget
        Federation settings (its seed seeds the fits; its trusted set is the detectors'
        trusted images), output folder, training-length scale.
    fitted : callable, optional
        Where it returns the test scores of an identical fit (same detector parameters,
        pool and seed), that fit is not repeated; ``reused`` in the result names them.

    Returns
    -------
    dict
        ``{"auc": {method: {"clean": auc, "polluted": auc}}, "reused": [...], "seconds": ...,
        "paper": ...}``
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    started = time.perf_counter()
    trusted = federation_for(settings).trusted_set.images
    root = settings.task.data_root or None
    test = detection_test_set(root, None)  # a folder of IDX files reads as either dataset
    x_test, y_test = test.x, test.y
    seed = settings.seed
    methods = {
        "AnoGAN": lambda: AnoGAN(steps=_steps(1000, budget), latent_steps=_steps(20, budget),
                                 random_state=seed),
        "EGBAD": lambda: EGBAD(steps=_steps(1500, budget), random_state=seed),
        "Rt-BiGAN": lambda: RtBiGAN(steps_per_round=_steps(500, budget), random_state=seed),
    }
    auc: dict[str, dict[str, float]] = {m: {} for m in methods}
    curves = {}
    reused = []
    for data, rate in (("clean", 0.0), ("polluted", PAPER_CONTAMINATION)):
        pool = None
        for name, make in methods.items():
            detector = make()
            scores = fitted(detector, rate) if fitted else None
            if scores is not None:
                reused.append(f"{name} {data}")
            else:
                if pool is None:
                    pool, _ = federation_for(settings, rate).pooled()
                scores = detector.fit(pool, trusted).decision_function(x_test)
            auc[name][data] = float(roc_auc_score(y_test, scores))
            curves[(name, data)] = roc_curve(y_test, scores)[:2]

    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    for (name, data), label in ((("EGBAD", "clean"), "BiGAN trained on clean data"),
                                (("EGBAD", "polluted"), "BiGAN trained on polluted data"),
                                (("Rt-BiGAN", "polluted"), "Rt-BiGAN (polluted data)")):
        fpr, tpr = curves[(name, data)]
        ax.plot(fpr, tpr, label=f"{label}, AUC {auc[name][data]:.3f}")
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=0.8)
    ax.set(xlabel="false positive rate", ylabel="true positive rate",
           title=f"ROC on the test set, {PAPER_CONTAMINATION:.0%} pollution (Fig. 4)")
    ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "fig4_roc.png", dpi=120)
    plt.close(fig)
    return {"auc": auc, "paper": PAPER_TABLE_1, "budget": budget, "reused": reused,
            "seconds": time.perf_counter() - started}


@torch.no_grad()
def _reconstruct(model, x: torch.Tensor) -> torch.Tensor:
    model.eval()
    return model.G(model.E(x))


def fig3_adaptation(settings: RunSettings, out: Path, budget: float = 1.0) -> dict:
    """Meta-train without digit :data:`HELD_OUT_CLASS`, adapt in 20 steps on 10 of its images,
    and draw ``fig3_adaptation.png``: rows = held-out test digits, their reconstructions by
    the meta-model, by the adapted model, and samples ``G(z)`` of the adapted model.
    """
    from torchvision.utils import save_image

    started = time.perf_counter()
    train = load_mnist("train", root=settings.task.data_root or None)
    test = load_mnist("test", root=settings.task.data_root or None)
    cfg = MetaConfig(iterations=_steps(200, budget), holdout_classes=(HELD_OUT_CLASS,),
                     seed=settings.seed)
    phi = meta_train(train.images, train.labels, cfg)
    path = save_meta(phi, out / "fig3-meta", {"config": cfg.to_dict(),
                                              "purpose": "Fig. 3, class held out"})
    rng = np.random.default_rng(settings.seed)
    held_train = np.flatnonzero(train.labels == HELD_OUT_CLASS)
    shots = train.images[rng.choice(held_train, 10, replace=False)]
    queries = test.images[np.flatnonzero(test.labels == HELD_OUT_CLASS)[:10]]
    # On the CPU: the figure reads the networks directly, beside the CPU meta-model phi.
    adapted = RtBiGAN(meta_checkpoint=path, self_training_rounds=0,
                      random_state=settings.seed, device="cpu").fit(queries, shots)
    x = as_batch(check_images(queries, "held-out queries"))  # uint8 digits -> [0, 1]
    z = torch.randn(10, adapted.model_.cfg.z_dim,
                    generator=torch.Generator().manual_seed(settings.seed))
    rows = torch.cat([x, _reconstruct(phi, x), _reconstruct(adapted.model_, x),
                      adapted.model_.G(z).detach()])
    save_image(rows, out / "fig3_adaptation.png", nrow=10, padding=2, pad_value=1.0)
    return {"held_out_class": HELD_OUT_CLASS, "meta_iterations": cfg.iterations,
            "adapt_steps": adapted.adapt_steps, "seconds": time.perf_counter() - started}
