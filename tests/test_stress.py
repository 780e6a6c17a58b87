"""The stress harness on a small scale: every fault at once, no verdict lost."""

from __future__ import annotations

import pytest

from fedsieve.simulations.faults import FAULT_NAMES
from fedsieve.simulations.stress import scaled_clients, screening_stress, stress_settings


def test_scaled_clients_repeat_with_fresh_ids():
    settings = stress_settings(num_clients=4)
    clients, repeat = scaled_clients(settings, 20_000)
    assert repeat > 1
    ids = [i for c in clients for i in c["ids"].tolist()]
    assert len(ids) == len(set(ids)) >= 20_000
    assert all(len(c["x"]) == len(c["y"]) == len(c["ids"]) == len(c["polluted"])
               for c in clients)


@pytest.mark.slow
def test_every_fault_survived_and_no_verdict_lost(tmp_path):
    settings = stress_settings(num_clients=len(FAULT_NAMES) + 4, detector="iforest")
    result = screening_stress(settings, images=8_000, work=tmp_path, say=lambda m: None)
    assert result["faults_injected"] == len(FAULT_NAMES)
    assert result["faults"] == {fault: True for fault in FAULT_NAMES}
    assert result["wrongly_excluded"] == [] and result["aggregated"]
    assert result["lost_verdicts"] == 0
    # Every client that passed screening uploaded everything it holds (upload fraction 1).
    upload_faults = [f for f in FAULT_NAMES if not f.startswith("train") and f != "over-report"]
    assert result["screened_clients"] == settings.harness.num_clients - len(upload_faults)
    assert result["uploaded"] == result["held_by_screened_clients"]
    assert result["pollution_dropped"] > 0.5 and result["normal_dropped"] < 0.2
