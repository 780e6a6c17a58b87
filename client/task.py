"""The example task's local data: which samples this simulated or deployed client holds.

A deployed SuperNode points ``node-config`` at its own file (``data-path=".../client.npz"``
with ``x``, ``y``, ``ids``, e.g. written by ``fedsieve pollute``). A simulated node loads
``client_<partition-id>.npz`` from ``federation-dir`` when the run sets it (``fedsieve
simulate`` does), and otherwise rebuilds its partition of the polluted example federation from
the run settings, the way Flower examples load their partition from flwr-datasets; only the
public arrays (no ground truth) are kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from flwr.app import Context

from fedsieve.shared.config import RunSettings


@dataclass(frozen=True)
class LocalData:
    """A client's samples as the client knows them: images, labels, ids."""

    x: np.ndarray
    y: np.ndarray
    ids: np.ndarray


def load_local_data(context: Context, settings: RunSettings) -> LocalData:
    """This node's data: ``node_config["data-path"]`` if set, else its simulated partition."""
    path = context.node_config.get("data-path")
    if path:
        return _from_file(str(path))
    partition = int(context.node_config.get("partition-id", 0))
    harness = settings.harness
    if harness.federation_dir:
        return _from_file(str(Path(harness.federation_dir) / f"client_{partition}.npz"))
    # Flower's simulation engine says how many partitions there are: it wins over the setting.
    num_clients = int(context.node_config.get("num-partitions", harness.num_clients))
    return _simulated(settings.replace(num_clients=num_clients), partition)


@lru_cache(maxsize=4)
def _from_file(path: str) -> LocalData:
    if not Path(path).is_file():
        raise FileNotFoundError(f"node data file {path} does not exist; set the SuperNode's "
                                "--node-config data-path to an .npz with x, y, ids")
    with np.load(path, allow_pickle=False) as npz:
        return LocalData(npz["x"], npz["y"].astype(np.int64), npz["ids"].astype(np.int64))


@lru_cache(maxsize=4)
def _federation(settings: RunSettings):
    # The example federation comes from the simulation harness; imported lazily so that a
    # deployed client that brings its own file never needs it.
    from fedsieve.simulations.pollution import federation_for

    return federation_for(settings)


def _simulated(settings: RunSettings, partition: int) -> LocalData:
    clients = _federation(settings).clients
    if not 0 <= partition < len(clients):
        raise ValueError(f"partition-id {partition} is outside the {len(clients)} simulated "
                         "clients; set num-clients to the number of SuperNodes")
    arrays = clients[partition].public_arrays()
    return LocalData(arrays["x"], arrays["y"], arrays["ids"])
