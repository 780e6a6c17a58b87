"""Plots and ``report.md`` of a sweep, built from its result rows."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fedsieve.shared.config import RunSettings
from fedsieve.simulations.benchmark import PAPER_CONTAMINATION
from fedsieve.simulations.figures import framed_grid
from fedsieve.simulations.pollution import federation_for
from fedsieve.simulations.report import read_sample_verdicts
from fedsieve.simulations.simulate import ORACLE
from fedsieve.simulations.tables import MISSING, format_mean_std, mean_std

Key = tuple[str, float, str]
#: An undefended model counts as hurt when pollution costs it this much accuracy ...
HARM_ACCURACY_PP = 2.0
#: ... or when a backdoor succeeds this often.
HARM_ATTACK_SUCCESS = 0.5


def _group(row: dict) -> str:
    """The row's federation family (older rows: partition/profile/label policy)."""
    return row.get("family") or "/".join((row["partition"], row["profile"],
                                          row["label_policy"]))


def aggregate(rows: Sequence[dict], metric: str) -> dict[Key, tuple[float, float]]:
    """Mean and std over seeds of ``metric`` per (group, contamination, defense), ok rows only.

    The oracle also stands for the "none" defense at contamination 0 (the same run).
    """
    values: dict[Key, list] = defaultdict(list)
    for row in rows:
        if row.get("status") == "ok":
            values[(_group(row), row["contamination"], row["defense"])].append(row.get(metric))
            if row["defense"] == ORACLE:
                values[(_group(row), 0.0, "none")].append(row.get(metric))
    return {k: s for k, v in values.items() if (s := mean_std(v)) is not None}


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _style(ax, **labels: str) -> None:
    ax.set(**labels)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


def _save(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _curve(ax, stats: dict[Key, tuple[float, float]], group, defense: str, label: str) -> None:
    """One mean ± std line over the contamination rates."""
    pts = sorted((c, s) for (g, c, d), s in stats.items() if g == group and d == defense)
    ax.errorbar([c for c, _ in pts], [s[0] for _, s in pts], [s[1] for _, s in pts],
                marker="o", capsize=3, label=label)


def plot_accuracy(rows: Sequence[dict], path: Path) -> None:
    """Final accuracy vs contamination per defense, one panel per federation family."""
    plt = _plt()
    acc = aggregate(rows, "final_accuracy")
    groups = sorted({k[0] for k in acc})
    fig, axes = plt.subplots(1, len(groups), figsize=(5.5 * len(groups), 4), squeeze=False)
    for ax, group in zip(axes[0], groups):
        defenses = sorted({k[2] for k in acc if k[0] == group and k[2] != ORACLE})
        for defense in defenses:
            _curve(ax, acc, group, defense, defense)
        if (group, 0.0, ORACLE) in acc:
            mean, std = acc[(group, 0.0, ORACLE)]
            ax.axhline(mean, color="black", ls="--", lw=1, label="clean oracle")
            ax.axhspan(mean - std, mean + std, color="black", alpha=0.08)
        _style(ax, xlabel="contamination", ylabel="final test accuracy", title=group)
    _save(fig, path)


def plot_detection(rows: Sequence[dict], path: Path) -> None:
    """Upload AUC (federated run) and test AUC (detector-only run) vs contamination."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric, title in ((axes[0], "upload_auc", "AUC on the uploads"),
                              (axes[1], "test_auc", "AUC on the test set")):
        stats = aggregate(rows, metric)
        if not stats:  # no detector-only runs: say so rather than draw an empty frame
            ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes)
            ax.set(title=title)
            continue
        for (group, defense) in sorted({(k[0], k[2]) for k in stats}):
            label = defense if len({k[0] for k in stats}) == 1 else f"{defense} ({group})"
            _curve(ax, stats, group, defense, label)
        _style(ax, xlabel="contamination", ylabel="AUC", title=title)
    _save(fig, path)


def plot_rounds(rows: Sequence[dict], path: Path) -> bool:
    """Rt-BiGAN pool AUC per self-training round, one line per contamination rate."""
    per_level: dict[float, list[list[float]]] = defaultdict(list)
    for row in rows:
        if row.get("status") == "ok" and row["defense"] == "rtbigan" and row.get("rounds_auc"):
            per_level[row["contamination"]].append(row["rounds_auc"])
    if not per_level:
        return False
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 3.8))
    for level, runs in sorted(per_level.items()):
        n = min(len(r) for r in runs)
        mean = np.mean([r[:n] for r in runs], axis=0)
        ax.plot(range(n), mean, marker="o", label=f"c={level:g}")
    _style(ax, xlabel="self-training round (0 = adapted only)", ylabel="pool AUC",
           title="Rt-BiGAN: AUC per self-training round")
    _save(fig, path)
    return True


def client_grids(rows: Sequence[dict], sweep_dir: Path, path: Path, per_side: int = 8,
                 max_clients: int = 6) -> str | None:
    """Dropped (red frame) then kept images of each client, for the filter cell nearest 20 %.

    Returns the cell key drawn, or None when no filter cell exists.
    """
    filtered = [r for r in rows if r.get("status") == "ok" and r.get("upload_auc") is not None]
    if not filtered:
        return None
    cell = min(filtered, key=lambda r: (abs(r["contamination"] - 0.2),
                                        r["defense"] != "rtbigan", r["seed"]))
    cell_dir = sweep_dir / "cells" / cell["key"]
    settings = RunSettings.from_run_config(
        json.loads((cell_dir / "report.json").read_text())["settings"])
    federation = federation_for(settings)
    verdicts = read_sample_verdicts(cell_dir / "audit.jsonl")
    tiles, frames = [], []
    blank = np.zeros((28, 28), np.uint8)
    for client in federation.clients[:max_clients]:
        dropped = [i for i, sid in enumerate(client.ids) if verdicts.get(int(sid), (0, 0))[1]]
        kept = [i for i, sid in enumerate(client.ids) if not verdicts.get(int(sid), (0, 1))[1]]
        for chosen, flag in ((dropped[:per_side], True), (kept[:per_side], False)):
            tiles += [client.x[i] for i in chosen] + [blank] * (per_side - len(chosen))
            frames += [flag] * len(chosen) + [False] * (per_side - len(chosen))
    framed_grid(np.stack(tiles), np.array(frames), path, nrow=2 * per_side,
                max_images=len(tiles))
    return cell["key"]


def harm(rows: Sequence[dict]) -> dict[str, dict]:
    """Per family: did pollution hurt the undefended model at any of its rates?

    Returns family -> ``{"hurt", "accuracy_drop_pp", "attack_success"}``: the largest drop of
    the undefended model's mean final accuracy below the clean oracle's, its largest mean
    attack success (None without a backdoor), and whether either passes
    :data:`HARM_ACCURACY_PP` / :data:`HARM_ATTACK_SUCCESS`.
    """
    acc = aggregate(rows, "final_accuracy")
    attack = aggregate(rows, "final_attack_success")
    result = {}
    for group in dict.fromkeys(_group(r) for r in rows if r.get("status") == "ok"):
        oracle = acc.get((group, 0.0, ORACLE))
        levels = [k[1] for k in acc if k[0] == group and k[2] == "none" and k[1] > 0]
        drops = [100 * (oracle[0] - acc[(group, c, "none")][0]) for c in levels] if oracle else []
        success = [attack[(group, c, "none")][0] for c in levels if (group, c, "none") in attack]
        drop = max(drops, default=None)
        top = max(success, default=None)
        result[group] = {"hurt": bool((drop is not None and drop >= HARM_ACCURACY_PP)
                                      or (top is not None and top >= HARM_ATTACK_SUCCESS)),
                         "accuracy_drop_pp": drop, "attack_success": top}
    return result


def _levels(acc: dict[Key, tuple[float, float]], group: str) -> list[float]:
    """The family's contamination rates (0 only when a defense other than the oracle ran at
    0: the oracle also stands for "none" at 0)."""
    return sorted({k[1] for k in acc if k[0] == group and k[2] != ORACLE
                   and not (k[1] == 0.0 and k[2] == "none")})


def verdicts(rows: Sequence[dict]) -> list[str]:
    """One sentence per (federation family, contamination): which defense holds."""
    acc = aggregate(rows, "final_accuracy")
    attack = aggregate(rows, "final_attack_success")
    dropped = aggregate(rows, "pollution_dropped")
    normal = aggregate(rows, "normal_dropped")
    hurt = harm(rows)
    lines = []
    for group in sorted(hurt, key=lambda g: not hurt[g]["hurt"]):
        oracle = acc.get((group, 0.0, ORACLE))
        h = hurt[group]
        status = "**pollution hurts**" if h["hurt"] else "control: no measurable harm"
        for level in _levels(acc, group):
            here = {d: s for (g, c, d), s in acc.items() if g == group and c == level
                    and d != ORACLE}
            best = max(here, key=lambda d: here[d][0])
            text = (f"- {group} ({status}), c={level:g}: best accuracy **{best}** "
                    f"({here[best][0]:.4f})")
            # Differences smaller than the seeds' own spread are not a ranking.
            tied = sorted(d for d in here if d != best and here[best][0] - here[d][0]
                          <= max(here[best][1], here[d][1]))
            if tied:
                text += f", within the seed spread of {', '.join(tied)}"
            if oracle:
                gap = 100 * (here[best][0] - oracle[0])
                text += f", {gap:+.2f} pp vs the clean oracle ({oracle[0]:.4f})"
            if "none" in here and best != "none":
                text += f"; no defense {here['none'][0]:.4f}"
            success = {d: s for (g, c, d), s in attack.items() if g == group and c == level
                       and d != ORACLE}
            if success:
                lowest = min(success, key=lambda d: success[d][0])
                text += (f"; attack success: no defense {success['none'][0]:.1%}, lowest "
                         f"**{lowest}** {success[lowest][0]:.1%}"
                         if "none" in success else "")
            if "rtbigan" in here:
                text += f"; Rt-BiGAN {here['rtbigan'][0]:.4f}"
                d, n = (dropped.get((group, level, "rtbigan")),
                        normal.get((group, level, "rtbigan")))
                if "rtbigan" in success:
                    text += f", attack success {success['rtbigan'][0]:.1%}"
                if d and n:
                    text += f" (dropped {d[0]:.1%} of pollution, {n[0]:.1%} of normal data)"
            lines.append(text + ".")
    return lines


def family_table(rows: Sequence[dict], group: str) -> list[str]:
    """Markdown table of one family: per defense and rate, final accuracy (its gap to the
    oracle in pp), attack success for a backdoor, and what a filter dropped."""
    acc = aggregate(rows, "final_accuracy")
    attack = aggregate(rows, "final_attack_success")
    dropped = aggregate(rows, "pollution_dropped")
    normal = aggregate(rows, "normal_dropped")
    levels = _levels(acc, group)
    defenses = sorted({k[2] for k in acc if k[0] == group and k[2] != ORACLE and k[1] in levels},
                      key=lambda d: (d != "none", "+" not in d and d != "rtbigan", d))
    oracle = acc.get((group, 0.0, ORACLE))
    backdoor = any(k[0] == group for k in attack)
    head = ["defense"]
    for c in levels:
        head += [f"accuracy c={c:g}", f"Δ oracle c={c:g}"]
        head += [f"attack success c={c:g}"] if backdoor else []
        head += [f"pollution / normal dropped c={c:g}"]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    if oracle:
        cells = []
        for _ in levels:
            cells += [format_mean_std(oracle), "0.00"]
            cells += [format_mean_std(attack.get((group, 0.0, ORACLE)), ".3f")] if backdoor \
                else []
            cells += [MISSING]
        lines.append("| clean oracle | " + " | ".join(cells) + " |")
    for defense in defenses:
        cells = []
        for c in levels:
            here = acc.get((group, c, defense))
            gap = (f"{100 * (here[0] - oracle[0]):+.2f}" if here and oracle else MISSING)
            cells += [format_mean_std(here), gap]
            cells += [format_mean_std(attack.get((group, c, defense)), ".3f")] if backdoor \
                else []
            d, n = dropped.get((group, c, defense)), normal.get((group, c, defense))
            cells += [f"{d[0]:.1%} / {n[0]:.1%}" if d and n else MISSING]
        lines.append(f"| {defense} | " + " | ".join(cells) + " |")
    return lines


def write_sweep_report(rows: Sequence[dict], out: Path, meta: dict) -> Path:
    """Plots and ``out/report.md``; returns the report's path."""
    plots = {"accuracy_vs_contamination.png": "Final accuracy vs contamination"}
    plot_accuracy(rows, out / "accuracy_vs_contamination.png")
    if aggregate(rows, "upload_auc") or aggregate(rows, "test_auc"):
        plot_detection(rows, out / "detection_auc.png")
        plots["detection_auc.png"] = "Detection AUC vs contamination"
    if plot_rounds(rows, out / "rounds_auc.png"):
        plots["rounds_auc.png"] = "Rt-BiGAN AUC per self-training round"
    grid_cell = client_grids(rows, out, out / "clients_dropped_kept.png")
    if grid_cell:
        plots["clients_dropped_kept.png"] = (f"Per client (rows), {grid_cell}: dropped images "
                                             "(red) then kept ones")
    paper = meta.get("paper") or {}
    if (out / "fig4_roc.png").is_file():
        plots["fig4_roc.png"] = "ROC at 20 % pollution (the paper's Fig. 4)"
    if (out / "fig3_adaptation.png").is_file():
        plots["fig3_adaptation.png"] = (
            "Fig. 3: held-out test digits; reconstructions by the meta-model; by the model "
            "adapted in 20 steps on 10 shots; samples G(z) of the adapted model")

    grid = meta["grid"]
    own_rounds = ", ".join(f"{f['name']} {f['rounds']}" for f in grid.get("families", [])
                           if f.get("rounds"))
    lines = ["# fedsieve sweep", "",
             f"Command: `{meta['command']}`  ",
             f"{grid['base']['num-clients']} clients, {grid['base']['num-server-rounds']} rounds "
             + (f"({own_rounds} where a family sets its own) " if own_rounds else "")
             + f"x {grid['base']['local-epochs']} local epochs, {grid['seeds']} seed(s); "
             f"{meta['wall_seconds'] / 60:.1f} min of cells and paper figures, "
             f"{meta['this_invocation_seconds'] / 60:.1f} min for this invocation (less when "
             f"it resumed finished cells), on {meta['machine']['cpu']} "
             f"({meta['machine']['cores']} cores).", "",
             *([f"**Cut short: {meta['cells'] - len(meta['missing_cells'])} of "
                f"{meta['cells']} cells finished**; the same command without --report-only "
                "runs the rest.", ""] if meta.get("missing_cells") else []),
             "## Verdict per family and rate", "", *verdicts(rows), ""]
    hurt = harm(rows)
    about = {f["name"]: f.get("about", "") for f in meta["grid"].get("families", [])}
    for title, wanted in (("Where pollution hurts", True), ("Controls", False)):
        families = [g for g in hurt if hurt[g]["hurt"] == wanted]
        if not families:
            continue
        lines += [f"## {title}", ""]
        if not wanted:
            lines += [f"Families where the undefended model lost less than "
                      f"{HARM_ACCURACY_PP:g} pp of accuracy against the clean oracle (and no "
                      f"backdoor reached {HARM_ATTACK_SUCCESS:.0%} attack success).", ""]
        for group in families:
            h = hurt[group]
            effect = ", ".join(
                ([f"without a defense: accuracy {-h['accuracy_drop_pp']:+.2f} pp against the "
                  "clean oracle"] if h["accuracy_drop_pp"] is not None else [])
                + ([f"attack success {h['attack_success']:.1%}"]
                   if h["attack_success"] is not None else []))
            lines += [f"### {group}", "", (about.get(group) or group) + f". {effect}.", "",
                      *family_table(rows, group), ""]
    metrics = {m: aggregate(rows, m) for m in ("upload_auc", "pollution_dropped",
                                               "normal_dropped", "test_auc")}
    detectors = sorted({(k[0], k[1], k[2]) for k in metrics["upload_auc"]})
    if detectors:
        lines += ["## Detection", "",
                  "| family | c | detector | upload AUC | pollution dropped | normal dropped | "
                  "test AUC |", "|---|---|---|---|---|---|---|"]
        for key in detectors:
            lines.append(f"| {key[0]} | {key[1]:g} | {key[2]} | "
                         f"{format_mean_std(metrics['upload_auc'].get(key))} | "
                         f"{format_mean_std(metrics['pollution_dropped'].get(key), '.2%')} | "
                         f"{format_mean_std(metrics['normal_dropped'].get(key), '.2%')} | "
                         f"{format_mean_std(metrics['test_auc'].get(key))} |")
        lines.append("")
    if paper.get("table_one"):
        t = paper["table_one"]
        lines += ["## The paper's Table I beside ours (test AUC)", "",
                  f"Ours: trained on the pooled client data, clean and at "
                  f"{PAPER_CONTAMINATION:.0%} pollution; training budget x{t['budget']:g}."
                  + (f" Taken from the sweep's own detector-only cells (the same fit): "
                     f"{', '.join(t['reused'])}." if t.get("reused") else ""), "",
                  "| method | paper clean | paper polluted | ours clean | ours polluted |",
                  "|---|---|---|---|---|"]
        for method, (clean, polluted) in t["paper"].items():
            ours = t["auc"].get(method, {})
            lines.append(f"| {method} | {clean} | {polluted} | {ours.get('clean', 0):.4f} | "
                         f"{ours.get('polluted', 0):.4f} |")
        lines.append("")
    lines += ["## Plots", ""]
    for name, caption in plots.items():
        lines += [f"**{caption}**", "", f"![{caption}]({name})", ""]
    failed = [r for r in rows if r.get("status") != "ok"]
    if failed:
        lines += ["## Failed cells (re-run the same command to retry them)", ""]
        lines += [f"- `{r['key']}`: {r.get('error', '')}" for r in failed]
        lines.append("")
    lines += ["## Data and versions", "", "| data | source | location | count | sha256 |",
              "|---|---|---|---|---|"]
    lines += [f"| {v['dataset']} {v['split']} | {v['source']} | {v['location']} | {v['count']} "
              f"| `{v['sha256'][:16]}` |" for v in meta.get("data_sources", {}).values()]
    lines += ["", "Packages: " + ", ".join(f"{k} {v}" for k, v in
                                            meta["machine"]["packages"].items()), ""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path
