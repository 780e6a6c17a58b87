"""The ``device`` option: resolution, the CPU path unchanged, device-agnostic checkpoints, the
run config and CLI, and (where torch sees a GPU) CUDA fits that score like CPU ones."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import typer
from safetensors.torch import load_file
from sklearn.metrics import roc_auc_score
from typer.testing import CliRunner

from fedsieve.shared.cli.detectors import register
from fedsieve.shared.config import RunSettings
from fedsieve.shared.detectors import load_detector, make_detector, save_detector
from fedsieve.shared.detectors.metatrain import MetaConfig, meta_train
from fedsieve.shared.detectors.persist import detector_from_bytes, detector_to_bytes
from fedsieve.shared.devices import check_device, context_device, resolve_device
from fedsieve.shared.task.classifier import DigitNet, evaluate_classes, train_local

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CUDA = torch.cuda.is_available()
#: Quick settings of every torch detector (seconds each on one CPU thread).
QUICK = {
    "rtbigan": dict(adapt_steps=5, self_training_rounds=1, steps_per_round=20),
    "egbad": dict(steps=20),
    "anogan": dict(steps=10, latent_steps=3),
    "adegan": dict(steps=5, batch_size=16),
    "agad": dict(steps=4, refine_steps=2, self_training_rounds=1, batch_size=16),
    "anoean": dict(steps=10, batch_size=32),
}


@pytest.fixture
def no_cuda(monkeypatch):
    """This machine as one without a GPU, whatever it has: "auto" means the CPU."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)


@pytest.fixture(scope="module")
def small(detector_data):
    """150 pool images (1 in 5 Fashion-MNIST), the trusted digits and 40 test images."""
    x = np.concatenate([detector_data.x[:120], detector_data.x[-30:]])
    return x, detector_data.trusted, detector_data.x_test[280:320]


# -- resolution ------------------------------------------------------------------------------
def test_auto_is_the_cpu_without_a_gpu_and_cuda_with_one(no_cuda, monkeypatch):
    assert resolve_device() == resolve_device("auto") == torch.device("cpu")
    assert resolve_device(" CPU ") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(ValueError, match=r"'cuda:2' is not available.*2 CUDA"):
        resolve_device("cuda:2")


def test_a_missing_gpu_is_a_clear_error_naming_what_there_is(no_cuda):
    for name in ("cuda", "cuda:0"):
        with pytest.raises(ValueError, match=r"not available.*0 CUDA.*offers cpu"):
            resolve_device(name)


@pytest.mark.parametrize("bad", ["gpu", "cuda:x", "xla", "", "cuda:-1", 3, None])
def test_malformed_devices_are_refused(bad):
    with pytest.raises(ValueError, match="device must be 'auto' or one of cpu, cuda, mps"):
        resolve_device(bad)


def test_run_config_and_node_config_take_the_device():
    assert RunSettings().filter.device == "auto"
    # Spelling is checked where the config is read; availability where the device is used.
    assert RunSettings.from_run_config({"device": "cuda:1"}).filter.device == "cuda:1"
    with pytest.raises(ValueError, match="got 'gpu'"):
        RunSettings.from_run_config({"device": "gpu"})
    node = SimpleNamespace(node_config={"device": "cpu"}, run_config={"device": "cuda"})
    assert context_device(node) == "cpu"
    assert context_device(SimpleNamespace(node_config={}, run_config={"device": "mps"})) == "mps"
    assert context_device(SimpleNamespace(node_config={}, run_config={})) == "auto"
    # An app holding its settings itself (fedsieve simulate's example client): they win over
    # the run config, a node's own setting over both.
    assert context_device(SimpleNamespace(node_config={}, run_config={"device": "mps"}),
                          "cpu") == "cpu"
    assert context_device(node, "cuda:1") == "cpu"
    with pytest.raises(ValueError):
        context_device(SimpleNamespace(node_config={"device": "tpu"}, run_config={}))
    assert check_device("CUDA:0") == "cuda:0"


# -- the CPU path is the old one -------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(QUICK))
def test_device_cpu_scores_exactly_as_the_default(name, small, no_cuda):
    x, trusted, test = small
    default = make_detector(name, **QUICK[name]).fit(x, trusted)
    on_cpu = make_detector(name, device="cpu", **QUICK[name]).fit(x, trusted)
    assert default.get_params()["device"] == "auto" and on_cpu.get_params()["device"] == "cpu"
    assert default.device_ == on_cpu.device_ == torch.device("cpu")
    np.testing.assert_array_equal(on_cpu.decision_scores_, default.decision_scores_)
    np.testing.assert_array_equal(on_cpu.decision_function(test), default.decision_function(test))


def test_a_bad_device_stops_the_fit_before_training(small, no_cuda):
    x, trusted, _ = small
    det = make_detector("rtbigan", device="cuda")  # stored as given, sklearn style
    assert det.get_params()["device"] == "cuda"
    with pytest.raises(ValueError, match="not available"):
        det.fit(x, trusted)
    assert not hasattr(det, "model_")
    with pytest.raises(ValueError, match="device must be"):
        make_detector("egbad", device="gpu", steps=1).fit(x)


def test_meta_training_and_the_classifier_are_unchanged_on_the_cpu(small, no_cuda):
    x = small[0][:64]
    labels = np.arange(len(x)) % 4
    cfg = MetaConfig(iterations=2, inner_steps=2, task_size=8)
    a, b = meta_train(x, labels, cfg), meta_train(x, labels, cfg, device="cpu")
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert pa.device.type == "cpu" and torch.equal(pa, pb)
    losses, states = [], []
    for device in ("auto", "cpu"):
        torch.manual_seed(0)
        model = DigitNet()
        losses.append(train_local(model, x, labels, batch_size=16, seed=3, device=device))
        states.append(model.state_dict())
        assert next(model.parameters()).device.type == "cpu"  # handed back where it was
    assert losses[0] == losses[1]
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    auto, cpu = evaluate_classes(model, x, labels), evaluate_classes(model, x, labels,
                                                                     device="cpu")
    assert auto[:2] == cpu[:2]
    np.testing.assert_array_equal(auto[2], cpu[2])
    with pytest.raises(ValueError, match="device must be"):
        train_local(model, x, labels, device="gpu")


# -- checkpoints ------------------------------------------------------------------------------
def test_checkpoints_hold_cpu_weights_and_load_on_the_chosen_device(small, tmp_path, no_cuda):
    x, trusted, test = small
    det = make_detector("rtbigan", **QUICK["rtbigan"]).fit(x, trusted)
    path = save_detector(det, tmp_path / "det")
    weights = load_file(str(path.with_suffix(".safetensors")))
    assert weights and all(t.device.type == "cpu" for t in weights.values())
    assert json.loads(path.read_text())["params"]["device"] == "auto"
    back = load_detector(path, device="cpu")
    assert back.get_params()["device"] == "cpu" and back.device_ == torch.device("cpu")
    assert next(back.model_.parameters()).device.type == "cpu"
    np.testing.assert_array_equal(back.decision_function(test), det.decision_function(test))
    assert load_detector(path).get_params()["device"] == "auto"  # None keeps the saved one
    with pytest.raises(ValueError, match="not available.*offers cpu"):
        load_detector(path, device="cuda")
    shipped = detector_from_bytes(*detector_to_bytes(det), device="cpu")
    np.testing.assert_array_equal(shipped.score_evidence(test), det.score_evidence(test))


def test_detect_and_meta_train_take_device(tmp_path, small, no_cuda):
    app = typer.Typer()
    register(app)
    np.savez(tmp_path / "pool.npz", x=small[0][:40])
    res = CliRunner().invoke(app, ["detect", "--pool", str(tmp_path / "pool.npz"), "--detector",
                                   "egbad", "--device", "cuda", "--out", str(tmp_path / "o")])
    assert res.exit_code != 0 and "not available" in res.output
    res = CliRunner().invoke(app, ["meta-train", "--iterations", "1", "--inner-steps", "1",
                                   "--device", "gpu", "--out", str(tmp_path / "m")])
    assert res.exit_code != 0 and "device must be" in res.output
    assert not (tmp_path / "m.json").exists()


# -- on a GPU ----------------------------------------------------------------------------------
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_a_cuda_fit_scores_like_the_cpu_fit_and_loads_on_the_cpu(detector_data, tmp_path):
    d = detector_data
    params = dict(adapt_steps=20, self_training_rounds=2, steps_per_round=100)
    cpu = make_detector("rtbigan", device="cpu", **params).fit(d.x, d.trusted)
    gpu = make_detector("rtbigan", device="cuda", **params).fit(d.x, d.trusted)
    assert next(gpu.model_.parameters()).device.type == "cuda"
    # The same draws, different kernels: the same detector in distribution, not bit for bit.
    auc_cpu = roc_auc_score(d.y_test, cpu.decision_function(d.x_test))
    auc_gpu = roc_auc_score(d.y_test, gpu.decision_function(d.x_test))
    assert abs(auc_cpu - auc_gpu) < 0.03 and auc_gpu > 0.9
    assert abs(cpu.labels_.mean() - gpu.labels_.mean()) < 0.05
    back = load_detector(save_detector(gpu, tmp_path / "gpu"), device="cpu")
    assert next(back.model_.parameters()).device.type == "cpu"
    np.testing.assert_allclose(back.decision_function(d.x_test), gpu.decision_function(d.x_test),
                               rtol=1e-3, atol=1e-3)
    for name in ("egbad", "adegan", "agad", "anoean", "anogan"):
        det = make_detector(name, device="cuda", **QUICK[name]).fit(d.x[:150])
        scores = det.decision_function(d.x_test[:50])
        assert scores.dtype == np.float64 and np.isfinite(scores).all()
    model = DigitNet()
    train_local(model, d.trusted, np.zeros(len(d.trusted), int), device="cuda")
    assert next(model.parameters()).device.type == "cpu"
