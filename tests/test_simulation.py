"""A short real run in Flower's simulation engine, scored against the harness's ground truth."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fedsieve.shared.config import RunSettings
from fedsieve.shared.images import check_images
from fedsieve.simulations.pollution import federation_for
from fedsieve.simulations.simulate import settings_for_defense, simulate


@pytest.mark.slow
def test_simulate_filters_and_reports(tmp_path):
    settings = settings_for_defense(RunSettings().replace(
        num_clients=3, contamination=0.2, num_server_rounds=2, seed=2), "iforest")
    report = simulate(settings, tmp_path)
    assert set(report["accuracy"]) == {"0", "1", "2"}
    assert report["final_accuracy"] > 0.5
    detection = report["detection"]
    assert detection["screened"] and detection["uploads"] == sum(
        c["samples"] for c in report["federation"]["clients"])
    assert detection["auc"] > 0.9 and detection["pollution_dropped"] > 0.6
    assert [c["true_polluted"] for c in detection["clients"]] == [
        c["polluted"] for c in report["federation"]["clients"]]
    for name in ("audit.jsonl", "result.json", "report.json", "report.md", "accuracy.png",
                 "clients.png", "roc.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    assert "Screening of the uploads" in (tmp_path / "report.md").read_text()
    assert json.loads((tmp_path / "report.json").read_text())["settings"]["detector"] == "iforest"
    # The ServerApp screened with the harness's own trusted set, handed over as a file.
    ran = json.loads((tmp_path / "result.json").read_text())["settings"]
    assert ran["trusted-file"] == str(tmp_path / "trusted.npz")
    with np.load(tmp_path / "trusted.npz") as trusted:
        # Saved in the canonical (N, C, H, W) layout the server reads back.
        expected = check_images(federation_for(settings).trusted_set.images, dtype=np.uint8)
        np.testing.assert_array_equal(trusted["x"], expected)


def test_defense_names_pick_the_strategy():
    base = RunSettings()
    assert settings_for_defense(base, "none").filter.detector == "none"
    krum = settings_for_defense(base, "krum").filter
    assert (krum.aggregator, krum.detector) == ("krum", "none")
    with pytest.raises(ValueError, match="unknown defense 'magic'"):
        settings_for_defense(base, "magic")
