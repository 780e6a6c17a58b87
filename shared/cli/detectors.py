"""``fedsieve meta-train`` and ``fedsieve detect``, the operator's detector tools.

They live beside the detectors (not in the simulation harness) and take their detectors from
the one registry, :data:`fedsieve.shared.detectors.DETECTORS` / ``make_detector``; call
:func:`register` on the ``fedsieve`` Typer app. The detectors (torch, scikit-learn, PyOD) are
imported inside the commands, so that ``fedsieve --help`` starts fast.
"""

from __future__ import annotations

import json
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from fedsieve.shared.cli.common import DeviceOption
from fedsieve.shared.data.images import check_images, display_rgb, format_shape, images_sha256

#: Pool images that stand in for trusted images when ``detect`` runs without ``--trusted``.
AUTO_TRUSTED = 10


def _threads(n: int | None) -> None:
    import torch

    # One thread is the robust choice on a shared 2-core machine: OpenMP threads spinning on a
    # busy CPU slow training down several-fold.
    torch.set_num_threads(max(1, n or 1))


def _load_npz(path: Path, what: str) -> tuple[np.ndarray, np.ndarray | None]:
    x, y, _ = _load_pairs(path, what)
    return x, y


def _load_pairs(path: Path, what: str
                ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """``x``, the ground truth ``y_anomaly`` and the claimed class labels ``y`` of an npz
    (each of the last two None when the file has none)."""
    try:
        with np.load(path, allow_pickle=False) as f:
            if "x" not in f:
                raise typer.BadParameter(f"{path} has no array 'x' (images)", param_hint=what)
            x = f["x"]
            y = f["y_anomaly"].astype(np.int64) if "y_anomaly" in f else None
            claimed = f["y"] if "y" in f else None
    except (OSError, ValueError) as exc:
        raise typer.BadParameter(f"cannot read {path}: {exc}", param_hint=what) from exc
    try:
        check_images(x, f"{what} x")
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint=what) from exc
    if y is not None and y.shape != (len(x),):
        raise typer.BadParameter(f"{path}: y_anomaly must have shape ({len(x)},)", param_hint=what)
    if claimed is not None and (claimed.shape != (len(x),)
                                or not np.issubdtype(claimed.dtype, np.integer)):
        raise typer.BadParameter(
            f"{path}: y (the claimed class labels) must hold one integer per image, shape "
            f"({len(x)},); got {claimed.dtype} {claimed.shape}. Encode class names as integers, "
            "or leave y out to screen the images alone", param_hint=what)
    return x, y, None if claimed is None else claimed.astype(np.int64)


#: What ``meta-train --tasks`` takes: classes when the data has labels, else clusters (auto).
TASK_KINDS = ("auto", "classes", "clusters")


def meta_train_cmd(
    out: Annotated[
        Path, typer.Option("--out", help="Checkpoint path (writes .safetensors + .json).")
    ],
    source: Annotated[str | None, typer.Option(
        help="Built-in meta-training data when --data is not given: mnist (the default).")
    ] = None,
    data: Annotated[Path | None, typer.Option(
        "--data", help="Your own images: an .npz (x, optional y), an ImageFolder directory or "
                       "a Hugging Face save_to_disk directory.")] = None,
    split: Annotated[str | None, typer.Option(
        help="Split of a saved Hugging Face DatasetDict (default: train).")] = None,
    image_key: Annotated[str | None, typer.Option(
        help="Image column of a Hugging Face dataset (default: auto-detected).")] = None,
    label_key: Annotated[str | None, typer.Option(
        help="Label column of a Hugging Face dataset (default: auto-detected).")] = None,
    layout: Annotated[str | None, typer.Option(
        help="NCHW or NHWC, for arrays whose channel axis the shape does not tell.")] = None,
    resize: Annotated[str | None, typer.Option(
        help="Resize every image to HxW, e.g. 32x32 (needed when sizes differ).")] = None,
    limit: Annotated[int | None, typer.Option(help="Read only the first N images.")] = None,
    tasks: Annotated[str, typer.Option(
        help="Task distribution: classes (one class per task; needs labels), clusters "
             "(k-means clusters of the images) or auto (classes when labelled).")] = "auto",
    clusters: Annotated[int, typer.Option(help="Number of clusters for --tasks clusters.")] = 10,
    holdout_classes: Annotated[
        str, typer.Option(help="Comma-separated classes kept out, e.g. 8,9.")
    ] = "",
    iterations: Annotated[int, typer.Option(help="Reptile outer iterations.")] = 400,
    inner_steps: Annotated[int, typer.Option(help="K adversarial steps per task.")] = 10,
    task_size: Annotated[int, typer.Option(help="Images per task.")] = 32,
    meta_lr: Annotated[
        float, typer.Option(help="Initial outer Adam step size (annealed to 0).")
    ] = 1e-3,
    recon_weight: Annotated[
        float, typer.Option(help="L1 reconstruction weight (0 = paper).")
    ] = 1.0,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    threads: Annotated[int, typer.Option(help="torch CPU threads.")] = 1,
    device: DeviceOption = "auto",
) -> None:
    """Reptile meta-training of the Rt-BiGAN networks (paper Algorithm 1).

    Trains on MNIST by default, or on your own images with --data (the networks are built for
    their shape). Each task is one class, or, for unlabelled data (or with --tasks clusters),
    one k-means cluster of the images. The checkpoint records what was read and the tasks.
    """
    import torch
    from rich.progress import (
        BarColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from fedsieve.shared.cli.common import console
    from fedsieve.shared.detectors.bigan import LoopConfig
    from fedsieve.shared.detectors.checkpoint import save_meta
    from fedsieve.shared.detectors.evidence.reachability import atlas_sample
    from fedsieve.shared.detectors.metatrain import (
        MetaConfig,
        class_tasks,
        cluster_tasks,
        meta_train,
    )
    from fedsieve.shared.devices import resolve_device

    _threads(threads)
    try:  # before any image is read: a device this machine lacks stops the command at once
        torch_device = resolve_device(device)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--device") from exc
    if tasks not in TASK_KINDS:
        raise typer.BadParameter(f"choose one of {', '.join(TASK_KINDS)}", param_hint="--tasks")
    try:
        holdout = tuple(int(c) for c in holdout_classes.split(",") if c.strip())
    except ValueError as exc:
        raise typer.BadParameter(
            "use comma-separated digits, e.g. 8,9", param_hint="--holdout-classes"
        ) from exc
    with console.status("reading the meta-training images"):
        images, labels, description = _meta_train_data(
            source, data, split=split, image_key=image_key, label_key=label_key, layout=layout,
            resize=resize, limit=limit)
    kind = tasks if tasks != "auto" else ("classes" if labels is not None else "clusters")
    if kind == "classes" and labels is None:
        raise typer.BadParameter(f"{data} has no labels; use --tasks clusters (or auto)",
                                 param_hint="--tasks")
    if kind == "clusters":
        if holdout:
            raise typer.BadParameter("held-out classes need class tasks (--tasks classes)",
                                     param_hint="--holdout-classes")
        with console.status(f"clustering {len(images)} images into {clusters} tasks"):
            try:
                labels = cluster_tasks(images, clusters, seed, layout="NCHW")
            except ValueError as exc:
                raise typer.BadParameter(str(exc), param_hint="--clusters") from exc
    try:
        n_tasks = len(class_tasks(labels, holdout))
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--holdout-classes") from exc
    console.print(f"meta-training on {len(images)} images of shape "
                  f"{format_shape(images.shape[1:])} (C x H x W), {n_tasks} {kind} as tasks",
                  highlight=False)
    cfg = MetaConfig(
        iterations=iterations,
        inner_steps=inner_steps,
        task_size=task_size,
        meta_lr=meta_lr,
        holdout_classes=holdout,
        loop=LoopConfig(recon_weight=recon_weight),
        seed=seed,
    )
    t0 = time.perf_counter()
    with Progress(
        TextColumn("meta-train"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
    ) as bar:
        task = bar.add_task("meta", total=iterations)
        model = meta_train(
            images,
            labels,
            cfg,
            on_iteration=lambda i, s: bar.update(task, completed=i + 1),
            layout="NCHW",
            device=device,
        )
    info = {
        "command": "fedsieve meta-train " + shlex.join(_args_after("meta-train")),
        "config": cfg.to_dict(),
        "data": description,
        "tasks": {"kind": kind, "count": n_tasks,
                  "clusters": clusters if kind == "clusters" else None},
        "train_seconds": round(time.perf_counter() - t0, 1),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "device": str(torch_device),
        "machine": platform.processor() or platform.machine(),
    }
    # A sample of the normal images travels with the weights: Rt-BiGAN's reachability
    # evidence walks from it (fedsieve.shared.detectors.evidence.reachability).
    atlas = atlas_sample(images, labels, holdout, seed=seed)
    info["atlas"] = {"count": len(atlas), "seed": seed}
    path = save_meta(model, out, info, atlas=atlas)
    typer.echo(f"wrote {path} and {path.with_suffix('.safetensors')}")


def _meta_train_data(source: str | None, data: Path | None, *, resize: str | None,
                     **options: object) -> tuple[np.ndarray, np.ndarray | None, dict]:
    """Images, labels (or None) and the description of what ``meta-train`` reads."""
    if data is None:
        if source not in (None, "mnist"):
            raise typer.BadParameter("only 'mnist' is built in; pass your own images with "
                                     "--data", param_hint="--source")
        if any(v is not None for v in (resize, *options.values())):
            raise typer.BadParameter("--split, --image-key, --label-key, --layout, --resize "
                                     "and --limit apply to --data", param_hint="--data")
        from fedsieve.shared.data.datasets import load_mnist

        mnist = load_mnist("train")
        return mnist.images, mnist.labels, mnist.source.to_dict()
    if source is not None:
        raise typer.BadParameter("give --source or --data, not both", param_hint="--source")
    from fedsieve.shared.data.sources import load_images

    size = None
    if resize is not None:
        parts = resize.lower().split("x")
        if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
            raise typer.BadParameter(f"use HxW, e.g. 32x32, not {resize!r}", param_hint="--resize")
        size = (int(parts[0]), int(parts[1]))
    try:
        loaded = load_images(data, resize=size, **options)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--data") from exc
    return loaded.images, loaded.labels, loaded.description


def detect_cmd(
    pool: Annotated[Path, typer.Option(
        "--pool", help="npz with x, optionally y (claimed class labels) and y_anomaly.")],
    out: Annotated[Path, typer.Option("--out", help="Output directory.")],
    trusted: Annotated[
        Path | None, typer.Option("--trusted", help="npz with x: trusted normal images.")
    ] = None,
    test: Annotated[
        Path | None, typer.Option("--test", help="npz to score (x, optional y and y_anomaly).")
    ] = None,
    detector: Annotated[str, typer.Option(
        help="A name in the detector registry, fedsieve.shared.detectors.DETECTORS "
             "(rtbigan by default; an unknown name lists them).")] = "rtbigan",
    checkpoint: Annotated[Path | None, typer.Option(help="Meta checkpoint for rtbigan.")] = None,
    threshold_policy: Annotated[
        str | None, typer.Option(help="budget (a false-drop budget, default 0.01 of normal "
                                       "data; --threshold-value sets it)|gmm|trusted-quantile|"
                                       "contamination|fixed; default: the detector's own "
                                       "(budget for rtbigan, gmm for the peers)")
    ] = None,
    threshold_value: Annotated[float | None, typer.Option(help="Parameter of the policy.")] = None,
    random_state: Annotated[int, typer.Option("--random-state", help="Random seed.")] = 0,
    threads: Annotated[int, typer.Option(help="torch CPU threads.")] = 1,
    device: Annotated[str, typer.Option(
        help="Where a torch detector runs: auto (a CUDA GPU when torch sees one, else the "
             "CPU), cpu, cuda, cuda:1, mps. iforest and deepsvdd run on the CPU.")] = "auto",
    labels: Annotated[bool, typer.Option(
        "--labels/--no-labels",
        help="When the pool file holds claimed labels y, also check each (image, label) "
             "pair whose image passed (LabelCheck) and drop contradicted ones.")] = True,
) -> None:
    """Score a pool of uploads, flag anomalies and write scores, verdicts, report and figures.

    When the pool file holds the samples' claimed class labels (``y``), the (image, label)
    pairs whose image passed are checked too (a genuine image with a wrong label), and
    contradicted ones are dropped ("labels" in the report's flagged_by); a test file's ``y``
    is checked against the same classifiers. Without ``y`` the images are screened alone.

    Without --trusted, rtbigan needs stand-in trusted images: an IsolationForest (which needs
    none) scores the pool and its 10 least anomalous images stand in; report.json records this
    ("trusted_source": "iforest-lowest"). Pass real trusted images with --trusted when you can.
    """
    from fedsieve.shared.detectors import DETECTORS, make_detector

    _threads(threads)
    if detector not in DETECTORS:
        raise typer.BadParameter(f"choose one of {', '.join(DETECTORS)}", param_hint="--detector")
    x_pool, y_pool, claimed = _load_pairs(pool, "--pool")
    claimed = claimed if labels else None
    trusted_x, trusted_source = None, None
    if trusted is not None:
        trusted_x, _ = _load_npz(trusted, "--trusted")
        trusted_source = str(trusted)
    kw: dict[str, object] = {"threshold_value": threshold_value, "random_state": random_state}
    if threshold_policy is not None:
        kw["threshold_policy"] = threshold_policy
    if detector == "rtbigan":
        if checkpoint is not None:
            kw["meta_checkpoint"] = str(checkpoint)
        if trusted_x is None:
            ranker = make_detector("iforest", random_state=random_state).fit(x_pool)
            trusted_x = x_pool[np.argsort(ranker.decision_scores_)[:AUTO_TRUSTED]]
            trusted_source = "iforest-lowest"
    try:
        det = make_detector(detector, **kw)
        if "device" in det.get_params(deep=False):  # the torch detectors
            det.set_params(device=device)
        t0 = time.perf_counter()
        det.fit(x_pool, trusted_x)
        fit_s = time.perf_counter() - t0
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    out.mkdir(parents=True, exist_ok=True)
    scores, verdicts = det.decision_scores_, np.asarray(det.labels_, np.int64)
    explanation = det.explain_fitted()
    # Which piece of evidence decided each verdict ("score" for a one-number detector).
    deciding = explanation.deciding_names().astype(object)
    flagged_by = explanation.flagged_by()
    check, label_report = None, None
    if claimed is not None:
        check, label_flags, label_report = _check_pairs(x_pool, claimed, verdicts,
                                                        random_state, out)
        verdicts = verdicts | label_flags
        deciding[label_flags == 1] = "labels"
        flagged_by["labels"] = int(label_flags.sum())
    np.save(out / "scores.npy", scores)
    np.save(out / "verdicts.npy", verdicts)
    np.save(out / "deciding_piece.npy", deciding.astype(str))
    report: dict[str, object] = {
        "detector": detector,
        "params": {
            k: str(v) if not isinstance(v, int | float | str | bool | type(None)) else v
            for k, v in det.get_params().items()
        },
        "threshold": float(det.threshold_),
        "device": str(getattr(det, "device_", "cpu")),
        "trusted_source": trusted_source,
        "n_pool": len(x_pool),
        "n_flagged": int(verdicts.sum()),
        "flagged_by": flagged_by,
        "labels": label_report,
        "contamination": det.contamination_,
        "timings": {"fit_s": round(fit_s, 3)},
        "data": {
            "pool_sha256": images_sha256(x_pool),
            "trusted_sha256": None if trusted_x is None else images_sha256(trusted_x),
        },
        "history": getattr(det, "history_", []),
    }
    if y_pool is not None:
        report["pool_metrics"] = _metrics(y_pool, scores, verdicts)
    if test is not None:
        x_test, y_test, test_claimed = _load_pairs(test, "--test")
        t0 = time.perf_counter()
        t_scores = det.decision_function(x_test)
        dt = time.perf_counter() - t0
        t_verdicts = (t_scores > det.threshold_).astype(np.int64)
        np.save(out / "test_scores.npy", t_scores)
        if check is not None and test_claimed is not None:
            pair_scores = check.score_pairs(x_test, test_claimed)
            np.save(out / "test_label_scores.npy", pair_scores)
            t_verdicts |= (pair_scores > check.threshold_).astype(np.int64)
        elif labels and test_claimed is not None:
            typer.echo("the test file's y is not checked: the pool file holds no claimed "
                       "labels y to learn the classes from")
        np.save(out / "test_verdicts.npy", t_verdicts)
        report["timings"]["test_score_s"] = round(dt, 3)
        report["timings"]["samples_per_s"] = round(len(x_test) / max(dt, 1e-9), 1)
        report["data"]["test_sha256"] = images_sha256(x_test)
        if y_test is not None:
            report["test_metrics"] = _metrics(y_test, t_scores, t_verdicts)
    _figures(out, check_images(x_pool), scores, y_pool, det)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    by_piece = ", ".join(f"{piece} {n}" for piece, n in flagged_by.items())
    typer.echo(f"flagged {int(verdicts.sum())}/{len(x_pool)} (by {by_piece}); wrote {out}")


def _check_pairs(x: np.ndarray, claimed: np.ndarray, image_verdicts: np.ndarray,
                 random_state: int, out: Path):
    """The label check on the pairs whose image passed: the fitted check, 1 for each pair it
    contradicts (0 for the rest), and what the report says of it; writes
    ``label_scores.npy`` (NaN where the image was dropped)."""
    from fedsieve.shared.detectors.labels import LabelCheck

    rows = np.flatnonzero(image_verdicts == 0)
    t0 = time.perf_counter()
    try:
        check = LabelCheck(random_state=random_state).fit(x[rows], claimed[rows])
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--pool") from exc
    flags = np.zeros(len(x), np.int64)
    flags[rows] = check.labels_
    label_scores = np.full(len(x), np.nan)
    label_scores[rows] = check.decision_scores_
    np.save(out / "label_scores.npy", label_scores)
    return check, flags, {
        "checked": int(check.checked_.sum()), "flagged": int(flags.sum()),
        "classes": check.classes_.tolist(), "rule": check.filter_by,
        "threshold": float(check.threshold_), "fit_s": round(time.perf_counter() - t0, 3)}


def _args_after(command: str) -> list[str]:
    args = sys.argv[1:]
    return args[args.index(command) + 1 :] if command in args else args


def _metrics(y: np.ndarray, scores: np.ndarray, verdicts: np.ndarray) -> dict[str, float | None]:
    from sklearn.metrics import f1_score, precision_score, recall_score, roc_auc_score

    both = 0 < y.sum() < len(y)
    return {
        "auc": float(roc_auc_score(y, scores)) if both else None,
        "precision": float(precision_score(y, verdicts, zero_division=0)),
        "recall": float(recall_score(y, verdicts, zero_division=0)),
        "f1": float(f1_score(y, verdicts, zero_division=0)),
    }


def _figures(out: Path, x: np.ndarray, scores: np.ndarray, y: np.ndarray | None,
             detector: object) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch
    from sklearn.metrics import roc_curve
    from torchvision.utils import save_image

    order = np.argsort(scores)
    k = min(32, len(x))
    shown = np.concatenate([order[::-1][:k], order[:k]])
    tiles = torch.from_numpy(display_rgb(x[shown]))
    maps = None  # a detector without an anomaly map: the images alone
    if hasattr(detector, "anomaly_map"):
        try:
            maps = detector.anomaly_map(x[shown])
        except NotImplementedError:  # e.g. AnoGAN: no encoder to reconstruct with
            pass
    if maps is not None:
        # Each image beside its heat map, on one colour scale for the whole figure.
        scale = max(float(np.quantile(maps, 0.99)), 1e-12)
        heat = plt.get_cmap("inferno")(np.clip(maps / scale, 0, 1))[..., :3]
        heat = torch.from_numpy(heat.astype(np.float32)).permute(0, 3, 1, 2)
        tiles = torch.stack([tiles, heat], 1).flatten(0, 1)
    # Top half: the most anomalous pool images; bottom half: the least anomalous.
    save_image(tiles, out / "extremes.png", nrow=8 if maps is None else 16, padding=2,
               pad_value=0.5)
    fig, ax = plt.subplots(figsize=(4, 4))
    if y is not None and 0 < y.sum() < len(y):
        fpr, tpr, _ = roc_curve(y, scores)
        ax.plot(fpr, tpr, label="pool")
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title("ROC (needs y_anomaly)" if y is None else "ROC")
    fig.tight_layout()
    fig.savefig(out / "roc.png", dpi=100)
    plt.close(fig)


def register(app: typer.Typer) -> None:
    """Add the ``meta-train`` and ``detect`` commands to ``app``."""
    app.command("meta-train")(meta_train_cmd)
    app.command("detect")(detect_cmd)
