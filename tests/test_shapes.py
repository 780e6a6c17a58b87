"""Images of any shape: the layout rule, the networks and detectors built from the shape, the
shape in the wire protocol and in checkpoints, and a mismatch excluding only its sender."""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp.strategy import FedAvg

from fedsieve.client import FedSieve
from fedsieve.client.app import make_client_app
from fedsieve.server import AnomalyFilter, UploadScreening
from fedsieve.shared.data.images import check_images, image_shape
from fedsieve.shared.detectors import (
    DETECTORS,
    MetaModelWarning,
    RtBiGAN,
    load_detector,
    make_detector,
    save_detector,
)
from fedsieve.shared.detectors.checkpoint import default_meta_checkpoint, load_meta, save_meta
from fedsieve.shared.detectors.metatrain import MetaConfig, meta_train
from fedsieve.shared.detectors.networks import BiGAN, NetConfig
from fedsieve.shared.protocol.upload import (
    REQUEST_RECORD,
    UPLOAD_ACTION,
    ProtocolError,
    UploadRequest,
    decode_upload,
    encode_upload,
)
from fedsieve.shared.task.classifier import DigitNet, evaluate, train_local
from fedsieve.simulations.image_tasks import pad_to, tint
from fedsieve.simulations.loopback import LoopbackGrid

NODES = [101, 202, 303, 404]


def make_grid(settings, files, apps):
    """The four clients of ``compact_federation`` as real example ClientApps, some replaced."""
    app = make_client_app(settings)
    apps = {node: app for node in NODES} | apps
    return LoopbackGrid(apps, {node: {"data-path": str(path)} for node, path in zip(NODES, files)})


def client_data(federation, node):
    client = federation.clients[NODES.index(node)]
    return client.x, client.ids


def run_round(strategy, grid):
    """One training round; returns the train messages, the replies and the aggregate."""
    torch.manual_seed(0)
    arrays = ArrayRecord(DigitNet().state_dict())
    messages = list(strategy.configure_train(1, arrays, ConfigRecord(), grid))
    replies = list(grid.send_and_receive(messages))
    return messages, replies, strategy.aggregate_train(1, replies)


@pytest.fixture(scope="module")
def tinted(mnist_train, fashion_train):
    """Digits (normal) and Fashion-MNIST (anomalies), padded to 32x32 and tinted: uint8
    (N, 3, 32, 32)."""
    rng = np.random.default_rng(0)
    pick = rng.choice(len(mnist_train.images), 300, replace=False)
    digits = tint(pad_to(mnist_train.images[pick], 32), rng)
    fashion = tint(pad_to(fashion_train.images[:60], 32), rng)
    return digits, fashion


# -- the layout rule -----------------------------------------------------------------------------
def test_every_accepted_layout_reads_to_the_same_canonical_batch():
    rng = np.random.default_rng(0)
    nchw = rng.integers(0, 256, (5, 3, 32, 32), dtype=np.uint8)
    nhwc = nchw.transpose(0, 2, 3, 1).copy()
    for form in (nchw, nhwc, torch.from_numpy(nchw), nhwc.astype(np.float32) / 255):
        out = check_images(form, dtype=np.uint8)
        np.testing.assert_array_equal(out, nchw)
        assert out.flags.c_contiguous
    grey = nchw[:, 0]
    np.testing.assert_array_equal(check_images(grey, dtype=np.uint8), grey[:, None])
    np.testing.assert_array_equal(check_images(grey[..., None], dtype=np.uint8), grey[:, None])
    assert image_shape(nhwc) == (3, 32, 32) and image_shape(grey) == (1, 32, 32)


def test_an_ambiguous_layout_must_be_named():
    bands = np.zeros((2, 64, 64, 13), np.uint8)  # 13-band satellite tiles, channels last
    with pytest.raises(ValueError, match="pass layout='NCHW' or layout='NHWC'"):
        check_images(bands)
    assert check_images(bands, layout="NHWC").shape == (2, 13, 64, 64)
    assert check_images(np.zeros((2, 16, 16, 16), np.uint8), layout="NCHW").shape == (2, 16, 16, 16)
    with pytest.raises(ValueError, match="layout must be one of"):
        check_images(bands, layout="HWC")


# -- networks and detectors ------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32), (3, 64, 64), (1, 27, 33),
                                   (13, 16, 16)])
def test_networks_take_and_make_the_image_shape(shape):
    model = BiGAN(NetConfig(image_shape=shape))
    x = torch.rand(2, *shape)
    z = model.E(x)
    assert model.G(z).shape == x.shape
    assert model.D(x, z)[0].shape == (2,)


def test_the_shipped_networks_are_unchanged_at_28x28():
    model, header = load_meta(default_meta_checkpoint())
    assert model.cfg.image_shape == (1, 28, 28)
    assert "image_shape" not in header["net"]  # an old header still loads, as 1x28x28


@pytest.mark.parametrize("name", sorted(DETECTORS))
def test_every_detector_fits_and_scores_colour_images(name, tinted):
    digits, fashion = tinted
    fast = {"rtbigan": {"steps_per_round": 30, "self_training_rounds": 1,
                        "meta_checkpoint": None},
            "egbad": {"steps": 30}, "anogan": {"steps": 30, "latent_steps": 2},
            "deepsvdd": {"estimator__epochs": 1}, "adegan": {"steps": 20, "batch_size": 16},
            "agad": {"width": 4, "latent_dim": 8, "steps": 5, "refine_steps": 2,
                     "batch_size": 8},
            "anoean": {"steps": 20, "batch_size": 16}}
    pool = np.concatenate([digits[:150], fashion[:30]])
    det = make_detector(name, random_state=0, **fast.get(name, {}))
    det.fit(pool, trusted=digits[-10:])
    assert det.image_shape_ == (3, 32, 32) and det.n_features_in_ == 3 * 32 * 32
    scores = det.decision_function(pool.transpose(0, 2, 3, 1))  # channels last, same images
    np.testing.assert_allclose(scores, det.decision_scores_, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"1x28x28 images .* fitted on 3x32x32"):
        det.decision_function(np.zeros((2, 28, 28), np.uint8))


def test_rtbigan_at_64x64_colour(tinted):
    digits, _ = tinted
    big = np.repeat(np.repeat(digits[:60], 2, axis=2), 2, axis=3)  # 3x64x64
    with pytest.warns(MetaModelWarning, match="made for 1x28x28 images, these are 3x64x64"):
        det = RtBiGAN(steps_per_round=10, self_training_rounds=1).fit(big, trusted=big[:10])
    assert det.model_.cfg.image_shape == (3, 64, 64)
    assert det.anomaly_map(big[:4]).shape == (4, 64, 64)


def test_colour_detector_checkpoint_round_trip(tinted, tmp_path):
    digits, fashion = tinted
    pool = np.concatenate([digits[:100], fashion[:20]])
    det = RtBiGAN(meta_checkpoint=None, steps_per_round=30, self_training_rounds=1,
                  random_state=0).fit(pool, trusted=digits[-10:])
    back = load_detector(save_detector(det, tmp_path / "det"))
    assert back.image_shape_ == (3, 32, 32)
    np.testing.assert_array_equal(back.decision_function(pool), det.decision_function(pool))


def test_trusted_images_of_another_shape_are_refused(tinted, mnist_train):
    with pytest.raises(ValueError, match=r"trusted images are 1x28x28 .* pool's are 3x32x32"):
        make_detector("iforest").fit(tinted[0][:50], trusted=mnist_train.images[:5])


def test_meta_train_save_load_adapt_on_tiny_colour_data(tinted, tmp_path):
    digits, fashion = tinted
    small = digits[:, :, ::2, ::2]  # 3x16x16
    labels = np.arange(len(small)) % 3
    phi = meta_train(small[:90], labels[:90], MetaConfig(iterations=3, inner_steps=2))
    path = save_meta(phi, tmp_path / "meta", {"data": "tinted digits"})
    model, header = load_meta(path)
    assert model.cfg.image_shape == (3, 16, 16) and header["net"]["image_shape"] == [3, 16, 16]
    pool = np.concatenate([small[90:200], fashion[:20, :, ::2, ::2]])
    with warnings.catch_warnings():
        warnings.simplefilter("error", MetaModelWarning)  # a fitting meta-model: no warning
        det = RtBiGAN(meta_checkpoint=path, steps_per_round=20, self_training_rounds=1)
        det.fit(pool, trusted=small[-10:])
    assert det.meta_info_["weights_sha256"] == header["weights_sha256"]
    with pytest.raises(ValueError, match=r"made for 3x16x16 images .* these are 3x32x32"):
        RtBiGAN(meta_checkpoint=path).fit(digits[:50], trusted=digits[-10:])


def test_the_example_classifier_is_sized_from_the_images(tinted):
    digits, _ = tinted
    labels = np.arange(len(digits)) % 4
    torch.manual_seed(0)
    model = DigitNet(num_classes=4, image_shape=(3, 32, 32))
    train_local(model, digits, labels, epochs=1)
    loss, accuracy = evaluate(model, digits.transpose(0, 2, 3, 1), labels)
    assert np.isfinite(loss) and 0.0 <= accuracy <= 1.0


# -- the shape on the wire -------------------------------------------------------------------
def test_colour_upload_round_trip(tinted):
    x = tinted[0][:25].transpose(0, 2, 3, 1).copy()  # as numpy / PIL hold colour: (N, H, W, C)
    ids = np.arange(25, dtype=np.int64) * 3
    request = UploadRequest(chunk_size=10, chunk_index=1, image_shape=(3, 32, 32))
    request = UploadRequest.from_content(RecordDict({REQUEST_RECORD: request.to_record()}))
    assert request.image_shape == (3, 32, 32)
    upload = decode_upload(encode_upload(x, ids, request), request)
    np.testing.assert_array_equal(upload.x, tinted[0][10:20])
    np.testing.assert_array_equal(upload.ids, ids[10:20])
    grey = UploadRequest(image_shape=(1, 28, 28))
    with pytest.raises(ValueError, match="local samples are 3x32x32 images .* takes 1x28x28"):
        encode_upload(x, ids, grey)
    with pytest.raises(ProtocolError, match="uploaded images are 3x32x32 .* takes 1x28x28"):
        decode_upload(encode_upload(x, ids, UploadRequest()), grey)


def padded_client_app(federation, node, *, check_on_client: bool):
    """A client whose images are 32x32 while the server's seeds are 28x28: through the SDK
    (which refuses to upload them) or answering with a raw upload the server must refuse."""
    x, ids = client_data(federation, node)
    padded = pad_to(x, 32)
    if check_on_client:
        app = ClientApp()
        FedSieve(app, samples=lambda ctx: (padded, ids))
        return app
    app = ClientApp()

    @app.query(UPLOAD_ACTION)
    def upload(msg: Message, context) -> Message:
        request = UploadRequest.from_content(msg.content)
        blind = UploadRequest(chunk_index=request.chunk_index, chunk_size=request.chunk_size)
        return Message(encode_upload(padded, ids, blind), reply_to=msg)

    return app


@pytest.mark.parametrize("check_on_client", [True, False])
def test_a_shape_mismatch_excludes_only_its_sender(check_on_client, small_settings,
                                                   compact_federation,
                                                   compact_federation_files, tmp_path):
    odd = NODES[1]
    apps = {odd: padded_client_app(compact_federation, odd, check_on_client=check_on_client)}
    grid = make_grid(small_settings, compact_federation_files, apps)
    strategy = AnomalyFilter(FedAvg(fraction_evaluate=0.0, min_available_nodes=1),
                             UploadScreening(make_detector("iforest", random_state=0),
                                             compact_federation.trusted_set.images),
                             run_dir=tmp_path)
    assert strategy.screening.image_shape == (1, 28, 28)
    messages, _, (arrays, _) = run_round(strategy, grid)
    record = strategy.history[-1]
    assert record["excluded_codes"] == {odd: "failed-screening"}
    assert re.search(r"1x32x32 .* takes 1x28x28", record["excluded"][odd])
    assert {m.metadata.dst_node_id for m in messages} == set(NODES) - {odd}
    assert arrays is not None


def test_image_statistics_do_not_depend_on_the_colour(mnist_train):
    """The same digits drawn white, saturated blue or pale green have the same statistics
    (each pixel is read through its brightest channel), and grey images read as they are."""
    from fedsieve.shared.detectors.evidence import image_statistics

    grey = pad_to(mnist_train.images[:20], 32)
    colours = {"white": (1.0, 1.0, 1.0), "blue": (0.0, 0.0, 1.0), "green": (0.6, 1.0, 0.6)}
    stats = {}
    for name, rgb in colours.items():
        x = np.rint(grey[:, None] * np.array(rgb, np.float32).reshape(1, 3, 1, 1))
        stats[name] = image_statistics(check_images(x.astype(np.uint8)))
    plain = image_statistics(check_images(grey))
    for name in colours:
        np.testing.assert_allclose(stats[name], plain, err_msg=name)


@pytest.mark.parametrize("x, says", [
    (np.full((2, 28, 28), 255.0), r"dtype float64 with values in \[255, 255\].*0-255 data: "
                                  r"convert with x\.astype\(np\.uint8\)"),
    (np.full((2, 28, 28), 0.5), r"dtype float64 with values in \[0\.5, 0\.5\].*data in "
                                r"\[0, 1\]: convert with x\.astype\(np\.float32\)"),
    (np.full((2, 28, 28), 7, np.int64), r"dtype int64 with values in \[7, 7\].*x\.astype\(np\."
                                        r"uint8\)"),
    (np.full((2, 28, 28), np.nan), r"dtype float64; .*x\.astype\(np\.float32\)"),
])
def test_another_dtype_is_refused_with_its_values_and_the_fix(x, says):
    with pytest.raises(ValueError, match=says):
        check_images(x, "local samples")
