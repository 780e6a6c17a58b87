"""A real deployment on 127.0.0.1: flower-superlink, five flower-supernodes, ``flwr run``.

Each SuperNode gets its own polluted partition through ``--node-config data-path=...``; the
ServerApp gets the trusted-images file through the run config. The tests check that polluted
samples were dropped, the run finished, and every process is gone afterwards, in upload mode
and in local mode (no image leaves a SuperNode).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO

from fedsieve.server.audit import read_audit
from fedsieve.simulations.pollution import build_federation

BIN = Path(sys.executable).parent
NUM_NODES = 5


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, process: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before listening")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.5)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout:.0f} s")


@pytest.fixture
def deployment(tmp_path, mnist_train, fashion_train):
    """Start the SuperLink and SuperNodes; stop them (and their children) afterwards."""
    federation = build_federation(NUM_NODES, 0.25, seed=3, mnist=mnist_train,
                                  fashion=fashion_train)
    for client in federation.clients:
        np.savez(tmp_path / f"client_{client.client_id}.npz", **client.public_arrays())
    federation.trusted_set.save(tmp_path / "trusted.npz")
    # One torch thread per process: five SuperNodes and the ServerApp share the cores, and
    # torch's spinning OpenMP threads beside each other ran ~10x slower.
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
           "FLWR_HOME": str(tmp_path / "flwr-home"), "PYTHONUNBUFFERED": "1",
           "OMP_NUM_THREADS": "1"}
    link_port = free_port()
    processes: list[subprocess.Popen] = []

    def start(args: list[str], log: str) -> subprocess.Popen:
        handle = (tmp_path / log).open("w")
        process = subprocess.Popen(args, env=env, stdout=handle, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        processes.append(process)
        return process

    try:
        link = start([str(BIN / "flower-superlink"), "--insecure",
                      "--disable-runtime-dependency-installation", "--host", "127.0.0.1",
                      "--port", str(link_port), "--database", str(tmp_path / "link.db")],
                     "superlink.log")
        wait_for_port(link_port, link)
        for i in range(NUM_NODES):
            node_port = free_port()
            node = start([str(BIN / "flower-supernode"), "--insecure", "--superlink",
                          f"127.0.0.1:{link_port}", "--host", "127.0.0.1", "--port",
                          str(node_port), "--node-config",
                          f"data-path='{tmp_path / f'client_{i}.npz'}'"], f"supernode{i}.log")
            wait_for_port(node_port, node)
        home = tmp_path / "flwr-home"
        home.mkdir(exist_ok=True)
        (home / "config.toml").write_text(
            '[superlink]\ndefault = "test"\n\n[superlink.test]\n'
            f'address = "127.0.0.1:{link_port}"\ninsecure = true\n')
        yield {"env": env, "tmp": tmp_path, "federation": federation, "processes": processes}
    finally:
        for process in processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
        # No stray processes: each group (SuperExec, app processes included) is gone.
        deadline = time.monotonic() + 20
        for process in processes:
            while _group_alive(process.pid) and time.monotonic() < deadline:
                time.sleep(0.2)
            assert not _group_alive(process.pid), f"processes of group {process.pid} remain"


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # Zombies count as gone: their parent was the (finished) group leader.
    rows = subprocess.run(["ps", "-eo", "pgid=,stat="], capture_output=True,
                          text=True).stdout.split("\n")
    states = [row.split()[1] for row in rows if row.split() and row.split()[0] == str(pgid)]
    return any(not state.startswith("Z") for state in states)


def flwr_run(deployment, tmp_path, config: str, timeout: float = 420
             ) -> tuple[dict, list[dict], dict[int, bool]]:
    """``flwr run`` the app (a copy, as a user ships it) with ``config`` added; returns the
    result, the audit's sample verdicts and the ground truth."""
    env = deployment["env"]
    run_dir = tmp_path / "run"
    app_dir = tmp_path / "app"  # the app as a user ships it (a copy; flwr builds a FAB)
    shutil.copytree(REPO, app_dir, ignore=shutil.ignore_patterns(
        ".venv", ".git", "runs", "__pycache__", "*.egg-info", "benchmarks"))
    config += (f' min-nodes={NUM_NODES} trusted-file="{tmp_path / "trusted.npz"}" '
               f'run-dir="{run_dir}"')
    completed = subprocess.run([str(BIN / "flwr"), "run", str(app_dir), "test", "--run-config",
                                config, "--stream"], env=env, capture_output=True, text=True,
                               timeout=timeout)
    log = completed.stdout + completed.stderr
    assert completed.returncode == 0, log[-3000:]
    result = json.loads((run_dir / "result.json").read_text())
    samples = [e for e in read_audit(run_dir / "audit.jsonl") if e["kind"] == "sample"]
    return result, samples, deployment["federation"].ground_truth()


@pytest.mark.slow
def test_flwr_run_against_real_superlink(deployment, tmp_path):
    result, samples, truth = flwr_run(deployment, tmp_path,
                                      'detector="iforest" num-server-rounds=2')
    assert set(result["accuracy"]) == {"0", "1", "2"}
    assert result["accuracy"]["2"] > 0.5
    assert len(samples) == len(truth)  # every upload got exactly one verdict
    dropped_polluted = [truth[e["id"]] for e in samples if e["verdict"] == 1]
    assert sum(dropped_polluted) >= 0.7 * sum(truth.values())  # polluted samples were dropped
    assert np.mean(dropped_polluted) > 0.7
    # The long-running processes are still serving; the fixture stops them and checks.
    assert all(process.poll() is None for process in deployment["processes"])


@pytest.mark.slow
def test_local_mode_against_real_superlink(deployment, tmp_path):
    """Local screening on five real SuperNodes: the detector goes out, no image comes back
    (spot checks off), and the pollution is still dropped."""
    result, samples, truth = flwr_run(
        deployment, tmp_path, 'detector="rtbigan" mode="local" local-rounds=1 '
        'local-steps=300 num-server-rounds=1', timeout=600)
    assert result["accuracy"]["1"] > 0.5
    record = result["filter"][0]
    assert record["mode"] == "local" and record["excluded"] == {}
    assert len(record["traffic"]) == NUM_NODES and record["spot_checked"] == {}
    assert len(samples) == len(truth)  # every local sample got exactly one verdict
    dropped = np.array([e["verdict"] for e in samples], bool)
    polluted = np.array([truth[e["id"]] for e in samples], bool)
    assert dropped[polluted].mean() > 0.8 and dropped[~polluted].mean() < 0.05
    for node, traffic in record["traffic"].items():
        n = sum(1 for e in samples if str(e["node"]) == str(node))
        # Up: one self-training update (the networks' size, ~1.4 MB), two float16 score
        # reports and ids; an upload of the images alone would be 784 bytes a sample.
        assert traffic["up"] < 1_500_000 + 2 * 16 * n, (node, traffic, n)
    assert all(process.poll() is None for process in deployment["processes"])
