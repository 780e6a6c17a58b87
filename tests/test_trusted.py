"""The trusted file and the shared draw of trusted images."""

from __future__ import annotations

import logging
import pickle
import warnings

import numpy as np
import pytest

from fedsieve.shared.data.trusted import (
    TrustedFileError,
    draw_trusted_indices,
    load_trusted_file,
    save_trusted_file,
)


def test_draw_cycles_classes_and_is_seeded():
    labels = np.repeat(np.arange(10), 50)
    picks = draw_trusted_indices(labels, 12, seed=3)
    assert labels[picks].tolist() == [*range(10), 0, 1]
    np.testing.assert_array_equal(picks, draw_trusted_indices(labels, 12, seed=3))
    assert not np.array_equal(picks, draw_trusted_indices(labels, 12, seed=4))


def test_round_trip_and_float_input(tmp_path):
    grey = np.random.default_rng(0).integers(0, 256, (6, 28, 28), dtype=np.uint8)
    images = grey[:, None]  # what loading returns: canonical (k, C, H, W)
    np.testing.assert_array_equal(load_trusted_file(save_trusted_file(tmp_path / "s.npz", grey)),
                                  images)
    np.savez(tmp_path / "f.npz", x=images.astype(np.float32) / 255)
    np.testing.assert_array_equal(load_trusted_file(tmp_path / "f.npz"), images)
    # Float images in [0, 1] are stored as their uint8 levels, not truncated to 0.
    as_float = grey.astype(np.float32) / 255
    np.testing.assert_array_equal(
        load_trusted_file(save_trusted_file(tmp_path / "g.npz", as_float)), images)
    # Colour images, channels last as numpy holds them, come back channels first.
    rgb = np.random.default_rng(1).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    np.testing.assert_array_equal(load_trusted_file(save_trusted_file(tmp_path / "c.npz", rgb)),
                                  rgb.transpose(0, 3, 1, 2))


@pytest.mark.parametrize("arrays, message", [
    ({"x": np.zeros((5, 32), np.uint8)}, "has shape"),
    ({"x": np.zeros((5, 3, 4, 4), np.uint8)}, "cannot tell whether the channels"),
    ({"images": np.zeros((5, 28, 28), np.uint8)}, "under 'x'"),
    ({"x": np.zeros((0, 28, 28), np.uint8)}, "no images"),
    ({"x": np.full((2, 28, 28), 3.0, np.float32)}, r"\[0, 1\]"),
])
def test_bad_trusted_files(tmp_path, arrays, message):
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(TrustedFileError, match=message):
        load_trusted_file(tmp_path / "bad.npz")


def test_missing_and_pickled_trusted_files_refused(tmp_path):
    with pytest.raises(TrustedFileError, match="does not exist"):
        load_trusted_file(tmp_path / "nope.npz")
    np.savez(tmp_path / "obj.npz", x=np.array([{"a": 1}], dtype=object))
    with pytest.raises(TrustedFileError, match="not a readable"):
        load_trusted_file(tmp_path / "obj.npz")
    (tmp_path / "p.npz").write_bytes(pickle.dumps(np.zeros((3, 28, 28))))
    with pytest.raises(TrustedFileError, match="not a readable"):
        load_trusted_file(tmp_path / "p.npz")


# -- the screening's trusted_images -------------------------------------------------------------
def _screening(trusted):
    from fedsieve.server import UploadScreening
    from fedsieve.shared.detectors import make_detector

    return UploadScreening(make_detector("iforest"), trusted)


def test_the_filter_takes_a_trusted_files_path(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (6, 28, 28), dtype=np.uint8)
    path = save_trusted_file(tmp_path / "trusted.npz", images)
    for given in (path, str(path)):
        np.testing.assert_array_equal(_screening(given).trusted_images, images[:, None])
    with pytest.raises(TrustedFileError, match="does not exist"):
        _screening(tmp_path / "missing.npz")


def test_other_trusted_inputs_name_both_forms():
    with pytest.raises(ValueError, match=r"numpy array of images or the path of a trusted "
                                         r"file \(read with fedsieve.shared.data.trusted."
                                         r"load_trusted_file\), got list"):
        _screening([[0] * 28] * 28)


def test_fewer_than_five_trusted_images_warn_with_the_measured_cost(caplog):
    from fedsieve.shared.data.trusted import FEW_TRUSTED_COST, FewTrustedImagesWarning

    images = np.random.default_rng(0).integers(0, 256, (5, 28, 28), dtype=np.uint8)
    with pytest.warns(FewTrustedImagesWarning, match="only 3 trusted images; give 5-10") as got:
        _screening(images[:3])
    assert FEW_TRUSTED_COST in str(got[0].message)
    assert got[0].filename == __file__  # the line that builds the screening
    assert "test AUC" in FEW_TRUSTED_COST  # the measured figures, not a placeholder
    caplog.clear()
    with warnings.catch_warnings(), caplog.at_level(logging.WARNING, logger="flwr"):
        warnings.simplefilter("error", FewTrustedImagesWarning)
        _screening(images)  # five: no warning
    assert not [r for r in caplog.records if "trusted image" in r.getMessage()]
