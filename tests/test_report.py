"""The simulation report joins the audit log with the harness's ground truth, per kind too."""

from __future__ import annotations

import numpy as np

from fedsieve.server.audit import AuditLog
from fedsieve.shared.config import RunSettings
from fedsieve.simulations.report import detection_report, simulation_markdown


def test_detection_report_breaks_drops_down_by_pollution_kind(federation_builder, tmp_path):
    federation = federation_builder(3, 0.3, pollution="black,trigger:size=3,ink-fashion", seed=4)
    log = AuditLog(tmp_path / "audit.jsonl")
    for client in federation.clients:  # a screen that catches black frames and triggers only
        drop = np.isin(client.kinds, ["constant", "trigger"]).astype(int)
        log.write_samples(1, 50 + client.client_id, client.ids, drop + 0.1 * client.polluted,
                          drop, 0.5)
    report = detection_report(federation, tmp_path / "audit.jsonl")
    by_kind = report["by_kind"]
    assert set(by_kind) == {"constant", "trigger", "ink-fashion"}
    assert by_kind["constant"]["dropped"] == by_kind["trigger"]["dropped"] == 1.0
    assert by_kind["ink-fashion"]["dropped"] == 0.0
    assert sum(v["uploaded"] for v in by_kind.values()) == report["polluted"]
    assert report["normal_dropped"] == 0.0
    settings = RunSettings().replace(num_clients=3, contamination=0.3, seed=4,
                                     pollution=federation.config["pollution"])
    markdown = simulation_markdown(
        {"settings": settings.to_run_config(), "accuracy": {"0": 0.1, "1": 0.9},
         "final_accuracy": 0.9, "wall_seconds": 1.0, "detection": report,
         "data_sources": {}}, [])
    assert "| `ink-fashion` | " in markdown and "| 0.00% |" in markdown
    assert "30% pollution (`constant,trigger,ink-fashion`)" in markdown
