"""Scoring a run against the harness's ground truth, and the plots and Markdown around it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from sklearn.metrics import precision_recall_fscore_support, roc_auc_score, roc_curve

from fedsieve.server.audit import read_audit
from fedsieve.simulations.pollution import ID_STRIDE, Federation
from fedsieve.simulations.tables import MISSING, format_value


def read_sample_verdicts(audit_path: Path) -> dict[int, tuple[float, int, int]]:
    """Sample id -> (score, verdict, node) from the latest screening in an audit log."""
    return _sample_verdicts(_latest_samples(audit_path))


def _latest_samples(audit_path: Path) -> dict[int, dict]:
    """Sample id -> its entry from the latest screening in an audit log."""
    if not audit_path.is_file():
        return {}
    return {int(e["id"]): e for e in read_audit(audit_path, "sample")}


def _sample_verdicts(latest: dict[int, dict]) -> dict[int, tuple[float, int, int]]:
    return {i: (float(e["score"]), int(e["verdict"]), int(e["node"])) for i, e in latest.items()}


def read_exclusions(audit_path: Path) -> dict[int, str]:
    """Node -> the reason of its latest exclusion."""
    if not audit_path.is_file():
        return {}
    return {int(e["node"]): e.get("reason", "") for e in read_audit(audit_path, "client")
            if e.get("decision") == "excluded"}


def read_pool_estimate(audit_path: Path) -> tuple[dict, set[int]] | None:
    """The latest screening's pool entry in an audit log, and the ids it scored.

    Returns
    -------
    tuple or None
        The latest ``"pool"`` entry (:mod:`fedsieve.server.audit`) and the sample ids of its
        round; None when the log has no pool entry (no filter, or a log written before pool
        entries existed).
    """
    if not audit_path.is_file():
        return None
    pool, ids_by_round = None, {}
    for entry in read_audit(audit_path):
        if entry.get("kind") == "sample":
            ids_by_round.setdefault(entry["round"], set()).add(int(entry["id"]))
        elif entry.get("kind") == "pool":
            pool = entry
    if pool is None:
        return None
    return pool, ids_by_round.get(pool["round"], set())


def estimated_contamination(federation: Federation, audit_path: Path) -> dict | None:
    """The latest screening's estimated pollution share next to the true one.

    Returns
    -------
    dict or None
        ``estimate``, ``low``, ``high`` and ``confidence`` (the pool's estimate with its
        interval, as the server logged it), ``round`` and ``uploaded`` of that screening, and
        ``true``: the share of polluted samples among its uploads (None without uploads).
        None when the audit log holds no pool entry.
    """
    found = read_pool_estimate(audit_path)
    if found is None:
        return None
    pool, ids = found
    truth = federation.ground_truth()
    true = float(np.mean([truth[i] for i in ids])) if ids else None
    return {"estimate": pool["contamination"], "low": pool["contamination_low"],
            "high": pool["contamination_high"], "confidence": pool["confidence"],
            "round": pool["round"], "uploaded": pool["uploaded"], "true": true}


def detection_report(federation: Federation, audit_path: Path) -> dict:
    """Detection quality on the uploads, overall and per client.

    Returns AUC, precision, recall and F1 of the verdicts, the fractions of polluted and of
    normal samples dropped, the latest screening's estimated pollution share with its interval
    next to the true one (``estimated_contamination``, :func:`estimated_contamination`; None
    for a log without pool entries), and per client the true pollution next to what was
    dropped. Empty (``{"screened": False}``) when the run had no filter.
    """
    latest = _latest_samples(audit_path)
    verdicts = _sample_verdicts(latest)
    if not verdicts:
        return {"screened": False}
    truth = federation.ground_truth()
    ids = np.fromiter(verdicts, dtype=np.int64)
    scores = np.array([verdicts[i][0] for i in ids])
    dropped = np.array([verdicts[i][1] for i in ids], dtype=bool)
    polluted = np.array([truth[int(i)] for i in ids], dtype=bool)
    node_of_client = {int(i) // ID_STRIDE: verdicts[i][2] for i in ids}
    exclusions = read_exclusions(audit_path)
    precision, recall, f1, _ = precision_recall_fscore_support(
        polluted, dropped, average="binary", zero_division=0)
    report = {
        "screened": True,
        "uploads": len(ids),
        "polluted": int(polluted.sum()),
        "auc": float(roc_auc_score(polluted, scores)) if 0 < polluted.sum() < len(ids) else None,
        "precision": float(precision),
        "recall": float(recall),
        "f1": float(f1),
        "pollution_dropped": float(dropped[polluted].mean()) if polluted.any() else None,
        "normal_dropped": float(dropped[~polluted].mean()) if (~polluted).any() else None,
        "estimated_contamination": estimated_contamination(federation, audit_path),
        "by_kind": _dropped_by_kind(federation, ids, dropped),
        # The piece of evidence behind each drop (an older log names none).
        "by_piece": _dropped_by_piece({i: e["piece"] for i, e in latest.items()
                                       if "piece" in e}, truth),
        "clients": [],
    }
    client_of = ids // ID_STRIDE
    for client in federation.clients:
        mine = client_of == client.client_id
        node = node_of_client.get(client.client_id)
        report["clients"].append({
            "client_id": client.client_id,
            "node": node,
            "samples": len(client),
            "true_polluted": int(client.polluted.sum()),
            "uploaded": int(mine.sum()),
            "dropped_polluted": int((dropped & polluted & mine).sum()),
            "dropped_normal": int((dropped & ~polluted & mine).sum()),
            "excluded": exclusions.get(node, "") if node is not None else "",
        })
    report["roc"] = _roc_points(polluted, scores)
    return report


def _dropped_by_piece(pieces: dict[int, str], truth: dict[int, int]
                      ) -> dict[str, dict[str, int]]:
    """Per piece of evidence: the samples it decided to drop, and how many were pollution."""
    out: dict[str, dict[str, int]] = {}
    for sample, piece in pieces.items():
        counts = out.setdefault(piece, {"dropped": 0, "polluted": 0})
        counts["dropped"] += 1
        counts["polluted"] += int(truth[sample])
    return dict(sorted(out.items()))


def _dropped_by_kind(federation: Federation, ids: np.ndarray,
                     dropped: np.ndarray) -> dict[str, dict[str, float | int]]:
    """Per pollution kind (ground truth): uploaded count and the fraction dropped."""
    kind_of = {int(i): k for c in federation.clients for i, k in zip(c.ids, c.kinds) if k}
    kinds = np.array([kind_of.get(int(i), "") for i in ids])
    return {str(k): {"uploaded": int((kinds == k).sum()),
                     "dropped": float(dropped[kinds == k].mean())}
            for k in np.unique(kinds[kinds != ""])}


def _roc_points(polluted: np.ndarray, scores: np.ndarray, points: int = 200) -> dict:
    if polluted.all() or not polluted.any():
        return {}
    fpr, tpr, _ = roc_curve(polluted, scores)
    keep = np.unique(np.linspace(0, len(fpr) - 1, min(points, len(fpr))).astype(int))
    return {"fpr": fpr[keep].tolist(), "tpr": tpr[keep].tolist()}


def write_simulation_report(report: dict, out: Path) -> None:
    """``report.json``, ``accuracy.png``, ``clients.png``, ``roc.png`` and ``report.md``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2))
    rounds = sorted(report["accuracy"], key=int)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot([int(r) for r in rounds], [report["accuracy"][r] for r in rounds], marker="o",
            label="clean accuracy")
    attack = report.get("attack_success") or {}
    if attack:
        ax.plot([int(r) for r in rounds], [attack.get(r, np.nan) for r in rounds], marker="s",
                label="attack success")
        ax.legend(fontsize=8)
    ax.set(xlabel="round", ylabel="rate", title="Global model on the MNIST test split",
           ylim=(0, 1.02) if attack else None)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "accuracy.png", dpi=120)
    plt.close(fig)

    detection = report["detection"]
    plots = ["accuracy.png"]
    if detection.get("screened"):
        clients = detection["clients"]
        x = np.arange(len(clients))
        fig, ax = plt.subplots(figsize=(max(5, 0.6 * len(clients) + 2), 3.5))
        ax.bar(x - 0.27, [c["true_polluted"] for c in clients], 0.27, label="polluted (truth)")
        ax.bar(x, [c["dropped_polluted"] for c in clients], 0.27, label="polluted dropped")
        ax.bar(x + 0.27, [c["dropped_normal"] for c in clients], 0.27, label="normal dropped")
        ax.set_xticks(x, [str(c["client_id"]) for c in clients])
        ax.set(xlabel="client", ylabel="samples", title="Per-client pollution and drops")
        ax.legend(fontsize=8, ncols=3, loc="upper center", bbox_to_anchor=(0.5, -0.2))
        fig.tight_layout()
        fig.savefig(out / "clients.png", dpi=120)
        plt.close(fig)
        plots.append("clients.png")
        if detection.get("roc"):
            fig, ax = plt.subplots(figsize=(4, 4))
            ax.plot(detection["roc"]["fpr"], detection["roc"]["tpr"],
                    label=f"AUC {detection['auc']:.4f}")
            ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=0.8)
            ax.set(xlabel="false positive rate", ylabel="true positive rate",
                   title="ROC of the uploads")
            ax.legend(loc="lower right")
            fig.tight_layout()
            fig.savefig(out / "roc.png", dpi=120)
            plt.close(fig)
            plots.append("roc.png")
    (out / "report.md").write_text(simulation_markdown(report, plots))


def estimate_line(estimate: dict | None) -> str:
    """The report's line on the pool's estimated pollution share, with its interval and the
    true share of the uploads, e.g. ``Estimated pollution of the uploads (round 1): 19.8 %
    [18.9 %, 20.8 %] (95 % interval); true 20.0 %.``"""
    if not estimate:
        return f"Estimated pollution of the uploads: {MISSING} (the audit log has no pool entry)."
    true = MISSING if estimate.get("true") is None else f"{100 * estimate['true']:.1f} %"
    return (f"Estimated pollution of the uploads (round {estimate['round']}): "
            f"{100 * estimate['estimate']:.1f} % [{100 * estimate['low']:.1f} %, "
            f"{100 * estimate['high']:.1f} %] ({100 * estimate['confidence']:g} % interval); "
            f"true {true}.")


def model_lines(report: dict) -> list[str]:
    """Table rows after the accuracy row: attack success per round (backdoor runs), then a
    paragraph with the last round's accuracy per class."""
    rounds = sorted(report["accuracy"], key=int)
    attack = report.get("attack_success") or {}
    lines = []
    if attack:
        lines.append("| attack success | " + " | ".join(format_value(attack.get(r), ".4f")
                                                     for r in rounds) + " |")
    per_class = report.get("final_class_accuracy")
    if per_class:
        lines += ["", "Accuracy per class after the last round: " + ", ".join(
            f"{k}: {format_value(a, '.3f')}" for k, a in enumerate(per_class)) + "."]
    if attack:
        lines += ["", "Attack success: share of triggered test digits of the other classes "
                  "that the global model predicts as the attacker's target."]
    return lines


def simulation_markdown(report: dict, plots: list[str]) -> str:
    """The Markdown of ``report.md``: settings, accuracy, screening quality and data sources.

    Parameters
    ----------
    report : dict
        What :func:`fedsieve.simulations.simulate.simulate` builds (``report.json``).
    plots : list of str
        File names of the plots to embed.

    Returns
    -------
    str
        The Markdown text.
    """
    s = report["settings"]
    lines = [
        "# fedsieve simulation report", "",
        f"{s['num-clients']} clients, {s['contamination']:.0%} pollution "
        f"(`{s.get('pollution', 'fashion')}`) "
        f"({s['partition']} partition, {s['profile']} profile, {s['label-policy']} labels), "
        f"{s['num-server-rounds']} rounds, aggregator **{s['aggregator']}**, detector "
        f"**{s['detector']}**, seed {s['seed']}. Wall time {report['wall_seconds']:.1f} s.", "",
        "## Accuracy of the global model (clean test split)", "",
        "| round | " + " | ".join(sorted(report["accuracy"], key=int)) + " |",
        "|---|" + "---|" * len(report["accuracy"]),
        "| accuracy | " + " | ".join(f"{report['accuracy'][r]:.4f}"
                                      for r in sorted(report["accuracy"], key=int)) + " |",
        *model_lines(report), "",
    ]
    d = report["detection"]
    if d.get("screened"):
        lines += [
            "## Screening of the uploads", "",
            "| uploads | polluted | AUC | precision | recall | F1 | pollution dropped | "
            "normal dropped |", "|---|---|---|---|---|---|---|---|",
            "| " + " | ".join([str(d["uploads"]), str(d["polluted"]),
                               *(format_value(d[k]) for k in ("auc", "precision", "recall", "f1")),
                               *(format_value(d[k], ".2%") for k in ("pollution_dropped",
                                                                     "normal_dropped"))]) + " |",
            "", estimate_line(d.get("estimated_contamination")), "",
            "| pollution kind | uploaded | dropped |", "|---|---|---|",
            *(f"| `{k}` | {v['uploaded']} | {v['dropped']:.2%} |"
              for k, v in d.get("by_kind", {}).items()),
            "",
            *(["| piece of evidence that decided | dropped | of them pollution |",
               "|---|---|---|",
               *(f"| `{k}` | {v['dropped']} | {v['polluted']} |"
                 for k, v in d["by_piece"].items()), ""] if d.get("by_piece") else []),
            "| client | samples | polluted | dropped polluted | dropped normal | excluded |",
            "|---|---|---|---|---|---|",
        ]
        lines += [f"| {c['client_id']} | {c['samples']} | {c['true_polluted']} | "
                  f"{c['dropped_polluted']} | {c['dropped_normal']} | {c['excluded'] or MISSING} |"
                  for c in d["clients"]]
        lines.append("")
    else:
        lines += ["No data filter ran in this simulation.", ""]
    lines += [f"![{p}]({p})" for p in plots]
    lines += ["", "## Data sources", "", "| data | source | location | count | sha256 |",
              "|---|---|---|---|---|"]
    lines += [f"| {v['dataset']} {v['split']} | {v['source']} | {v['location']} | {v['count']} | "
              f"`{v['sha256'][:16]}` |" for v in report["data_sources"].values()]
    return "\n".join(lines) + "\n"
