"""Backdoor and label-flip poisoning: profiles, label policies, the backdoor recipe, attack
success, the classifier's per-class metrics and the composed defenses (no Flower runs)."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from torch import nn

from fedsieve.shared.config import AGGREGATORS, RunSettings
from fedsieve.shared.detectors import DETECTORS
from fedsieve.shared.task.classifier import DigitNet, class_accuracy, predict
from fedsieve.simulations.poisoning import Backdoor, attack_success, backdoor_of
from fedsieve.simulations.pollution import (
    DEFAULT_ATTACKERS,
    DEFAULT_LABEL_MAP,
    DEFAULT_TARGET,
    client_rates,
    parse_label_policy,
    parse_profile,
)
from fedsieve.simulations.simulate import DEFENSES, parse_defense, settings_for_defense
from fedsieve.simulations.zoo import Trigger

NUM_CLIENTS = 5
ATTACKERS = 2
RATE = 0.2
#: The default trigger (size 3, bottom-right, margin 1): rows and columns 24..26.
PATCH = (slice(24, 27), slice(24, 27))


def patch_mask() -> np.ndarray:
    mask = np.zeros((28, 28), bool)
    mask[PATCH] = True
    return mask


# -- profiles, label policies, rates ----------------------------------------------------------
@pytest.mark.parametrize("spec, expected", [
    ("attackers:3", ("attackers", 3)),
    ("attackers:1", ("attackers", 1)),
    ("attackers", ("attackers", DEFAULT_ATTACKERS)),
    ("uniform", ("uniform", -1)),
    ("skewed", ("skewed", -1)),
])
def test_parse_profile(spec, expected):
    assert parse_profile(spec) == expected


@pytest.mark.parametrize("spec", ["attackers:0", "attackers:-2", "attackers:x", "attackers:1.5",
                                  "attackers:", "uniform:2", "skewed:1", "magic", "magic:3", ""])
def test_parse_profile_rejects_bad_values_and_names_them(spec):
    with pytest.raises(ValueError, match=re.escape(repr(spec))):
        parse_profile(spec)


@pytest.mark.parametrize("spec, expected", [
    ("target:7", ("target", 7)),
    ("target:0", ("target", 0)),
    ("target:9", ("target", 9)),
    ("target", ("target", DEFAULT_TARGET)),
    ("random", ("random", -1)),
    ("mapped", ("mapped", -1)),
    ("original", ("original", -1)),
])
def test_parse_label_policy(spec, expected):
    assert parse_label_policy(spec) == expected


@pytest.mark.parametrize("spec", ["target:10", "target:-1", "target:x", "random:1", "mapped:3",
                                  "flip", "flip:2"])
def test_parse_label_policy_rejects_bad_values_and_names_them(spec):
    with pytest.raises(ValueError, match=re.escape(repr(spec))):
        parse_label_policy(spec)


def test_attacker_rates_pollute_the_first_clients_only():
    rates = client_rates("attackers:3", 10, 0.2)
    assert rates == [0.2] * 3 + [0.0] * 7
    assert client_rates("attackers", 10, 0.4) == (
        [0.4] * DEFAULT_ATTACKERS + [0.0] * (10 - DEFAULT_ATTACKERS))
    assert client_rates("attackers:4", 4, 0.3) == [0.3] * 4  # every client may attack
    with pytest.raises(ValueError, match="11 attackers among 10 clients"):
        client_rates("attackers:11", 10, 0.2)
    with pytest.raises(ValueError, match=re.escape("'attackers:0'")):
        client_rates("attackers:0", 10, 0.2)


# -- the backdoor recipe ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def backdoor_federation(federation_builder):
    return federation_builder(num_clients=NUM_CLIENTS, contamination=RATE,
                              profile=f"attackers:{ATTACKERS}", label_policy="target:0",
                              pollution="trigger:size=3", seed=5)


def test_only_the_attackers_hold_poison_at_their_rate(backdoor_federation):
    clients = backdoor_federation.clients
    assert len(clients) == NUM_CLIENTS
    for client in clients[:ATTACKERS]:
        assert client.polluted.any()
        assert abs(client.polluted.sum() - RATE * len(client)) <= 1, client.client_id
    for client in clients[ATTACKERS:]:
        assert not client.polluted.any(), client.client_id
        assert set(client.kinds.tolist()) == {""}


def test_backdoor_samples_carry_the_trigger_and_the_target_label(backdoor_federation,
                                                                 mnist_train):
    mask = patch_mask()
    for client in backdoor_federation.clients[:ATTACKERS]:
        poison = client.polluted
        assert set(client.kinds[poison].tolist()) == {"trigger"}
        assert set(client.kinds[~poison].tolist()) == {""}
        np.testing.assert_array_equal(client.y[poison], 0)
        x, origin = client.x[poison], client.origin[poison]
        assert (x[:, mask] == 255).all()
        # Outside the patch each one is a digit of this very client (its normal partition).
        assert set(origin.tolist()) <= set(client.origin[~poison].tolist())
        np.testing.assert_array_equal(x[:, ~mask], mnist_train.images[origin][:, ~mask])
        np.testing.assert_array_equal(client.source_labels[poison], mnist_train.labels[origin])
        # Digits of every class were poisoned, not only the target's.
        assert len(np.unique(mnist_train.labels[origin])) > 5


def test_normal_samples_keep_their_images_and_labels(backdoor_federation, mnist_train):
    for client in backdoor_federation.clients:
        normal = ~client.polluted
        origin = client.origin[normal]
        np.testing.assert_array_equal(client.x[normal], mnist_train.images[origin])
        np.testing.assert_array_equal(client.y[normal], mnist_train.labels[origin])
        assert len(np.unique(client.y[normal])) == 10


def test_dirichlet_partition_is_more_label_skewed_than_iid(federation_builder):
    def mean_max_share(federation) -> float:
        return float(np.mean([np.bincount(c.y, minlength=10).max() / len(c)
                              for c in federation.clients]))

    iid = federation_builder(NUM_CLIENTS, 0.0, partition="iid", seed=5)
    skewed = federation_builder(NUM_CLIENTS, RATE, partition="dirichlet", alpha=0.1,
                                profile=f"attackers:{ATTACKERS}", label_policy="target:0",
                                pollution="trigger:size=3", seed=5)
    assert all(len(c) > 0 for c in skewed.clients)
    assert all(c.polluted.any() for c in skewed.clients[:ATTACKERS])
    assert not any(c.polluted.any() for c in skewed.clients[ATTACKERS:])
    assert mean_max_share(skewed) > mean_max_share(iid) + 0.1


# -- label flips ------------------------------------------------------------------------------
def test_default_label_map_is_a_derangement():
    assert sorted(DEFAULT_LABEL_MAP) == list(range(10))
    assert all(DEFAULT_LABEL_MAP[d] != d for d in range(10))


def test_relabelled_digits_are_unchanged_copies_with_mapped_labels(federation_builder,
                                                                     mnist_train):
    federation = federation_builder(4, RATE, pollution="relabelled", label_policy="mapped",
                                    seed=2)
    label_map = np.asarray(DEFAULT_LABEL_MAP)
    for client in federation.clients:
        poison = client.polluted
        assert poison.any()
        assert set(client.kinds[poison].tolist()) == {"relabelled"}
        origin = client.origin[poison]
        assert set(origin.tolist()) <= set(client.origin[~poison].tolist())
        np.testing.assert_array_equal(client.x[poison], mnist_train.images[origin])
        digits = mnist_train.labels[origin]
        np.testing.assert_array_equal(client.source_labels[poison], digits)
        np.testing.assert_array_equal(client.y[poison], label_map[digits])
        assert (client.y[poison] != digits).all()


# -- the backdoor of a federation's settings ------------------------------------------------
@pytest.mark.parametrize("pollution, policy", [
    ("trigger", "random"), ("trigger", "mapped"), ("trigger:size=4", "original"),
    ("fashion", "target:3"), ("relabelled", "target"), ("fashion,black", "target:1"),
])
def test_no_backdoor_without_a_trigger_and_a_target(pollution, policy):
    assert backdoor_of(pollution, policy) is None


def test_backdoor_of_finds_the_trigger_and_the_target():
    assert backdoor_of("trigger", "target") == Backdoor(Trigger(), DEFAULT_TARGET)
    assert backdoor_of("trigger:size=3", "target:7") == Backdoor(Trigger(size=3), 7)
    mixed = backdoor_of("fashion,trigger:size=4", "target:2")
    assert mixed == Backdoor(Trigger(size=4), 2)
    first = backdoor_of("black,trigger:size=5:position=top-left,trigger:size=2", "target:9")
    assert first == Backdoor(Trigger(size=5, position="top-left"), 9)
    with pytest.raises(ValueError, match=re.escape("'target:12'")):
        backdoor_of("trigger", "target:12")


def test_backdoor_test_set_drops_the_target_class_and_stamps_the_trigger(mnist_train):
    images, labels = mnist_train.images[::13], mnist_train.labels[::13]  # sorted by class
    target = 4
    assert (labels == target).any() and len(np.unique(labels)) == 10
    triggered = Backdoor(Trigger(), target).test_set(images, labels)
    kept = images[labels != target]
    assert triggered.shape == kept.shape and triggered.dtype == np.uint8
    mask = patch_mask()
    assert (triggered[:, mask] == 255).all()
    np.testing.assert_array_equal(triggered[:, ~mask], kept[:, ~mask])
    np.testing.assert_array_equal(images, mnist_train.images[::13])  # inputs untouched


# -- attack success ---------------------------------------------------------------------------
def constant_net(label: int) -> DigitNet:
    """A DigitNet that answers ``label`` whatever it sees."""
    net = DigitNet()
    with torch.no_grad():
        net.fc2.weight.zero_()
        net.fc2.bias.zero_()
        net.fc2.bias[label] = 1.0
    return net


class CornerNet(nn.Module):
    """Answers ``target`` when the bottom-right trigger patch is bright, ``other`` otherwise."""

    def __init__(self, target: int, other: int) -> None:
        super().__init__()
        self.target, self.other = target, other

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.shape[1:] == (1, 28, 28)
        bright = x[:, 0, PATCH[0], PATCH[1]].mean((1, 2)) > 0.5
        logits = torch.zeros(len(x), 10)
        logits[bright, self.target] = 1.0
        logits[~bright, self.other] = 1.0
        return logits


@pytest.fixture(scope="module")
def clean_and_triggered(mnist_train):
    target = 0
    images, labels = mnist_train.images[::10], mnist_train.labels[::10]  # sorted by class
    assert len(np.unique(labels)) == 10
    clean = images[labels != target]
    return target, clean, Backdoor(Trigger(), target).test_set(images, labels)


def test_attack_success_of_a_model_that_always_answers_one_class(clean_and_triggered):
    _, clean, triggered = clean_and_triggered
    for t in (0, 6):
        net = constant_net(t)
        assert attack_success(net, triggered, t) == 1.0
        assert attack_success(net, triggered, (t + 1) % 10) == 0.0
        assert attack_success(net, clean, t) == 1.0  # no trigger needed for this one


def test_attack_success_of_a_backdoored_model(clean_and_triggered):
    target, clean, triggered = clean_and_triggered
    assert (clean[:, PATCH[0], PATCH[1]].mean((1, 2)) < 128).all()  # the corner is dark
    net = CornerNet(target, other=3)
    assert attack_success(net, triggered, target) == 1.0
    assert attack_success(net, clean, target) == 0.0
    half = np.concatenate([triggered[:50], clean[:150]])
    assert attack_success(net, half, target) == pytest.approx(0.25)
    assert np.isnan(attack_success(net, triggered[:0], target))


# -- the classifier's predictions and per-class accuracy ---------------------------------------
def test_predict_returns_int_classes_in_order_across_batches(clean_and_triggered):
    target, clean, triggered = clean_and_triggered
    net = CornerNet(target=8, other=2)
    images = np.concatenate([clean[:5], triggered[:4], clean[5:7]])
    expected = np.r_[np.full(5, 2), np.full(4, 8), np.full(2, 2)]
    for batch_size in (1, 3, 1000):
        predicted = predict(net, images, batch_size=batch_size)
        assert predicted.dtype == np.int64
        np.testing.assert_array_equal(predicted, expected)
    # float32 images in [0, 1] are taken as they are (not scaled again).
    floats = images.astype(np.float32) / 255
    np.testing.assert_array_equal(predict(net, floats), expected)
    empty = predict(net, images[:0])
    assert empty.dtype == np.int64 and empty.shape == (0,)


def test_class_accuracy_per_class_with_nan_for_absent_classes():
    labels = np.array([0, 1, 1, 2, 2, 3, 3, 3])
    predicted = np.array([0, 0, 1, 2, 2, 3, 0, 1])
    accuracy = class_accuracy(predicted, labels)
    assert accuracy.shape == (10,)
    np.testing.assert_allclose(accuracy[:4], [1.0, 0.5, 1.0, 1 / 3])
    assert np.isnan(accuracy[4:]).all()
    # Per class, not overall: a perfect class and a hopeless one.
    np.testing.assert_array_equal(class_accuracy([5, 5, 5], [5, 5, 7])[[5, 7]], [1.0, 0.0])
    assert class_accuracy(labels, labels, num_classes=4).tolist() == [1.0] * 4
    assert np.isnan(class_accuracy(np.empty(0, np.int64), np.empty(0, np.int64))).all()


# -- defenses ---------------------------------------------------------------------------------
@pytest.mark.parametrize("defense, expected", [
    ("none", ("fedavg", "none")),
    ("rtbigan", ("fedavg", "rtbigan")),
    ("iforest", ("fedavg", "iforest")),
    ("krum", ("krum", "none")),
    ("multikrum", ("multikrum", "none")),
    ("bulyan", ("bulyan", "none")),
    ("fedmedian", ("fedmedian", "none")),
    ("rtbigan+fedmedian", ("fedmedian", "rtbigan")),
    ("iforest+bulyan", ("bulyan", "iforest")),
    ("deepsvdd+multikrum", ("multikrum", "deepsvdd")),
    ("egbad+fedavg", ("fedavg", "egbad")),
])
def test_parse_defense(defense, expected):
    assert parse_defense(defense) == expected


@pytest.mark.parametrize("defense", ["fedmedian+krum", "none+krum", "rtbigan+magic",
                                     "rtbigan+", "+fedmedian", "rtbigan+iforest", "magic",
                                     "rtbigan+fedmedian+krum"])
def test_parse_defense_rejects_unknown_names(defense):
    with pytest.raises(ValueError, match=re.escape(f"unknown defense {defense!r}")) as failed:
        parse_defense(defense)
    assert "rtbigan+fedmedian" in str(failed.value)  # the composed form is explained


def test_every_named_defense_and_settings_for_it():
    base = RunSettings().replace(seed=11, num_clients=7)
    for name in DEFENSES:
        aggregator, detector = parse_defense(name)
        settings = settings_for_defense(base, name)
        assert (settings.filter.aggregator, settings.filter.detector) == (aggregator, detector)
    # Every detector of the registry composes with every aggregator; every robust
    # aggregator is a named defense on its own.
    for detector in DETECTORS:
        assert parse_defense(detector) == ("fedavg", detector)
        for aggregator in AGGREGATORS:
            assert parse_defense(f"{detector}+{aggregator}") == (aggregator, detector)
    for aggregator in set(AGGREGATORS) - {"fedavg"}:
        assert parse_defense(aggregator) == (aggregator, "none")
    composed = settings_for_defense(base, "iforest+bulyan")
    assert (composed.filter.aggregator, composed.filter.detector) == ("bulyan", "iforest")
    assert composed.seed == 11 and composed.harness.num_clients == 7
    assert (base.filter.aggregator, base.filter.detector) == (
        RunSettings().filter.aggregator, RunSettings().filter.detector)  # base unchanged
    with pytest.raises(ValueError, match="unknown defense"):
        settings_for_defense(base, "fedmedian+krum")
