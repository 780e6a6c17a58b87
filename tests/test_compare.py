"""``fedsieve simulate --compare``: the comparison writer, the option's validation, a real run."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from fedsieve.shared.config import RunSettings
from fedsieve.simulations.cli import app
from fedsieve.simulations.compare import compared_settings, defense_name, write_comparison
from fedsieve.simulations.simulate import settings_for_defense


def _report(aggregator: str, detector: str, accuracy: list[float], *,
            attack: list[float] | None = None, dropped: tuple[float, float] | None = None,
            contamination: float = 0.2) -> dict:
    """A hand-made report with the keys ``simulate`` returns that the comparison reads."""
    rounds = {str(r): a for r, a in enumerate(accuracy)}
    attack_success = {str(r): a for r, a in enumerate(attack)} if attack else {}
    detection = ({"screened": True, "uploads": 100, "auc": 0.95,
                  "pollution_dropped": dropped[0], "normal_dropped": dropped[1]}
                 if dropped else {"screened": False})
    return {"settings": {"aggregator": aggregator, "detector": detector,
                         "contamination": contamination},
            "accuracy": rounds, "final_accuracy": accuracy[-1],
            "attack_success": attack_success,
            "final_attack_success": attack[-1] if attack else None,
            "detection": detection, "wall_seconds": 12.5}


def test_comparison_writes_json_plot_and_report_section(tmp_path):
    (tmp_path / "report.md").write_text("# fedsieve simulation report\n\nbody\n")
    runs = [("rtbigan", _report("fedavg", "rtbigan", [0.1, 0.8, 0.9], dropped=(0.9, 0.05))),
            ("none", _report("fedavg", "none", [0.1, 0.7, 0.75])),
            ("oracle", _report("fedavg", "none", [0.1, 0.85, 0.93], contamination=0.0))]
    comparison = write_comparison(runs, tmp_path)

    saved = json.loads((tmp_path / "comparison.json").read_text())
    assert saved == comparison and saved["main"] == "rtbigan" and saved["reference"] == "oracle"
    by_name = {r["name"]: r for r in saved["runs"]}
    assert list(by_name) == ["rtbigan", "none", "oracle"]
    main = by_name["rtbigan"]
    assert main["defense"] == {"aggregator": "fedavg", "detector": "rtbigan"}
    assert main["accuracy"] == {"0": 0.1, "1": 0.8, "2": 0.9} and main["final_accuracy"] == 0.9
    assert (main["pollution_dropped"], main["normal_dropped"], main["auc"]) == (0.9, 0.05, 0.95)
    assert main["wall_seconds"] == 12.5
    assert by_name["none"]["pollution_dropped"] is None and by_name["none"]["auc"] is None
    assert main["delta_vs_oracle_pp"] == pytest.approx(-3.0)
    assert by_name["none"]["delta_vs_oracle_pp"] == pytest.approx(-18.0)
    assert by_name["oracle"]["delta_vs_oracle_pp"] is None
    assert (tmp_path / "comparison.png").stat().st_size > 1000

    text = (tmp_path / "report.md").read_text()
    assert text.startswith("# fedsieve simulation report\n\nbody\n\n## Compared runs\n")
    assert "| run | final accuracy | Δ vs oracle (pp) | pollution dropped | normal dropped |" \
        in text
    assert "attack success" not in text
    assert "| **rtbigan** (this run) | 0.9000 | -3.00 | 90.00% | 5.00% |" in text
    assert "| [none](compare/none/report.md) | 0.7500 | -18.00 | — | — |" in text
    assert "| oracle | 0.1000 | 0.8500 | 0.9300 |" in text
    assert "![comparison.png](comparison.png)" in text

    # Written again (e.g. re-run), the section replaces the earlier one.
    write_comparison(runs, tmp_path)
    assert (tmp_path / "report.md").read_text() == text


def test_comparison_shows_attack_success_only_when_a_run_has_it(tmp_path):
    runs = [("iforest", _report("fedavg", "iforest", [0.2, 0.9], attack=[0.1, 0.2],
                                dropped=(0.5, 0.1))),
            ("fedmedian", _report("fedmedian", "none", [0.2, 0.88]))]
    comparison = write_comparison(runs, tmp_path)
    assert comparison["reference"] is None
    rows = {r["name"]: r for r in comparison["runs"]}
    assert rows["iforest"]["attack_success"] == {"0": 0.1, "1": 0.2}
    assert rows["iforest"]["final_attack_success"] == 0.2
    assert rows["fedmedian"]["final_attack_success"] is None
    assert rows["fedmedian"]["delta_vs_oracle_pp"] is None
    text = (tmp_path / "report.md").read_text()
    assert text.startswith("## Compared runs\n")
    assert "| run | final accuracy | attack success | pollution dropped | normal dropped |" in text
    assert "Δ vs oracle" not in text
    assert "| **iforest** (this run) | 0.9000 | 0.2000 | 50.00% | 10.00% |" in text
    assert "| [fedmedian](compare/fedmedian/report.md) | 0.8800 | — | — | — |" in text


def test_compared_settings_name_skip_and_reject():
    base = settings_for_defense(RunSettings().replace(contamination=0.3), "rtbigan")
    runs = compared_settings(base, ["none", "rtbigan", "oracle", "none", "iforest+krum"])
    assert list(runs) == ["none", "oracle", "iforest+krum"]
    assert runs["oracle"].harness.contamination == 0.0
    assert runs["oracle"].filter.detector == "none" and runs["none"].harness.contamination == 0.3
    assert (runs["iforest+krum"].filter.aggregator, runs["iforest+krum"].filter.detector) == (
        "krum", "iforest")
    for name in ("none", "rtbigan", "krum", "rtbigan+fedmedian"):
        chosen = settings_for_defense(base, name).filter
        assert defense_name(chosen.aggregator, chosen.detector) == name
    with pytest.raises(ValueError, match="'magic'"):
        compared_settings(base, ["none", "magic"])


def test_cli_rejects_a_bad_compare_entry_before_running(tmp_path):
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["simulate", "--out", str(out), "--defense", "iforest",
                                      "--compare", "none,magic+krum"])
    assert result.exit_code != 0
    assert "magic+krum" in result.output
    assert not out.exists()


@pytest.mark.slow
def test_simulate_compare_end_to_end(tmp_path):
    result = CliRunner().invoke(app, [
        "simulate", "--out", str(tmp_path), "--clients", "2", "--rounds", "1",
        "--local-epochs", "1", "--defense", "iforest", "--compare", "none,oracle,iforest"])
    assert result.exit_code == 0, result.output
    comparison = json.loads((tmp_path / "comparison.json").read_text())
    assert [r["name"] for r in comparison["runs"]] == ["iforest", "none", "oracle"]
    rows = {r["name"]: r for r in comparison["runs"]}
    assert rows["iforest"]["pollution_dropped"] is not None
    assert rows["oracle"]["contamination"] == 0.0 and rows["none"]["pollution_dropped"] is None
    assert rows["none"]["delta_vs_oracle_pp"] == pytest.approx(
        100 * (rows["none"]["final_accuracy"] - rows["oracle"]["final_accuracy"]))
    for name in ("none", "oracle"):
        assert (tmp_path / "compare" / name / "report.md").is_file()
    text = (tmp_path / "report.md").read_text()
    assert "## Screening of the uploads" in text and "## Compared runs" in text
    for line in ("| **iforest** (this run) |", "| [none](compare/none/report.md) |",
                 "| [oracle](compare/oracle/report.md) |"):
        assert line in text
    assert (tmp_path / "comparison.png").stat().st_size > 1000
    assert "Compared runs" in result.output
