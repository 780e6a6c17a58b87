"""The simulation report joins the audit log with the harness's ground truth, per kind too."""

from __future__ import annotations

import numpy as np

from fedsieve.server.audit import AuditLog
from fedsieve.shared.config import RunSettings
from fedsieve.shared.detectors import Explanation
from fedsieve.simulations.report import detection_report, estimate_line, simulation_markdown


def test_detection_report_breaks_drops_down_by_pollution_kind(federation_builder, tmp_path):
    federation = federation_builder(3, 0.3, pollution="black,trigger:size=3,ink-fashion", seed=4)
    log = AuditLog(tmp_path / "audit.jsonl")
    for client in federation.clients:  # a screen that catches black frames and triggers only
        drop = np.isin(client.kinds, ["constant", "trigger"]).astype(int)
        score = drop + 0.1 * client.polluted
        # Typicality decides the black frames, detached ink the triggers.
        values = np.stack([score, np.where(client.kinds == "trigger", 2.0, 0.0)], axis=1)
        explanation = Explanation(["typicality", "detached-ink"], values,
                                  np.array([0.5, 1.0]), values - [0.5, 1.0], score, 0.5)
        log.write_samples(1, 50 + client.client_id, client.ids, score, drop, 0.5,
                          explanation=explanation)
    uploads = sum(len(c) for c in federation.clients)
    log.write_pool(1, uploads, 123, 0.5, {"estimate": 0.198, "low": 0.189, "high": 0.208,
                                          "confidence": 0.95})
    report = detection_report(federation, tmp_path / "audit.jsonl")
    by_kind = report["by_kind"]
    assert set(by_kind) == {"constant", "trigger", "ink-fashion"}
    assert by_kind["constant"]["dropped"] == by_kind["trigger"]["dropped"] == 1.0
    assert by_kind["ink-fashion"]["dropped"] == 0.0
    assert sum(v["uploaded"] for v in by_kind.values()) == report["polluted"]
    assert report["normal_dropped"] == 0.0
    n_black, n_trigger = (sum(int((c.kinds == k).sum()) for c in federation.clients)
                          for k in ("constant", "trigger"))
    assert report["by_piece"] == {"detached-ink": {"dropped": n_trigger, "polluted": n_trigger},
                                  "typicality": {"dropped": n_black, "polluted": n_black}}
    # The server's pool estimate, with its interval, next to the true share of the uploads.
    truth = federation.ground_truth()
    assert report["estimated_contamination"] == {
        "estimate": 0.198, "low": 0.189, "high": 0.208, "confidence": 0.95, "round": 1,
        "uploaded": uploads, "true": sum(truth.values()) / len(truth)}
    settings = RunSettings().replace(num_clients=3, contamination=0.3, seed=4,
                                     pollution=federation.config["pollution"])
    markdown = simulation_markdown(
        {"settings": settings.to_run_config(), "accuracy": {"0": 0.1, "1": 0.9},
         "final_accuracy": 0.9, "wall_seconds": 1.0, "detection": report,
         "data_sources": {}}, [])
    assert "| `ink-fashion` | " in markdown and "| 0.00% |" in markdown
    assert f"| `detached-ink` | {n_trigger} | {n_trigger} |" in markdown
    assert "30% pollution (`constant,trigger,ink-fashion`)" in markdown
    true = 100 * report["estimated_contamination"]["true"]
    assert (f"Estimated pollution of the uploads (round 1): 19.8 % [18.9 %, 20.8 %] "
            f"(95 % interval); true {true:.1f} %.") in markdown


def test_estimate_comes_from_the_latest_screening(federation_builder, tmp_path):
    federation = federation_builder(2, 0.3, seed=4)
    log = AuditLog(tmp_path / "audit.jsonl")
    first, second = federation.clients
    for server_round, client in ((1, first), (2, second)):
        zeros = np.zeros(len(client), dtype=int)
        log.write_samples(server_round, 7, client.ids, zeros.astype(float), zeros, 0.5)
        log.write_pool(server_round, len(client), 0, 0.5, {"estimate": 0.1 * server_round,
                                                           "low": 0.0, "high": 0.5,
                                                           "confidence": 0.95})
    estimate = detection_report(federation, tmp_path / "audit.jsonl")["estimated_contamination"]
    assert (estimate["round"], estimate["estimate"], estimate["uploaded"]) == (2, 0.2,
                                                                               len(second))
    assert estimate["true"] == second.polluted.mean()


def test_a_log_without_pool_entries_reports_no_estimate(federation_builder, tmp_path):
    federation = federation_builder(2, 0.3, seed=4)
    log = AuditLog(tmp_path / "audit.jsonl")
    client = federation.clients[0]
    zeros = np.zeros(len(client), dtype=int)
    log.write_samples(1, 7, client.ids, zeros.astype(float), zeros, 0.5)
    report = detection_report(federation, tmp_path / "audit.jsonl")
    assert report["screened"] and report["estimated_contamination"] is None
    assert estimate_line(None) == ("Estimated pollution of the uploads: — (the audit log has no "
                                   "pool entry).")
