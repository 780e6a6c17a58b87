"""Measuring what poisoning does to the global model: attack success of a backdoor.

A backdoor federation (``pollution="trigger..."``, ``label_policy="target:d"``) teaches the
model to answer ``d`` whenever the trigger is present. Its *attack success rate* is the share
of triggered test digits of every other class that the global model predicts as ``d``
(BadNets; Gu et al. 2017). Clean accuracy alone cannot see a backdoor: a model can keep it
and still score well on clean digits.

The harness knows the trigger and the target; the ServerApp does not. :func:`backdoor_probe`
hands the ServerApp a ready metric (``fedsieve simulate`` passes it to
:func:`fedsieve.server.app.make_server_app`), so the library never reads harness settings.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from torch import nn

from fedsieve.server.app import ModelProbe
from fedsieve.shared.config import RunSettings
from fedsieve.shared.data.datasets import load_mnist
from fedsieve.shared.task.classifier import predict
from fedsieve.simulations.pollution import parse_label_policy
from fedsieve.simulations.zoo import Trigger, parse_pollution

#: Seed of the trigger positions stamped on the test digits (random-position triggers only).
PROBE_SEED = 7

@dataclass(frozen=True)
class Backdoor:
    """A backdoor attack: the trigger stamped on the attackers' digits and the target class."""

    trigger: Trigger
    target: int

    def test_set(self, images: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """The test digits of every class but the target, with the trigger stamped on
        (seeded, so every run and every defense sees the same images)."""
        keep = np.asarray(labels) != self.target
        return self.trigger.apply(np.asarray(images)[keep], np.random.default_rng(PROBE_SEED))


def backdoor_of(pollution: str, label_policy: str) -> Backdoor | None:
    """The backdoor a federation's settings describe: its pollution holds a trigger kind and
    its label policy is ``target``; None otherwise (the first trigger kind of a mix counts)."""
    policy, target = parse_label_policy(label_policy)
    trigger = next((k for k in parse_pollution(pollution).leaves() if isinstance(k, Trigger)),
                   None)
    if policy != "target" or trigger is None:
        return None
    return Backdoor(trigger, target)


def attack_success(model: nn.Module, triggered: np.ndarray, target: int) -> float:
    """Share of ``triggered`` images (none of class ``target``) that ``model`` predicts as
    ``target``; NaN when there are none."""
    if len(triggered) == 0:
        return float("nan")
    return float(np.mean(predict(model, triggered) == target))


def backdoor_probe(settings: RunSettings) -> ModelProbe | None:
    """The ServerApp's extra metric for a backdoor federation: ``{"attack-success": rate}``
    on the test split the ServerApp evaluates on; None when the settings hold no backdoor."""
    harness = settings.harness
    backdoor = backdoor_of(harness.pollution, harness.label_policy)
    if backdoor is None:
        return None
    test = load_mnist("test", root=settings.task.data_root or None)
    triggered = backdoor.test_set(test.images, test.labels)

    def probe(model: nn.Module) -> dict[str, float]:
        return {"attack-success": attack_success(model, triggered, backdoor.target)}

    return probe


__all__ = ["Backdoor", "attack_success", "backdoor_of", "backdoor_probe"]
