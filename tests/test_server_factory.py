"""The operator's strategy factory and the example ServerApp's trusted images."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from flwr.serverapp.strategy import Bulyan, FedAvg, Krum, MultiKrum

from fedsieve.server import AnomalyFilter
from fedsieve.server.app import example_trusted_images
from fedsieve.server.factory import (
    build_detector,
    build_strategy,
    describe_strategy,
    load_trusted_images,
    make_aggregator,
)
from fedsieve.shared.config import AGGREGATORS, FilterSettings, RunSettings
from fedsieve.shared.data.trusted import TrustedFileError, draw_trusted_indices, save_trusted_file


@pytest.fixture
def trusted_file(tmp_path, mnist_train):
    return save_trusted_file(tmp_path / "trusted.npz", mnist_train.images[:8],
                             mnist_train.labels[:8])


def test_operator_build_without_a_trusted_file_says_what_to_set(tmp_path):
    settings = FilterSettings(detector="iforest")
    with pytest.raises(TrustedFileError) as failed:
        build_strategy(settings, 3, tmp_path)
    message = str(failed.value)
    for hint in ("trusted-file", "save_trusted_file", "fedsieve pollute", "5-10 normal images"):
        assert hint in message, hint
    assert not (tmp_path / "audit.jsonl").exists()  # nothing was started


def test_operator_build_reads_the_trusted_file(tmp_path, trusted_file, mnist_train):
    settings = FilterSettings(detector="iforest", trusted_file=str(trusted_file))
    strategy = build_strategy(settings, 3, tmp_path)
    assert isinstance(strategy, AnomalyFilter) and isinstance(strategy.strategy, FedAvg)
    np.testing.assert_array_equal(strategy.screening.trusted_images,
                                  mnist_train.images[:8, None])
    np.testing.assert_array_equal(load_trusted_images(settings), mnist_train.images[:8, None])


def test_no_filter_needs_no_trusted_images(tmp_path):
    strategy = build_strategy(FilterSettings(aggregator="krum", detector="none"), 5, tmp_path)
    assert describe_strategy(strategy) == {"aggregator": "Krum", "filter": "", "detector": ""}


def test_every_aggregator_name_builds_and_an_unknown_one_is_an_error():
    built = {name: type(make_aggregator(name, 5)).__name__ for name in AGGREGATORS}
    assert built == {"fedavg": "FedAvg", "fedmedian": "FedMedian", "krum": "Krum",
                     "multikrum": "MultiKrum", "trimmedavg": "FedTrimmedAvg",
                     "bulyan": "Bulyan"}
    with pytest.raises(ValueError, match="unknown aggregator 'fedavgg'; choose one of fedavg"):
        make_aggregator("fedavgg")
    with pytest.raises(ValueError, match="aggregator must be one of"):
        FilterSettings.from_run_config({"aggregator": "fedavgg"})
    for name in ("multikrum", "bulyan"):
        assert FilterSettings.from_run_config({"aggregator": name}).aggregator == name


@pytest.mark.parametrize("num_nodes", [1, 2, 3, 4, 5, 7, 10, 11, 20])
def test_byzantine_aggregators_assume_the_most_malicious_nodes_their_rule_allows(num_nodes):
    krum, multikrum, bulyan = (make_aggregator(name, num_nodes)
                               for name in ("krum", "multikrum", "bulyan"))
    assert (type(krum), type(multikrum), type(bulyan)) == (Krum, MultiKrum, Bulyan)
    krum_f = max(0, (num_nodes - 3) // 2)
    assert krum.num_malicious_nodes == multikrum.num_malicious_nodes == krum_f
    assert krum.num_nodes_to_select == 1
    assert multikrum.num_nodes_to_select == max(1, num_nodes - krum_f)
    assert bulyan.num_malicious_nodes == max(0, (num_nodes - 3) // 4)
    # Each f is the largest its rule tolerates: Krum needs n > 2f + 2, Bulyan n >= 4f + 3.
    if num_nodes >= 3:
        assert 2 * krum_f + 2 < num_nodes <= 2 * (krum_f + 1) + 2
        bulyan_f = bulyan.num_malicious_nodes
        assert 4 * bulyan_f + 3 <= num_nodes < 4 * (bulyan_f + 1) + 3
    for strategy in (krum, multikrum, bulyan):
        assert strategy.min_available_nodes == num_nodes
        assert strategy.min_train_nodes == min(2, num_nodes)


def test_detector_comes_from_the_registry_with_the_settings():
    detector = build_detector(FilterSettings(detector="rtbigan", alpha=0.7, seed=3,
                                             threshold_policy="trusted-quantile"))
    params = detector.get_params()
    assert (type(detector).__name__, params["alpha"], params["random_state"],
            params["threshold_policy"], params["meta_checkpoint"]) == (
        "RtBiGAN", 0.7, 3, "trusted-quantile", "default")
    with pytest.raises(ValueError, match="rtbigan"):
        build_detector(FilterSettings(detector="magic"))


def test_example_app_draws_digits_without_a_trusted_file_and_says_so(caplog, mnist_train):
    settings = RunSettings().replace(trusted_size=6, seed=4)
    with caplog.at_level(logging.WARNING, logger="flwr"):
        images = example_trusted_images(settings)
    expected = mnist_train.images[draw_trusted_indices(mnist_train.labels, 6, 4)]
    np.testing.assert_array_equal(images, expected)
    warning = next(r for r in caplog.records if r.levelno == logging.WARNING)
    assert "no trusted-file" in warning.getMessage()
    assert "6 mnist training images drawn with seed 4" in warning.getMessage()


def test_example_app_uses_the_trusted_file_when_set(caplog, trusted_file, mnist_train):
    settings = RunSettings().replace(trusted_file=str(trusted_file))
    with caplog.at_level(logging.WARNING, logger="flwr"):
        images = example_trusted_images(settings)
    np.testing.assert_array_equal(images, mnist_train.images[:8, None])
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert example_trusted_images(RunSettings().replace(detector="none")) is None
