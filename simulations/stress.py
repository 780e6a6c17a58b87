"""Stress harness: one screening round of the real AnomalyFilter over many clients and a large
pool, with injected faults, checked for lost verdicts.

The pool is the real polluted example federation (MNIST + Fashion-MNIST) scaled up by
repetition: every client's samples are repeated ``repeat`` times under fresh ids. Each client is
the example ClientApp reading its own ``.npz`` (the deployed-client path); the first clients are
replaced by :func:`~fedsieve.simulations.faults.faulty_client_app`, one fault each. The
server-side AnomalyFilter talks to them through the in-process
:class:`~fedsieve.simulations.loopback.LoopbackGrid`, screens everything, sends verdicts,
trains one round and aggregates. ``benchmarks/stress.py`` runs this in a fresh process to
measure its peak memory.
"""

from __future__ import annotations

import math
import re
import resource
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord

from fedsieve.client.app import make_client_app
from fedsieve.server.audit import read_audit
from fedsieve.server.factory import build_strategy
from fedsieve.shared.config import RunSettings
from fedsieve.shared.task.classifier import DigitNet
from fedsieve.simulations.faults import (
    FAULT_NAMES,
    expected_code,
    expected_reason,
    faulty_client_app,
)
from fedsieve.simulations.loopback import LoopbackGrid
from fedsieve.simulations.pollution import ID_STRIDE, federation_for


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def scaled_clients(settings: RunSettings, images: int) -> tuple[list[dict], int]:
    """The example federation of ``settings`` repeated until it holds about ``images`` samples.

    Returns the clients' arrays (``x``, ``y``, ``ids``, ``polluted``) and the repeat factor.
    """
    federation = federation_for(settings)
    total = sum(len(c) for c in federation.clients)
    repeat = max(1, math.ceil(images / total))
    clients = []
    for c in federation.clients:
        n = len(c) * repeat
        clients.append({"x": np.tile(c.x, (repeat, 1, 1)), "y": np.tile(c.y, repeat),
                        "ids": c.client_id * ID_STRIDE + np.arange(n, dtype=np.int64),
                        "polluted": np.tile(np.asarray(c.polluted, dtype=np.int64), repeat)})
    return clients, repeat


def screening_stress(settings: RunSettings, images: int = 100_000, *,
                     faults: tuple[str, ...] = FAULT_NAMES, work: Path | None = None,
                     say=print) -> dict:
    """Screen ``images`` uploads from ``settings.harness.num_clients`` clients, ``faults``
    injected.

    Parameters
    ----------
    settings : RunSettings
        Federation (clients, contamination, seed), detector and training settings; the
        detector's trusted images are the federation's trusted set.
    images : int
        About how many samples the clients hold in all.
    faults : tuple of str
        One fault per client, given to the first ``len(faults)`` clients.
    work : Path, optional
        Where the clients' ``.npz`` files and the audit log go (a temporary folder if None).
    say : callable
        Progress messages.

    Returns
    -------
    dict
        Sizes, timings, throughput, peak memory, faults injected and survived, and the
        bookkeeping check (``lost``: uploaded ids without exactly one verdict).
    """
    num_clients = settings.harness.num_clients
    if len(faults) > num_clients - 2:
        raise ValueError(f"{len(faults)} faults need more than {num_clients} clients")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        say(f"building {images:,} samples over {num_clients} clients")
        clients, repeat = scaled_clients(settings, images)
        nodes = [1000 + i for i in range(len(clients))]
        configs, truth = {}, {}
        for node, client in zip(nodes, clients):
            path = work / f"client_{node}.npz"
            np.savez(path, x=client["x"], y=client["y"], ids=client["ids"])
            configs[node] = {"data-path": str(path)}
            truth[node] = (client["ids"], client["polluted"])
        del clients  # the clients' data now lives only in their files
        honest = make_client_app(settings)
        apps = {node: honest for node in nodes}
        injected = dict(zip(nodes, faults))
        for node, fault in injected.items():
            ids = truth[node][0]
            path = configs[node]["data-path"]
            apps[node] = faulty_client_app(fault, lambda ctx, p=path, i=ids: (
                np.load(p, allow_pickle=False)["x"], i))
        grid = LoopbackGrid(apps, configs)
        torch.manual_seed(settings.seed)
        strategy = build_strategy(settings.filter, len(nodes), work,
                                  trusted_images=federation_for(settings).trusted_set.images)
        rss_before = peak_rss_mb()

        say("round 1: screening, verdicts, local training, aggregation")
        started = time.perf_counter()
        messages = list(strategy.configure_train(
            1, ArrayRecord(DigitNet().state_dict()), ConfigRecord(), grid))
        screened = time.perf_counter()
        rss_screening = peak_rss_mb()
        arrays, _ = strategy.aggregate_train(1, grid.send_and_receive(messages))
        finished = time.perf_counter()

        record = strategy.history[-1]
        excluded, codes = record["excluded"], record["excluded_codes"]
        # Every sample of every client that passed screening must have exactly one verdict.
        screened_nodes = [n for n in nodes if codes.get(n) != "failed-screening"]
        ids = np.concatenate([truth[n][0] for n in screened_nodes])
        flags = np.concatenate([truth[n][1] for n in screened_nodes])
        entries = [e for e in read_audit(work / "audit.jsonl") if e["kind"] == "sample"]
        verdicts = Counter(e["id"] for e in entries)
        lost = int(sum(verdicts[int(i)] != 1 for i in ids)) + len(set(verdicts) - set(ids.tolist()))
        survived = {fault: codes.get(node) == expected_code(fault)
                    and bool(re.search(expected_reason(fault), excluded[node]))
                    for node, fault in injected.items()}
        wrongly_excluded = sorted(set(excluded) - set(injected))
        dropped = np.fromiter((e["id"] for e in entries if e["verdict"] == 1), np.int64)
        is_dropped = np.isin(ids, dropped)
    return {
        "clients": len(nodes),
        "samples_held": int(sum(len(t[0]) for t in truth.values())),
        "repeat": repeat,
        "uploaded": int(record["uploaded"]),
        "held_by_screened_clients": int(len(ids)),
        "screened_clients": len(screened_nodes),
        "upload_seconds": record["upload_seconds"],
        "detector_seconds": record["detector_seconds"],
        "screening_seconds": screened - started,
        "uploads_screened_per_second": record["uploaded"] / (screened - started),
        "round_seconds": finished - started,
        "peak_rss_mb_before_round": rss_before,
        "peak_rss_mb_after_screening": rss_screening,
        "peak_rss_mb": peak_rss_mb(),
        "faults_injected": len(injected),
        "faults_survived": sum(survived.values()),
        "faults": survived,
        "wrongly_excluded": wrongly_excluded,
        "aggregated": arrays is not None,
        "lost_verdicts": lost,
        "pollution_dropped": float(is_dropped[flags == 1].mean()) if flags.any() else None,
        "normal_dropped": float(is_dropped[flags == 0].mean()),
        "settings": settings.to_run_config(),
    }


def stress_settings(num_clients: int = 100, seed: int = 0, detector: str = "rtbigan",
                    ) -> RunSettings:
    """The stress run's settings: the example federation at 20 % pollution, one local epoch."""
    return RunSettings().replace(num_clients=num_clients, contamination=0.2, seed=seed,
                                 detector=detector, local_epochs=1, min_nodes=1)
