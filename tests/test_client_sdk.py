"""The client SDK: its train reply names its sample count the way the server's strategy
weights; a dataset returned by ``samples`` uploads under ids derived from its images."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from datasets import ClassLabel, Dataset, Features, Image
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp
from PIL import Image as PILImage
from torch.utils.data import Subset, TensorDataset

from fedsieve.client import FedSieve
from fedsieve.shared.data.sources import load_images
from fedsieve.shared.protocol.upload import (
    REQUEST_RECORD,
    UPLOAD_MESSAGE_TYPE,
    VERDICT_RECORD,
    Upload,
    UploadRequest,
    decode_upload,
    encode_verdicts,
)
from fedsieve.simulations.loopback import LoopbackGrid


def train_reply_metrics(**sdk_options) -> dict:
    """Send one train message to a ClientApp using the SDK; the metrics of its reply."""
    app = ClientApp()
    sieve = FedSieve(app, lambda context: (np.zeros((3, 28, 28), np.uint8), np.arange(3)),
                     **sdk_options)

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        return sieve.reply(msg, msg.content["arrays"], num_examples=3, metrics={"loss": 0.5})

    grid = LoopbackGrid({7: app})
    content = RecordDict({"arrays": ArrayRecord([np.zeros(2, np.float32)]),
                          "config": ConfigRecord({"server-round": 1})})
    (reply,) = grid.send_and_receive([grid.create_message(content, "train", 7, "1")])
    assert not reply.has_error(), reply.error
    return dict(reply.content["metrics"])


def test_reply_uses_num_examples_by_default():
    assert train_reply_metrics() == {"loss": 0.5, "num-examples": 3}


def test_reply_uses_the_strategys_weighted_by_key():
    assert train_reply_metrics(weighted_by_key="n") == {"loss": 0.5, "n": 3}


# -- datasets as samples: ids from the images ---------------------------------------------------
def _torch_dataset(n: int = 10) -> TensorDataset:
    images = torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    return TensorDataset(images, torch.arange(n) % 3)


def _hf_dataset(n: int = 10) -> Dataset:
    rng = np.random.default_rng(0)
    images = [PILImage.fromarray(a) for a in rng.integers(0, 256, (n, 32, 32, 3), np.uint8)]
    features = Features({"image": Image(), "label": ClassLabel(names=["a", "b", "c"])})
    return Dataset.from_dict({"image": images, "label": [i % 3 for i in range(n)]},
                             features=features)


def upload_chunks(grid: LoopbackGrid, request: UploadRequest, num_chunks: int) -> list[Upload]:
    """Ask node 7 for each chunk of its upload, as the server does; the decoded chunks."""
    chunks = []
    for index in range(num_chunks):
        asked = replace(request, chunk_index=index)
        content = RecordDict({REQUEST_RECORD: asked.to_record()})
        (reply,) = grid.send_and_receive(
            [grid.create_message(content, UPLOAD_MESSAGE_TYPE, 7, "1")])
        assert not reply.has_error(), reply.error
        chunks.append(decode_upload(reply.content, asked))
    return chunks


def train_with_drops(grid: LoopbackGrid, drops: np.ndarray) -> None:
    content = RecordDict({"arrays": ArrayRecord([np.zeros(2, np.float32)]),
                          "config": ConfigRecord({"server-round": 1}),
                          VERDICT_RECORD: encode_verdicts(drops)})
    (reply,) = grid.send_and_receive([grid.create_message(content, "train", 7, "1")])
    assert not reply.has_error(), reply.error


@pytest.mark.parametrize("make", [_torch_dataset, _hf_dataset], ids=["torch", "hf"])
def test_a_dataset_uploads_under_ids_from_its_images(make):
    dataset = make()
    app = ClientApp()
    sieve = FedSieve(app, samples=lambda context: dataset)
    seen = {}

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        kept = sieve.kept_dataset(msg, dataset)  # ids derived again, from the same data
        seen["kept"] = kept
        return sieve.reply(msg, msg.content["arrays"], num_examples=len(kept))

    grid = LoopbackGrid({7: app})
    request = UploadRequest(chunk_size=4, image_shape=(3, 32, 32))
    chunks = upload_chunks(grid, request, num_chunks=3)
    again = upload_chunks(grid, request, num_chunks=3)
    ids = np.concatenate([c.ids for c in chunks])
    loaded = load_images(dataset)
    np.testing.assert_array_equal(ids, sieve.ids_for(dataset))
    np.testing.assert_array_equal(ids, np.concatenate([c.ids for c in again]))  # stable
    np.testing.assert_array_equal(np.concatenate([c.x for c in chunks]), loaded.images)
    np.testing.assert_array_equal(np.concatenate([c.y for c in chunks]), np.arange(10) % 3)

    drops = ids[[1, 4, 8]]
    train_with_drops(grid, drops)
    kept = seen["kept"]
    assert len(kept) == 7
    if isinstance(kept, Subset):
        assert kept.indices == [0, 2, 3, 5, 6, 7, 9]
    else:  # a Hugging Face dataset stays one
        assert isinstance(kept, Dataset)
    np.testing.assert_array_equal(sieve.ids_for(kept), np.delete(ids, [1, 4, 8]))


class _CountingDataset(TensorDataset):
    """A torch dataset that counts the items read from it."""

    reads = 0

    def __getitem__(self, index):
        type(self).reads += 1
        return super().__getitem__(index)


def test_a_dataset_object_is_read_once_for_every_chunk_and_ids_for():
    base = _torch_dataset(12)
    dataset = _CountingDataset(*base.tensors)
    app = ClientApp()
    sieve = FedSieve(app, samples=lambda context: dataset)
    grid = LoopbackGrid({7: app})
    chunks = upload_chunks(grid, UploadRequest(chunk_size=4, image_shape=(3, 32, 32)), 3)
    ids = sieve.ids_for(dataset)
    assert _CountingDataset.reads == 12  # one pass, not one per chunk and one more for ids
    np.testing.assert_array_equal(np.concatenate([c.ids for c in chunks]), ids)
    # A new object (the data changed) is read again.
    other = _CountingDataset(base.tensors[0][:6], base.tensors[1][:6])
    assert len(sieve.ids_for(other)) == 6 and _CountingDataset.reads == 18


def test_kept_dataset_with_given_ids_and_mismatched_lengths():
    app = ClientApp()
    sieve = FedSieve(app, samples=lambda context: _torch_dataset())
    content = RecordDict({VERDICT_RECORD: encode_verdicts(np.array([11, 13]))})
    msg = Message(content, dst_node_id=7, message_type="train")
    kept = sieve.kept_dataset(msg, np.arange(10, 15), list("abcde"))
    assert [kept[i] for i in range(len(kept))] == ["a", "c", "e"]
    with pytest.raises(ValueError, match="4 ids for a dataset of 5 samples"):
        sieve.kept_dataset(msg, np.arange(4), list("abcde"))


def test_samples_of_another_kind_say_what_is_accepted():
    app = ClientApp()
    FedSieve(app, samples=lambda context: {"x": 1})
    grid = LoopbackGrid({7: app})
    content = RecordDict({REQUEST_RECORD: UploadRequest().to_record()})
    (reply,) = grid.send_and_receive([grid.create_message(content, UPLOAD_MESSAGE_TYPE, 7, "1")])
    assert reply.has_error()
    assert "must return (x, ids), (x, ids, y) or a dataset" in reply.error.reason


# -- counting for the user, and evaluation on the kept samples ------------------------------
def _train_content(drops: np.ndarray | None) -> RecordDict:
    content = RecordDict({"arrays": ArrayRecord([np.zeros(2, np.float32)]),
                          "config": ConfigRecord({"server-round": 1})})
    if drops is not None:
        content[VERDICT_RECORD] = encode_verdicts(drops)
    return content


def counting_app(**reply_options) -> tuple[ClientApp, FedSieve]:
    """A ClientApp over 10 samples (ids 100..109) whose train handler keeps what the server
    kept and replies with ``reply_options``; its evaluate handler reports the ids it
    evaluated on (``screened`` from the config's ``screened`` key when present)."""
    ids = np.arange(100, 110)
    app = ClientApp()
    sieve = FedSieve(app, lambda context: (np.zeros((10, 28, 28), np.uint8), ids))

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        (x,) = sieve.kept(msg, ids, np.arange(10))
        return sieve.reply(msg, msg.content["arrays"], metrics={"loss": 0.5}, **reply_options)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        config = msg.content["config"]
        screened = bool(config["screened"]) if "screened" in config else None
        (seen,) = sieve.kept(msg, ids, ids, screened=screened)
        return Message(RecordDict({"ids": ArrayRecord([seen.astype(np.int64)])}), reply_to=msg)

    return app, sieve


def send(grid: LoopbackGrid, kind: str, content: RecordDict) -> Message:
    (reply,) = grid.send_and_receive([grid.create_message(content, kind, 7, "1")])
    return reply


def evaluated_ids(grid: LoopbackGrid, **config) -> list[int]:
    content = RecordDict({"arrays": ArrayRecord([np.zeros(2, np.float32)]),
                          "config": ConfigRecord({"server-round": 1, **config})})
    reply = send(grid, "evaluate", content)
    assert not reply.has_error(), reply.error
    return reply.content["ids"].to_numpy_ndarrays()[0].tolist()


def test_reply_counts_the_kept_samples_itself():
    app, _ = counting_app()
    grid = LoopbackGrid({7: app})
    reply = send(grid, "train", _train_content(np.array([101, 105, 109, 555])))
    assert not reply.has_error(), reply.error
    assert dict(reply.content["metrics"]) == {"loss": 0.5, "num-examples": 7}
    # Without verdicts (a server that screens nothing) every sample counts.
    assert dict(send(grid, "train", _train_content(None)).content["metrics"])[
        "num-examples"] == 10


def test_reply_counts_under_the_strategys_key():
    app = ClientApp()
    ids = np.arange(5)
    sieve = FedSieve(app, lambda context: (np.zeros((5, 28, 28), np.uint8), ids),
                     weighted_by_key="n")

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        sieve.keep_mask(msg, ids)
        return sieve.reply(msg, msg.content["arrays"])

    reply = send(LoopbackGrid({7: app}), "train", _train_content(np.array([0, 1])))
    assert dict(reply.content["metrics"]) == {"n": 3}


def test_a_count_over_what_was_kept_is_refused_before_sending():
    # The newcomer's mistake: the count before screening.
    app, _ = counting_app(num_examples=10)
    reply = send(LoopbackGrid({7: app}), "train", _train_content(np.array([101, 105, 109])))
    assert reply.has_error()
    reason = reply.error.reason
    assert "ValueError" in reason and "num_examples=10" in reason and "kept 7" in reason
    assert "over-reported" in reason and "leave num_examples out" in reason


def test_a_count_under_what_was_kept_is_accepted():
    # Training on part of the kept samples (a validation split held out) is legitimate.
    app, _ = counting_app(num_examples=5)
    reply = send(LoopbackGrid({7: app}), "train", _train_content(np.array([101, 105, 109])))
    assert not reply.has_error(), reply.error
    assert dict(reply.content["metrics"])["num-examples"] == 5


def test_a_count_in_the_metrics_is_checked_too():
    app = ClientApp()
    ids = np.arange(5)
    sieve = FedSieve(app, lambda context: (np.zeros((5, 28, 28), np.uint8), ids))

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        sieve.kept(msg, ids, ids)
        return sieve.reply(msg, msg.content["arrays"], metrics={"num-examples": 5})

    reply = send(LoopbackGrid({7: app}), "train", _train_content(np.array([0])))
    assert reply.has_error() and "num_examples=5" in reply.error.reason
    assert "kept 4" in reply.error.reason


def test_reply_without_kept_and_without_a_count_says_how_to_fix_it():
    app = ClientApp()
    sieve = FedSieve(app, lambda context: (np.zeros((5, 28, 28), np.uint8), np.arange(5)))
    msg = Message(_train_content(np.array([1])), dst_node_id=7, message_type="train")
    with pytest.raises(ValueError, match=r"cannot count.*sieve\.kept\(msg, ids.*num_examples="):
        sieve.reply(msg, ArrayRecord([np.zeros(2, np.float32)]))
    with pytest.raises(ValueError, match="non-negative integer, got -1"):
        sieve.reply(msg, ArrayRecord([np.zeros(2, np.float32)]), num_examples=-1)
    with pytest.raises(ValueError, match="non-negative integer, got 2.5"):
        sieve.reply(msg, ArrayRecord([np.zeros(2, np.float32)]), num_examples=2.5)
    # Two different kept() results for one message: which was trained on is not guessed.
    sieve.kept(msg, np.arange(5), np.arange(5))
    sieve.kept(msg, np.arange(3), np.arange(3))
    with pytest.raises(ValueError, match="kept 4, 2 samples"):
        sieve.reply(msg, ArrayRecord([np.zeros(2, np.float32)]))
    assert sieve.kept_count(msg) == 2
    with pytest.raises(ValueError, match="screened=False applies to evaluate"):
        sieve.kept(msg, np.arange(5), np.arange(5), screened=False)


def test_evaluation_sees_the_latest_train_verdicts_unless_told_otherwise():
    app, _ = counting_app()
    grid = LoopbackGrid({7: app})
    assert evaluated_ids(grid) == list(range(100, 110))  # no train message yet: all
    send(grid, "train", _train_content(np.array([101, 105])))
    assert evaluated_ids(grid) == [100, 102, 103, 104, 106, 107, 108, 109]
    assert evaluated_ids(grid, screened=False) == list(range(100, 110))
    send(grid, "train", _train_content(np.array([109])))  # a later screening's verdicts
    assert evaluated_ids(grid) == list(range(100, 109))


def test_the_verdicts_survive_a_new_app_object_through_the_nodes_context():
    # Flower's simulation hands every message a fresh copy of the ClientApp (Ray pickles it):
    # only the node's Context carries the verdicts from train to evaluate.
    first, _ = counting_app()
    grid = LoopbackGrid({7: first})
    send(grid, "train", _train_content(np.array([100, 103])))
    fresh, _ = counting_app()
    grid.apps[7] = fresh  # same node, same Context
    assert evaluated_ids(grid) == [101, 102, 104, 105, 106, 107, 108, 109]
    # Another run's Context starts without verdicts.
    grid.contexts[7] = Context(run_id=2, node_id=7, node_config={}, state=RecordDict(),
                               run_config={})
    assert evaluated_ids(grid) == list(range(100, 110))


def test_screen_evaluation_false_evaluates_on_every_sample():
    ids = np.arange(4)
    app = ClientApp()
    sieve = FedSieve(app, lambda context: (np.zeros((4, 28, 28), np.uint8), ids),
                     screen_evaluation=False)
    seen = {}

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        sieve.kept(msg, ids, ids)
        return sieve.reply(msg, msg.content["arrays"])

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        seen["default"] = sieve.kept(msg, ids, ids)[0].tolist()
        seen["asked"] = sieve.kept(msg, ids, ids, screened=True)[0].tolist()
        return Message(RecordDict(), reply_to=msg)

    grid = LoopbackGrid({7: app})
    send(grid, "train", _train_content(np.array([2])))
    send(grid, "evaluate", _train_content(None))
    assert seen == {"default": [0, 1, 2, 3], "asked": [0, 1, 3]}
