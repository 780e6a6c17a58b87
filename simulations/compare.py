"""``fedsieve simulate --compare``: the run beside the undefended run and the clean oracle.

The main run goes into the run directory as a plain ``fedsieve simulate`` run would; each
compared run into ``<run dir>/compare/<name>/``. Then ``comparison.json``, ``comparison.png``
and a "Compared runs" section at the end of the main run's ``report.md`` put them side by side.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

from fedsieve.shared.config import RunSettings
from fedsieve.simulations.simulate import ORACLE, settings_for_defense, simulate
from fedsieve.simulations.tables import format_value

#: Heading of the section that :func:`write_comparison` appends to ``report.md``.
SECTION = "## Compared runs"


def defense_name(aggregator: str, detector: str) -> str:
    """The defense name (as :func:`~fedsieve.simulations.simulate.parse_defense` reads it) of
    an (inner aggregator, detector) pair, e.g. ``none``, ``krum``, ``rtbigan+fedmedian``."""
    if detector == "none":
        return "none" if aggregator == "fedavg" else aggregator
    return detector if aggregator == "fedavg" else f"{detector}+{aggregator}"


def compared_settings(settings: RunSettings, names: Sequence[str]) -> dict[str, RunSettings]:
    """The settings of each compared run, by name, in the given order.

    Parameters
    ----------
    settings : RunSettings
        The main run's settings.
    names : sequence of str
        Defense names (:func:`~fedsieve.simulations.simulate.parse_defense`) or
        :data:`~fedsieve.simulations.simulate.ORACLE`: the same federation without pollution
        and without defense. Repeated names, and runs identical to the main run, are skipped.

    Raises
    ------
    ValueError
        An entry that is neither a defense nor ``oracle``; the message names it.
    """
    runs: dict[str, RunSettings] = {}
    for name in names:
        try:
            run = (settings_for_defense(settings.replace(contamination=0.0), "none")
                   if name == ORACLE else settings_for_defense(settings, name))
        except ValueError as err:
            raise ValueError(f"--compare entry {name!r} is not {ORACLE!r} or a defense: "
                             f"{err}") from err
        if run != settings and name not in runs:
            runs[name] = run
    return runs


def simulate_compare(settings: RunSettings, out: Path, compare: Sequence[str], *,
                     progress: Callable[[str], None] | None = None,
                     verbose: bool = False) -> dict:
    """Run the main simulation into ``out``, each compared one into ``out/compare/<name>/``,
    and write the comparison (:func:`write_comparison`).

    Parameters
    ----------
    settings : RunSettings
        The main run's settings.
    out : Path
        The main run's directory.
    compare : sequence of str
        The compared runs (:func:`compared_settings`).
    progress : callable, optional
        ``progress(message)`` at each phase of each run; messages name the run.
    verbose : bool
        Show Flower's and Ray's logs.

    Returns
    -------
    dict
        The comparison (``comparison.json``).
    """
    others = compared_settings(settings, compare)  # before any run: a bad name fails early
    say = progress or (lambda message: None)
    main = defense_name(settings.filter.aggregator, settings.filter.detector)
    runs = []
    for name, run_settings, run_dir in [(main, settings, out), *(
            (n, s, out / "compare" / n) for n, s in others.items())]:
        report = simulate(run_settings, run_dir, verbose=verbose,
                          progress=lambda message, name=name: say(f"[{name}] {message}"))
        runs.append((name, report))
    say("writing the comparison")
    return write_comparison(runs, out)


def comparison_row(name: str, report: dict) -> dict:
    """What ``comparison.json`` keeps of one run's report (``report.json``).

    The detection fields (``uploads``, ``auc``, ``pollution_dropped``, ``normal_dropped``) are
    None for a run without a data filter; ``attack_success`` is empty and
    ``final_attack_success`` None for a run without a backdoor.
    """
    s, d = report.get("settings", {}), report.get("detection") or {}
    screened = bool(d.get("screened"))
    return {
        "name": name,
        "defense": {"aggregator": s.get("aggregator"), "detector": s.get("detector")},
        "contamination": s.get("contamination"),
        "final_accuracy": report["final_accuracy"],
        "accuracy": report["accuracy"],
        "final_attack_success": report.get("final_attack_success"),
        "attack_success": report.get("attack_success") or {},
        "wall_seconds": report.get("wall_seconds"),
        **{k: d.get(k) if screened else None
           for k in ("uploads", "auc", "pollution_dropped", "normal_dropped")},
    }


def write_comparison(runs: Sequence[tuple[str, dict]], out: Path) -> dict:
    """Write ``comparison.json`` and ``comparison.png`` into ``out`` and append the "Compared
    runs" section to ``out/report.md`` (replacing one an earlier call appended).

    Parameters
    ----------
    runs : sequence of (str, dict)
        (name, report) of each run, the main run first; the others' reports lie in
        ``out/compare/<name>/``. A run named ``oracle`` is the reference of "Δ vs oracle".
    out : Path
        The main run's directory.

    Returns
    -------
    dict
        ``main`` (the main run's name), ``reference`` (``"oracle"`` or None) and ``runs``:
        one :func:`comparison_row` each, with ``delta_vs_oracle_pp`` (final accuracy minus the
        oracle's, in percentage points; None for the oracle itself and without one).
    """
    rows = [comparison_row(name, report) for name, report in runs]
    oracle = next((r for r in rows if r["name"] == ORACLE), None)
    for row in rows:
        row["delta_vs_oracle_pp"] = (None if oracle is None or row is oracle else
                                     100 * (row["final_accuracy"] - oracle["final_accuracy"]))
    comparison = {"main": rows[0]["name"], "reference": ORACLE if oracle else None, "runs": rows}
    out.mkdir(parents=True, exist_ok=True)
    (out / "comparison.json").write_text(json.dumps(comparison, indent=2))
    _plot(rows, out / "comparison.png")
    report_md = out / "report.md"
    text = report_md.read_text() if report_md.is_file() else ""
    text = text.split(f"\n{SECTION}\n")[0].rstrip("\n")
    report_md.write_text(text + "\n\n" + comparison_markdown(comparison) if text
                         else comparison_markdown(comparison))
    return comparison


def table_columns(comparison: dict) -> list[str]:
    """Column titles of the comparison table (the attack success only when a run has it)."""
    columns = ["run", "final accuracy"]
    if comparison["reference"]:
        columns.append("Δ vs oracle (pp)")
    if any(r["final_attack_success"] is not None for r in comparison["runs"]):
        columns.append("attack success")
    return [*columns, "pollution dropped", "normal dropped"]


def table_cells(comparison: dict, row: dict) -> list[str]:
    """The cells of ``row`` under :func:`table_columns` (run name without decoration)."""
    columns = table_columns(comparison)
    cells = [row["name"], format_value(row["final_accuracy"])]
    if "Δ vs oracle (pp)" in columns:
        cells.append(format_value(row["delta_vs_oracle_pp"], "+.2f"))
    if "attack success" in columns:
        cells.append(format_value(row["final_attack_success"]))
    return [*cells, format_value(row["pollution_dropped"], ".2%"),
            format_value(row["normal_dropped"], ".2%")]


def comparison_markdown(comparison: dict) -> str:
    """The "Compared runs" section of ``report.md``: the table, accuracy per round, the plot."""
    columns = table_columns(comparison)
    lines = [SECTION, "",
             "The same federation under other defenses; `oracle`: without pollution and "
             "without defense. Each compared run's own report is linked.", "",
             "| " + " | ".join(columns) + " |", "|---" * len(columns) + "|"]
    for row in comparison["runs"]:
        cells = table_cells(comparison, row)
        cells[0] = (f"**{row['name']}** (this run)" if row["name"] == comparison["main"]
                    else f"[{row['name']}](compare/{row['name']}/report.md)")
        lines.append("| " + " | ".join(cells) + " |")
    rounds = sorted({r for row in comparison["runs"] for r in row["accuracy"]}, key=int)
    lines += ["", "Accuracy of the global model per round:", "",
              "| run | " + " | ".join(rounds) + " |", "|---" * (len(rounds) + 1) + "|"]
    lines += ["| " + " | ".join([row["name"], *(format_value(row["accuracy"].get(r))
                                                for r in rounds)]) + " |"
              for row in comparison["runs"]]
    return "\n".join([*lines, "", "![comparison.png](comparison.png)", ""])


def _plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for i, row in enumerate(rows):
        color = f"C{i % 10}"
        for values, style, label in ((row["accuracy"], "-", row["name"]),
                                     (row["attack_success"], "--", f"{row['name']} attack")):
            rounds = sorted(values, key=int)
            if rounds:
                ax.plot([int(r) for r in rounds], [values[r] for r in rounds], style,
                        color=color, marker="o", label=label)
    ax.set(xlabel="round", ylabel="accuracy (dashed: attack success)",
           title="Compared runs on the MNIST test split", ylim=(0, 1.02))
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)

