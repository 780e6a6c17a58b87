"""Shared fixtures (real packaged data, loaded once per session) and the ``slow`` marker.

Tests marked ``slow`` are the end-to-end runs: a real SuperLink deployment, real
runs in Flower's simulation engine, the quick sweep through Flower, the stress harness. A plain
``pytest`` skips them, so a developer's run stays short; they run when

- ``--run-slow`` is given (everything), or
- ``-m slow`` selects them (only those), or
- the environment variable ``CI`` is set to anything but ``""``, ``0``, ``false`` or ``no``
  (CI services set ``CI=true``; ``.ci/run`` sets it too), so the README's test command
  runs everything in CI.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
import torch

from fedsieve.shared.config import RunSettings
from fedsieve.shared.data.datasets import ImageSet, load_fashion_mnist, load_mnist
from fedsieve.simulations.pollution import Federation, build_federation

REPO = Path(__file__).resolve().parents[1]
#: The official MNIST test split beside the checkout (benchmarks and tests only).
MNIST_TEST_ROOT = REPO.parent / "shared" / "datasets" / "mnist-test"


# -- the slow marker ------------------------------------------------------------------------
def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--run-slow", action="store_true", default=False,
                     help="also run the tests marked slow (end-to-end runs; CI runs them)")


def _runs_slow(config: pytest.Config) -> bool:
    if config.getoption("--run-slow"):
        return True
    if os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no"):
        return True
    # A marker expression that names "slow" (-m slow, -m "slow and not ...") decides itself.
    return "slow" in (config.getoption("markexpr") or "")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if _runs_slow(config):
        return
    skip = pytest.mark.skip(reason="slow: run with --run-slow, -m slow or CI=true")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


# -- global state: every test starts from the session's -------------------------------------
class TorchState(NamedTuple):
    """The process-wide torch settings a test can change and a later test would inherit."""

    threads: int
    default_dtype: torch.dtype
    grad_enabled: bool
    deterministic: bool
    rng: torch.Tensor

    @classmethod
    def capture(cls) -> TorchState:
        return cls(torch.get_num_threads(), torch.get_default_dtype(), torch.is_grad_enabled(),
                   torch.are_deterministic_algorithms_enabled(), torch.get_rng_state())

    def restore(self) -> None:
        torch.set_num_threads(self.threads)
        torch.set_default_dtype(self.default_dtype)
        torch.set_grad_enabled(self.grad_enabled)
        torch.use_deterministic_algorithms(self.deterministic)
        torch.set_rng_state(self.rng)


@pytest.fixture(autouse=True)
def _isolated_torch_state():
    """Restore torch's thread count, default dtype, grad mode, determinism flag and global RNG
    after every test, so that no test's outcome depends on which tests ran before it (a test
    that left torch on one thread once changed a later test's verdicts: issue 34)."""
    state = TorchState.capture()
    yield
    state.restore()


@pytest.fixture(scope="module")
def one_torch_thread():
    """Torch on one thread for a module's tests (small networks train faster so, and the
    module's figures do not depend on the machine's core count); restored afterwards.

    Use as ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# -- datasets -------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def mnist_train() -> ImageSet:
    return load_mnist("train")


@pytest.fixture(scope="session")
def fashion_train() -> ImageSet:
    return load_fashion_mnist("train")


@pytest.fixture(scope="session")
def mnist_test() -> ImageSet:
    return load_mnist("test")


@pytest.fixture(scope="session")
def fashion_test() -> ImageSet:
    return load_fashion_mnist("test")


# -- federations ----------------------------------------------------------------------------
@pytest.fixture(scope="session")
def federation_builder(mnist_train, fashion_train) -> Callable[..., Federation]:
    """``build_federation`` on the session's datasets (same arguments, no reloading)."""
    def build(*args, **kwargs) -> Federation:
        return build_federation(*args, mnist=mnist_train, fashion=fashion_train, **kwargs)
    return build


def _freeze(federation: Federation) -> Federation:
    """Make a shared federation's arrays read-only: a test that writes into one fails loudly."""
    for part in (*federation.clients, federation.trusted_set):
        for array in vars(part).values():
            if isinstance(array, np.ndarray):
                array.flags.writeable = False
    return federation


@pytest.fixture(scope="session")
def small_federation(federation_builder) -> Federation:
    """4 clients, 20 % Fashion-MNIST with random labels, seed 1 (read-only, shared)."""
    return _freeze(federation_builder(4, 0.2, seed=1))


@pytest.fixture(scope="session")
def compact_federation(mnist_train, fashion_train) -> Federation:
    """4 clients of about 375 samples (20 % Fashion-MNIST with random labels, seed 1),
    partitioned from the first 1,200 MNIST training digits: a screening round over it trains
    and scores in a fraction of ``small_federation``'s time (read-only, shared)."""
    mnist = mnist_train._replace(images=mnist_train.images[:1200],
                                 labels=mnist_train.labels[:1200])
    return _freeze(build_federation(4, 0.2, seed=1, mnist=mnist, fashion=fashion_train))


@pytest.fixture(scope="session")
def compact_federation_files(compact_federation, tmp_path_factory) -> list[Path]:
    """``compact_federation``'s clients as the ``.npz`` files (x, y, ids; no ground truth) a
    SuperNode's ``data-path`` names, one per client in order."""
    folder = tmp_path_factory.mktemp("compact-federation")
    paths = []
    for i, client in enumerate(compact_federation.clients):
        paths.append(folder / f"client_{i}.npz")
        np.savez(paths[-1], **client.public_arrays())
    return paths


@pytest.fixture(scope="session")
def small_settings() -> RunSettings:
    """Example-app settings of a 4-client federation like ``small_federation``, with one
    local epoch (clients given a ``data-path`` read it instead of rebuilding their partition)."""
    return RunSettings().replace(num_clients=4, contamination=0.2, seed=1, local_epochs=1)


# -- detector data --------------------------------------------------------------------------
class DetectorData(NamedTuple):
    """A small polluted pool with its ground truth, trusted images and a labelled test set."""

    x: np.ndarray  #: 400 MNIST training digits, then 100 Fashion-MNIST images (uint8)
    y: np.ndarray  #: 1 = Fashion-MNIST (the pollution)
    trusted: np.ndarray  #: 10 MNIST training digits outside the pool
    x_test: np.ndarray  #: 300 MNIST test digits, then 300 Fashion-MNIST test images
    y_test: np.ndarray  #: 1 = Fashion-MNIST


@pytest.fixture(scope="session")
def detector_data(mnist_train, fashion_train, mnist_test, fashion_test) -> DetectorData:
    """Small pools for detector tests (read-only, shared by the whole session)."""
    rng = np.random.default_rng(0)
    fashion = fashion_train.images
    data = DetectorData(
        x=np.concatenate([mnist_train.images[:400],
                          fashion[rng.choice(len(fashion), 100, replace=False)]]),
        y=np.r_[np.zeros(400), np.ones(100)].astype(int),
        trusted=mnist_train.images[1000:1010].copy(),
        x_test=np.concatenate([mnist_test.images[:300], fashion_test.images[:300]]),
        y_test=np.r_[np.zeros(300), np.ones(300)].astype(int),
    )
    for array in data:
        array.flags.writeable = False
    return data
