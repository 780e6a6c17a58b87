"""The example task on the user's own data: datasets by name or path, of any image shape."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fedsieve.shared.config import HarnessSettings, RunSettings, TaskSettings
from fedsieve.shared.task.example_data import (
    dataset_classes,
    example_classifier,
    example_test_set,
    load_dataset,
    match_shape,
)
from fedsieve.simulations.image_tasks import pad_to, tint
from fedsieve.simulations.pollution import federation_for
from fedsieve.simulations.simulate import settings_for_defense, simulate


def _tinted_npz(path, images, labels, seed, *, nhwc=True):
    """A labelled colour dataset as a user would save it: (N, 32, 32, 3) uint8 (numpy/PIL)."""
    x = tint(pad_to(images, 32), np.random.default_rng(seed))
    np.savez(path, x=x.transpose(0, 2, 3, 1) if nhwc else x, y=labels)
    return str(path)


@pytest.fixture(scope="module")
def colour_files(tmp_path_factory, mnist_train, mnist_test, fashion_train):
    """Tinted 3x32x32 digits (train and test) and tinted clothes (pollution), as .npz."""
    d = tmp_path_factory.mktemp("colour")
    rng = np.random.default_rng(0)  # the packaged digits are sorted by class
    train, test = rng.permutation(len(mnist_train.labels))[:900], rng.permutation(
        len(mnist_test.labels))[:300]
    return {
        "train": _tinted_npz(d / "train.npz", mnist_train.images[train],
                             mnist_train.labels[train], 0),
        "test": _tinted_npz(d / "test.npz", mnist_test.images[test], mnist_test.labels[test],
                            1, nhwc=False),
        "pollution": _tinted_npz(d / "clothes.npz", fashion_train.images[:600],
                                 fashion_train.labels[:600], 2),
    }


def test_match_shape_resizes_and_converts_channels():
    grey = np.zeros((2, 28, 28), np.uint8)
    grey[:, 10:18, 10:18] = 200
    rgb = match_shape(grey, (3, 32, 32))
    assert rgb.shape == (2, 3, 32, 32) and rgb.dtype == np.uint8
    np.testing.assert_array_equal(rgb[:, 0], rgb[:, 2])  # grey repeated into every channel
    assert rgb[:, :, 16, 16].min() == 200 and rgb[:, :, 0, 0].max() == 0
    back = match_shape(rgb, (1, 28, 28))
    assert back.shape == (2, 1, 28, 28) and abs(int(back[0, 0, 14, 14]) - 200) <= 1
    assert match_shape(rgb, (3, 32, 32)) is not None
    with pytest.raises(ValueError, match="cannot turn 2x28x28 images into 3x28x28"):
        match_shape(np.zeros((1, 2, 28, 28), np.uint8), (3, 28, 28))


def test_load_dataset_by_name_and_path(colour_files, tmp_path):
    train = load_dataset(colour_files["train"])
    assert train.images.shape == (900, 3, 32, 32) and dataset_classes(train.labels) == 10
    assert train.source.source == "path" and train.source.count == 900
    assert load_dataset("mnist", "test").images.shape[1:] == (28, 28)
    np.savez(tmp_path / "unlabelled.npz", x=np.zeros((4, 32, 32, 3), np.uint8))
    with pytest.raises(ValueError, match="holds no labels"):
        load_dataset(str(tmp_path / "unlabelled.npz"))


def test_a_path_dataset_needs_its_test_set(colour_files):
    with pytest.raises(ValueError, match="set test-dataset"):
        TaskSettings(dataset=colour_files["train"]).validated()
    task = TaskSettings(dataset=colour_files["train"], test_dataset=colour_files["test"])
    assert example_test_set(task).images.shape == (300, 3, 32, 32)
    net = example_classifier(task)
    assert net.image_shape == (3, 32, 32)


def test_federation_of_colour_images(colour_files):
    settings = RunSettings(
        task=TaskSettings(dataset=colour_files["train"], test_dataset=colour_files["test"]),
        harness=HarnessSettings(num_clients=3, pollution_dataset=colour_files["pollution"]),
    ).validated()
    federation = federation_for(settings)
    assert federation.trusted_set.images.shape == (10, 3, 32, 32)
    for client in federation.clients:
        assert client.x.shape[1:] == (3, 32, 32) and client.x.dtype == np.uint8
        assert 0.15 < client.polluted.mean() < 0.25 and client.y.max() < 10
    # The kinds that draw 28x28 grey frames say why they cannot pollute colour images.
    with pytest.raises(ValueError, match="draw 1x28x28 grey images, but the dataset's are "
                                         "3x32x32"):
        federation_for(settings.replace(pollution="fashion,black"))


def test_reverse_protocol_federation_by_name():
    settings = RunSettings(task=TaskSettings(dataset="fashion-mnist"),
                           harness=HarnessSettings(num_clients=40, contamination=0.05))
    federation = federation_for(settings.validated())
    client = federation.clients[0]
    # Fashion-MNIST clients polluted with MNIST digits, both as the loaders give them.
    assert client.x.shape[1:] == (28, 28) and set(federation.sources) == {"fashion-mnist",
                                                                          "mnist"}


@pytest.mark.slow
def test_simulate_on_colour_images(colour_files, tmp_path):
    settings = settings_for_defense(RunSettings(
        task=TaskSettings(num_server_rounds=2, local_epochs=2, dataset=colour_files["train"],
                          test_dataset=colour_files["test"]),
        harness=HarnessSettings(num_clients=2, contamination=0.2,
                                pollution_dataset=colour_files["pollution"]),
    ).validated(), "iforest")
    report = simulate(settings, tmp_path)
    detection = report["detection"]
    assert detection["screened"] and detection["uploads"] == sum(
        c["samples"] for c in report["federation"]["clients"])
    assert detection["auc"] > 0.8
    assert report["final_accuracy"] > 0.2  # ten classes: chance is 0.1
    with np.load(tmp_path / "trusted.npz") as trusted:
        assert trusted["x"].shape == (10, 3, 32, 32)
    ran = json.loads((tmp_path / "result.json").read_text())["settings"]
    assert ran["dataset"] == colour_files["train"]
