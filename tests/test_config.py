"""Run settings: three parts with one job each, read from the flat run config."""

from __future__ import annotations

import dataclasses

import pytest

from fedsieve.shared.config import FilterSettings, HarnessSettings, RunSettings, TaskSettings


def test_parts_split_the_flat_run_config_without_overlap():
    keys = [set(part().to_run_config()) for part in (FilterSettings, TaskSettings,
                                                     HarnessSettings)]
    assert not (keys[0] & keys[1] or keys[0] & keys[2] or keys[1] & keys[2])
    assert set(RunSettings().to_run_config()) == keys[0] | keys[1] | keys[2]
    # What an operator deploys carries none of the harness's fields.
    assert not {"num-clients", "contamination", "partition", "federation-dir"} & keys[0]
    assert {"trusted-file", "detector", "aggregator", "seed"} <= keys[0]
    assert "trusted-size" in keys[2]


def test_from_run_config_reads_every_part_and_checks_types():
    config = {"num-clients": 4, "trusted-file": "/srv/t.npz", "local-epochs": 1, "alpha": 1,
              "unrelated": "ignored"}
    settings = RunSettings.from_run_config(config)
    assert (settings.harness.num_clients, settings.filter.trusted_file,
            settings.task.local_epochs, settings.filter.alpha) == (4, "/srv/t.npz", 1, 1.0)
    assert FilterSettings.from_run_config(config) == settings.filter
    assert RunSettings.from_run_config(settings.to_run_config()) == settings
    with pytest.raises(ValueError, match="'num-clients' must be int"):
        RunSettings.from_run_config({"num-clients": "4"})
    with pytest.raises(ValueError, match="device must be 'auto' or one of"):
        RunSettings.from_run_config({"device": "gpu"})
    # The screening's options are checked by the object built from them (test_screening_modes).
    assert RunSettings.from_run_config({"upload-fraction": 0.0}).filter.upload_fraction == 0.0


def test_replace_routes_flat_names_to_their_part():
    base = RunSettings()
    changed = base.replace(num_clients=3, seed=7, local_epochs=1, detector="iforest")
    assert (changed.harness.num_clients, changed.seed, changed.filter.seed,
            changed.task.local_epochs, changed.filter.detector) == (3, 7, 7, 1, "iforest")
    assert base == RunSettings()  # frozen: a copy, not an update
    assert changed.task == dataclasses.replace(base.task, local_epochs=1)
    with pytest.raises(TypeError, match="'num_client' is not a run setting"):
        base.replace(num_client=3)
    hash(changed)  # usable as a cache key
