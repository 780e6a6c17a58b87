"""Shared fixtures: the real packaged datasets, loaded once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedsieve.shared.data import load_fashion_mnist, load_mnist

REPO = Path(__file__).resolve().parents[1]
#: The official MNIST test split beside the checkout (benchmarks and tests only).
MNIST_TEST_ROOT = REPO.parent / "shared" / "datasets" / "mnist-test"


@pytest.fixture(scope="session")
def mnist_train():
    return load_mnist("train")


@pytest.fixture(scope="session")
def fashion_train():
    return load_fashion_mnist("train")
