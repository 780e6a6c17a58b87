"""Screening modes as objects: UploadScreening and LocalScreening, the AnomalyFilter that holds
one, where each option is checked, the run config that builds them, and the 0.1 keywords'
deprecation path (the same screening, one FutureWarning)."""

from __future__ import annotations

import inspect
import logging
import re
import warnings

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord
from flwr.serverapp.strategy import FedAvg, FedMedian
from typer.testing import CliRunner

from fedsieve.client.app import make_client_app
from fedsieve.server import AnomalyFilter, LocalScreening, ScreeningMode, UploadScreening
from fedsieve.server.audit import read_audit
from fedsieve.server.factory import build_screening, build_strategy, check_settings
from fedsieve.server.modes import MODES, make_screening
from fedsieve.server.screening import DEFAULT_MAX_FIT_SAMPLES
from fedsieve.shared.config import FilterSettings
from fedsieve.shared.detectors import make_detector
from fedsieve.shared.detectors.labels import LabelCheck
from fedsieve.shared.task.classifier import DigitNet
from fedsieve.simulations.cli import app
from fedsieve.simulations.loopback import LoopbackGrid

NODES = [101, 202, 303, 404]


@pytest.fixture(scope="module")
def trusted(compact_federation):
    return compact_federation.trusted_set.images


def options_of(screening: ScreeningMode) -> dict:
    """A screening's class and options, the detector and label check by their parameters."""
    def plain(value):
        return repr(value) if hasattr(value, "get_params") else value
    return {"class": type(screening).__name__,
            **{k: plain(v) for k, v in vars(screening).items() if k != "trusted_images"},
            "trusted": screening.trusted_images.tobytes()}


# -- the new API -------------------------------------------------------------------------------
def test_the_wrapper_takes_a_screening_and_its_own_few_options():
    named = [p for p in inspect.signature(AnomalyFilter).parameters.values()
             if p.kind is not p.VAR_KEYWORD]
    assert [p.name for p in named] == ["strategy", "screening", "max_client_contamination",
                                       "screen_every", "run_dir"]
    assert MODES == {"upload": UploadScreening, "local": LocalScreening}


def test_upload_screening_holds_its_options(trusted, caplog):
    check = LabelCheck(random_state=0)
    screening = UploadScreening(make_detector("iforest"), trusted, upload_fraction=0.5,
                                chunk_size=100, label_check=check, max_fit_samples=None,
                                max_upload=5000, timeout=30, random_state=7)
    assert (screening.upload_fraction, screening.chunk_size, screening.max_fit_samples,
            screening.max_upload, screening.timeout, screening.random_state) == (
        0.5, 100, None, 5000, 30.0, 7)
    assert screening.image_shape == (1, 28, 28) and screening.trusted_images.dtype == np.uint8
    assert screening.make_label_check() is not check  # a fresh copy per screening
    assert UploadScreening(make_detector("iforest"), trusted).max_fit_samples == \
        DEFAULT_MAX_FIT_SAMPLES
    strategy = AnomalyFilter(FedMedian(), screening, max_client_contamination=0.3,
                             screen_every=2)
    assert strategy.screening is screening and isinstance(strategy.strategy, FedMedian)
    assert "UploadScreening(detector=" in repr(strategy)
    with caplog.at_level(logging.INFO, logger="flwr"):
        strategy.summary()
    assert "upload fraction 0.50 | label check | screen every: 2" in caplog.text


def test_local_screening_holds_its_options(trusted, caplog):
    screening = LocalScreening(make_detector("rtbigan"), trusted, local_rounds=2,
                               local_steps=40, spot_check_rate=0.1, random_state=3)
    settings = screening.settings()
    assert (settings.rounds, settings.local_steps, settings.spot_check_rate, settings.seed,
            settings.max_samples, settings.timeout) == (2, 40, 0.1, 3, 1_000_000, 600.0)
    strategy = AnomalyFilter(None, screening)
    assert isinstance(strategy.strategy, FedAvg)
    with caplog.at_level(logging.INFO, logger="flwr"):
        strategy.summary()
    assert "local screening: 2 self-training rounds of 40 steps | spot checks: 10.0 %" \
        in caplog.text


def test_a_round_with_the_new_api_gives_no_warning(small_settings, compact_federation,
                                                   compact_federation_files, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        strategy = AnomalyFilter(FedAvg(fraction_evaluate=0.0, min_available_nodes=1),
                                 UploadScreening(make_detector("iforest", random_state=0),
                                                 compact_federation.trusted_set.images),
                                 run_dir=tmp_path)
    history = run_round(strategy, small_settings, compact_federation_files)
    assert history["screened"] and history["uploaded"] == sum(
        len(c) for c in compact_federation.clients)


# -- each option checked once, where it belongs ------------------------------------------------
U, L = UploadScreening, LocalScreening
AT_LEAST_1 = "must be an integer of at least 1, got 0"
BAD_OPTIONS = [
    (U, {"upload_fraction": 0.0}, ValueError, r"upload_fraction must be in \(0, 1\], got 0.0"),
    (U, {"upload_fraction": 1.5}, ValueError, r"upload_fraction must be in \(0, 1\]"),
    (U, {"chunk_size": 0}, ValueError, f"chunk_size {AT_LEAST_1}"),
    (U, {"max_fit_samples": 0}, ValueError, f"max_fit_samples {AT_LEAST_1}"),
    (U, {"label_check": "labels"}, TypeError, "label_check must be an unfitted"),
    (U, {"spot_check_rate": 0.1}, TypeError, "spot_check_rate"),
    (U, {"max_upload": 0}, ValueError, f"max_upload {AT_LEAST_1}"),
    (U, {"timeout": 0}, ValueError, "timeout must be a positive number of seconds, got 0"),
    (U, {"random_state": 0.5}, ValueError, "random_state must be an integer seed, got 0.5"),
    (L, {"local_rounds": -1}, ValueError, "local_rounds must be an integer >= 0, got -1"),
    (L, {"local_steps": -5}, ValueError, "local_steps must be an integer >= 0, got -5"),
    (L, {"spot_check_rate": 1.5}, ValueError, r"spot_check_rate must be in \[0, 1\], got 1.5"),
    (L, {"upload_fraction": 0.5}, TypeError, "upload_fraction"),
    (L, {"timeout": float("inf")}, ValueError, "timeout must be a positive number"),
]


@pytest.mark.parametrize(("cls", "options", "error", "message"), BAD_OPTIONS)
def test_a_screening_refuses_a_bad_option_naming_it(trusted, cls, options, error, message):
    with pytest.raises(error, match=message):
        cls(make_detector("rtbigan"), trusted, **options)


def test_a_screening_needs_a_detector_object(trusted):
    with pytest.raises(ValueError, match=r"UploadScreening needs a detector, e\.g\. "
                                         r"fedsieve\.shared\.detectors\.make_detector"):
        UploadScreening(None, trusted)
    with pytest.raises(TypeError, match=re.escape("got 'rtbigan'; build one by name with "
                                                  "fedsieve.shared.detectors.make_detector("
                                                  "'rtbigan')")):
        UploadScreening("rtbigan", trusted)
    with pytest.raises(ValueError, match="PeerAdapter cannot be shipped; use one of RtBiGAN"):
        LocalScreening(make_detector("iforest"), trusted)


def test_the_wrapper_checks_its_own_options(trusted):
    screening = UploadScreening(make_detector("iforest"), trusted)
    with pytest.raises(ValueError, match=r"max_client_contamination must be in \[0, 1\], "
                                         "got 1.5"):
        AnomalyFilter(FedAvg(), screening, max_client_contamination=1.5)
    with pytest.raises(ValueError, match="screen_every must be an integer >= 0"):
        AnomalyFilter(FedAvg(), screening, screen_every=-1)
    with pytest.raises(ValueError, match=r"AnomalyFilter needs a screening: e\.g\. "
                                         r"AnomalyFilter\(strategy, UploadScreening"):
        AnomalyFilter(FedAvg())
    # A screening's option handed to the wrapper says where it goes.
    with pytest.raises(TypeError, match=r"'upload_fraction' beside a screening object: pass "
                                        r"the screening's options to UploadScreening\(\.\.\.\)"):
        AnomalyFilter(FedAvg(), screening, upload_fraction=0.5)
    with pytest.raises(TypeError, match="unexpected keyword argument 'uplod_fraction'"):
        AnomalyFilter(FedAvg(), make_detector("iforest"), trusted_images=trusted,
                      uplod_fraction=0.5)
    with pytest.raises(TypeError, match=r"takes a screening object, not a PeerAdapter: "
                                        r"AnomalyFilter\(strategy, UploadScreening\("):
        AnomalyFilter(FedAvg(), make_detector("iforest"))


# -- the deprecated keywords -------------------------------------------------------------------
def deprecated(*args, **kwargs) -> tuple[AnomalyFilter, list[str]]:
    """An AnomalyFilter built with the 0.1 keywords, and the FutureWarnings it gave."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        strategy = AnomalyFilter(*args, **kwargs)
    # Pointing at the caller's line.
    assert all(w.filename == __file__ for w in caught if w.category is FutureWarning)
    return strategy, [str(w.message) for w in caught if w.category is FutureWarning]


def test_the_old_keywords_build_the_same_upload_screening_with_one_warning(trusted):
    check = LabelCheck(random_state=0)
    old, said = deprecated(FedMedian(), make_detector("iforest"), trusted_images=trusted,
                           upload_fraction=0.5, chunk_size=100, label_check=check,
                           max_upload=900, screening_timeout=20, random_state=4,
                           max_fit_samples=None, max_client_contamination=0.2, screen_every=3,
                           run_dir=None)
    assert said == [
        "AnomalyFilter(strategy, detector, trusted_images=..., mode=..., ...) is deprecated "
        "and stops working in the next fedsieve release; write AnomalyFilter(strategy, "
        "UploadScreening(detector, trusted_images, upload_fraction=..., chunk_size=..., "
        "label_check=..., max_upload=..., timeout=..., random_state=..., max_fit_samples=...), "
        "max_client_contamination=..., screen_every=..., run_dir=...) (fedsieve.server)"]
    new = UploadScreening(make_detector("iforest"), trusted, upload_fraction=0.5,
                          chunk_size=100, label_check=check, max_upload=900, timeout=20,
                          random_state=4, max_fit_samples=None)
    assert options_of(old.screening) == options_of(new)
    assert (old.max_client_contamination, old.screen_every) == (0.2, 3)
    # detector by name, mode spelt out: the same.
    by_name, said = deprecated(detector=make_detector("iforest"), trusted_images=trusted,
                               mode="upload")
    assert len(said) == 1 and options_of(by_name.screening) == options_of(
        UploadScreening(make_detector("iforest"), trusted))


def test_the_old_keywords_build_the_same_local_screening(trusted):
    old, said = deprecated(FedAvg(), make_detector("rtbigan"), trusted_images=trusted,
                           mode="local", local_rounds=0, local_steps=30, spot_check_rate=0.2,
                           random_state=5, chunk_size=7)  # an upload option: ignored, as in 0.1
    assert len(said) == 1 and "LocalScreening(detector, trusted_images, local_rounds=..., " \
        "local_steps=..., spot_check_rate=..., random_state=...)" in said[0]
    assert options_of(old.screening) == options_of(LocalScreening(
        make_detector("rtbigan"), trusted, local_rounds=0, local_steps=30, spot_check_rate=0.2,
        random_state=5))
    # What 0.1 refused, refused as it was.
    with pytest.raises(ValueError, match="label_check needs uploads: it does not apply with "
                                         "mode='local'"):
        deprecated(FedAvg(), make_detector("rtbigan"), trusted_images=trusted, mode="local",
                   label_check=LabelCheck())
    with pytest.raises(ValueError, match="mode must be one of upload, local, got 'edge'"):
        deprecated(FedAvg(), make_detector("rtbigan"), trusted_images=trusted, mode="edge")


def test_the_old_keywords_give_the_same_round(small_settings, compact_federation,
                                              compact_federation_files, tmp_path):
    common = {"max_client_contamination": 0.3}
    new = AnomalyFilter(FedAvg(fraction_evaluate=0.0, min_available_nodes=1),
                        UploadScreening(make_detector("iforest", random_state=0),
                                        compact_federation.trusted_set.images,
                                        upload_fraction=0.5, chunk_size=50, random_state=2),
                        run_dir=tmp_path / "new", **common)
    old, said = deprecated(FedAvg(fraction_evaluate=0.0, min_available_nodes=1),
                           make_detector("iforest", random_state=0),
                           trusted_images=compact_federation.trusted_set.images,
                           upload_fraction=0.5, chunk_size=50, random_state=2,
                           run_dir=tmp_path / "old", **common)
    assert len(said) == 1
    rounds = [run_round(s, small_settings, compact_federation_files) for s in (new, old)]
    timings = ("screening_seconds", "upload_seconds", "detector_seconds", "filter_seconds",
               "metrics")
    assert [{k: v for k, v in r.items() if k not in timings} for r in rounds[0:1]] == \
        [{k: v for k, v in r.items() if k not in timings} for r in rounds[1:2]]
    audits = [[(e.get("node"), e.get("id"), e.get("score"), e.get("verdict"))
               for e in read_audit(tmp_path / d / "audit.jsonl", "sample")]
              for d in ("new", "old")]
    assert audits[0] == audits[1] and len(audits[0]) > 0


# -- the run config builds the objects ---------------------------------------------------------
def test_the_run_config_builds_an_upload_screening(tmp_path, trusted):
    settings = FilterSettings(detector="iforest", upload_fraction=0.5, label_check=True,
                              max_client_contamination=0.3, screen_every=2, seed=4,
                              spot_check_rate=0.1)  # local mode's: ignored in upload mode
    strategy = build_strategy(settings, 3, tmp_path, trusted_images=trusted)
    screening = strategy.screening
    assert type(screening) is UploadScreening
    assert (screening.upload_fraction, screening.random_state) == (0.5, 4)
    assert isinstance(screening.label_check, LabelCheck)
    assert screening.label_check.get_params()["random_state"] == 4
    assert (strategy.max_client_contamination, strategy.screen_every, strategy.run_dir) == (
        0.3, 2, tmp_path)
    assert build_screening(FilterSettings(detector="iforest"), make_detector("iforest"),
                           trusted).label_check is None


def test_the_run_config_builds_a_local_screening(tmp_path, trusted):
    settings = FilterSettings(mode="local", local_rounds=2, local_steps=30,
                              spot_check_rate=0.05, seed=3)
    strategy = build_strategy(settings, 2, tmp_path, trusted_images=trusted)
    screening = strategy.screening
    assert type(screening) is LocalScreening
    assert (screening.local_rounds, screening.local_steps, screening.spot_check_rate,
            screening.random_state) == (2, 30, 0.05, 3)


@pytest.mark.parametrize(("values", "message"), [
    ({"upload_fraction": 0.0}, r"upload_fraction must be in \(0, 1\], got 0.0"),
    ({"mode": "local", "spot_check_rate": 2.0}, r"spot_check_rate must be in \[0, 1\]"),
    ({"mode": "local", "local_rounds": -1}, "local_rounds must be an integer >= 0, got -1"),
    ({"mode": "cloud"}, "mode must be one of upload, local, got 'cloud'"),
    ({"max_client_contamination": 2.0}, r"max_client_contamination must be in \[0, 1\]"),
])
def test_the_run_config_is_checked_by_the_objects_it_builds(tmp_path, trusted, values,
                                                            message):
    settings = FilterSettings.from_run_config({k.replace("_", "-"): v
                                               for k, v in values.items()})
    with pytest.raises(ValueError, match=message):
        build_strategy(settings, 2, tmp_path, trusted_images=trusted)


def test_check_settings_refuses_before_anything_runs(tmp_path):
    check_settings(FilterSettings(detector="rtbigan", mode="local", local_rounds=0))
    check_settings(FilterSettings(detector="none", upload_fraction=0.0))  # no filter to build
    with pytest.raises(ValueError, match="PeerAdapter cannot be shipped"):
        check_settings(FilterSettings(detector="iforest", mode="local"))
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["simulate", "--out", str(out), "--defense", "iforest",
                                      "--upload-fraction", "0"])
    assert result.exit_code != 0 and not out.exists()
    assert "upload_fraction must be in (0, 1], got 0.0" in " ".join(result.output.split())


def test_make_screening_refuses_an_option_no_mode_takes(trusted):
    with pytest.raises(TypeError, match="no screening mode takes the option 'chunksize'"):
        make_screening("upload", make_detector("iforest"), trusted, chunksize=5)


# -- helpers -----------------------------------------------------------------------------------
def run_round(strategy, settings, files) -> dict:
    """One training round over the compact federation's example ClientApps; its history."""
    app = make_client_app(settings)
    grid = LoopbackGrid({n: app for n in NODES},
                        {n: {"data-path": str(p)} for n, p in zip(NODES, files)})
    torch.manual_seed(0)
    messages = list(strategy.configure_train(1, ArrayRecord(DigitNet().state_dict()),
                                             ConfigRecord(), grid))
    strategy.aggregate_train(1, list(grid.send_and_receive(messages)))
    return strategy.history[-1]
