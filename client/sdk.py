"""The fedsieve client SDK: answer the server's screening and train on what it kept.

A Flower user adds it to an existing ClientApp in a few lines. With a dataset (a torch
``Dataset``, a Hugging Face or flwr-datasets ``Dataset``, or an array of images), the ids the
server names come from the images themselves::

    from flwr.clientapp import ClientApp
    from flwr_datasets import FederatedDataset
    from fedsieve.client import FedSieve

    fds = FederatedDataset(dataset="uoft-cs/cifar10", partitioners={"train": 10})

    def local_data(context):
        return fds.load_partition(context.node_config["partition-id"])

    app = ClientApp()
    sieve = FedSieve(app, samples=local_data)

    @app.train()
    def train(msg, context):
        kept = sieve.kept_dataset(msg, local_data(context))  # the server's drops are gone
        ...                                                   # the user's own training
        return sieve.reply(msg, model_record, metrics={"train-loss": loss})  # counts len(kept)

    @app.evaluate()
    def evaluate(msg, context):
        kept = sieve.kept_dataset(msg, local_data(context))  # the last train round's drops
        ...

With arrays and ids of the user's own, ``samples`` returns a tuple::

    sieve = FedSieve(app, samples=lambda context: load_my_data(context)[::2])  # (x, ids)

    @app.train()
    def train(msg, context):
        x, y, ids = load_my_data(context)
        x, y = sieve.kept(msg, ids, x, y)

``samples(context)`` returns either

- a tuple ``(x, ids)`` or ``(x, ids, y)``: the local images (any batch
  :func:`~fedsieve.shared.data.images.check_images` reads: uint8 or float32 in [0, 1], grey or
  with channels), their ids (int64, unique) and optionally their labels; a tuple always means
  this, so arrays of images and labels go as ``(x, sieve.ids_for(x), y)``;
- or data :func:`~fedsieve.shared.data.sources.load_images` reads (a torch or Hugging Face
  ``Dataset``, an array or tensor of images): its images, and its labels when it has some, are
  uploaded under ids derived from the image content
  (:func:`~fedsieve.shared.data.sources.stable_ids`).
  :meth:`FedSieve.ids_for` and :meth:`FedSieve.kept_dataset` derive the same ids in the train
  handler, so the data must read the same each time: apply random augmentation after
  ``kept_dataset`` (a Hugging Face dataset is read as stored, its transforms aside). A dataset
  object is read (decoded) once and reused while it lives, so returning the same object from
  ``samples`` costs one read per process; return a new object when the data changes.

**Counting.** :meth:`FedSieve.reply` reports the number of samples the last
:meth:`~FedSieve.kept` / :meth:`~FedSieve.kept_dataset` / :meth:`~FedSieve.keep_mask` call kept
for that train message (several calls that kept different numbers need an explicit count),
under the key the server's strategy weights by; a ``num_examples``
passed explicitly may be smaller (training on part of the kept samples), never larger: the
server would exclude the client as over-reported, so :meth:`~FedSieve.reply` refuses it first.

**Evaluation.** The server sends its verdicts in train messages only. The SDK remembers the
latest ones this node received (in ``context.state``, which Flower keeps for each node across
a run, and in memory), so ``kept`` / ``kept_dataset`` in an ``@app.evaluate()`` handler drop
the same samples: local evaluation sees the screened data. ``FedSieve(...,
screen_evaluation=False)`` or ``kept(..., screened=False)`` evaluates on every sample.
Before a node's first train message, nothing is dropped.

Labels let a server that runs a label check (``UploadScreening(..., label_check=...)``) also
drop samples whose label contradicts their image. The ids are how the server names what to drop.
When the server's inner strategy weights by another key than ``"num-examples"`` (Flower's
``FedAvg(weighted_by_key="n")``), pass the same key: ``FedSieve(app, samples,
weighted_by_key="n")``.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedsieve.shared.data.images import check_images
from fedsieve.shared.data.sources import LoadedImages, load_images, stable_ids
from fedsieve.shared.devices import context_device
from fedsieve.shared.protocol.local import (
    SCORE_ACTION,
    SELF_TRAIN_ACTION,
    SPOT_CHECK_ACTION,
    LocalRequest,
    encode_scores,
    encode_spot_check,
    encode_update,
    requested_ids,
)
from fedsieve.shared.protocol.upload import (
    UPLOAD_ACTION,
    VERDICT_RECORD,
    UploadRequest,
    decode_verdicts,
    encode_upload,
    encode_verdicts,
    tag_partition,
)

#: Where a node's latest verdicts are kept in ``context.state`` between messages.
CACHED_VERDICTS = "fedsieve.latest-verdicts"
#: Train messages whose kept counts are remembered at once (one is handled at a time).
_MAX_TRACKED_MESSAGES = 64

#: ``samples(context) -> (x, ids)``, ``(x, ids, y)`` or a dataset (see the module docstring).
SampleFn = Callable[[Context], Any]


class FedSieve:
    """Registers the upload handler on ``app`` and filters local data by the server's verdicts.

    Parameters
    ----------
    app : flwr.clientapp.ClientApp
        The user's ClientApp; a ``query`` handler named :data:`UPLOAD_ACTION` is added.
    samples : callable
        ``samples(context)`` returns ``(x, ids)`` or ``(x, ids, y)`` (the local samples, their
        ids and, when the server should check labels too, their integer labels), or a dataset
        that :func:`~fedsieve.shared.data.sources.load_images` reads, whose ids are then derived
        from its images (see the module docstring).
    weighted_by_key : str, default "num-examples"
        The metric key :meth:`reply` writes the number of trained samples under: the key the
        server's inner strategy weights by (its ``weighted_by_key``; Flower's strategies use
        ``"num-examples"`` unless told otherwise). The server's AnomalyFilter reads the same
        key to check the count against what the client kept.
    image_key, label_key, layout : str, optional
        How to read a dataset ``samples`` returns, as in
        :func:`~fedsieve.shared.data.sources.load_images` (the image and label columns of a
        Hugging Face dataset; the layout of an ambiguous array).
    screen_evaluation : bool, default True
        Whether :meth:`kept`, :meth:`kept_dataset` and :meth:`keep_mask` drop, in an
        evaluate (or query) message, the samples the server's latest verdicts dropped in
        training; False evaluates on every local sample. ``screened=`` on each call
        overrides it.
    """

    def __init__(self, app: ClientApp, samples: SampleFn, *,
                 weighted_by_key: str = "num-examples", image_key: str | None = None,
                 label_key: str | None = None, layout: str | None = None,
                 screen_evaluation: bool = True) -> None:
        self.samples = samples
        self.weighted_by_key = weighted_by_key
        self.screen_evaluation = screen_evaluation
        self._read = {"image_key": image_key, "label_key": label_key, "layout": layout}
        self._reset_caches()
        app.query(UPLOAD_ACTION)(self._upload)
        # Local screening (LocalScreening on the server): the images stay here.
        app.query(SCORE_ACTION)(self._score)
        app.query(SELF_TRAIN_ACTION)(self._self_train)
        app.query(SPOT_CHECK_ACTION)(self._spot_check)
        # Remember each train message's verdicts in context.state for the evaluate handler.
        # Flower 1.41's ClientApp takes app-wide mods only in its constructor, which keeps
        # them in ``_mods`` and wraps every handler registered afterwards with them: the
        # user's own train and evaluate handlers, registered after FedSieve(app, ...).
        mods = getattr(app, "_mods", None)
        if isinstance(mods, list):
            mods.append(self._remember_verdicts)

    def _reset_caches(self) -> None:
        self._last_read: tuple[weakref.ref, LoadedImages] | None = None
        self._lock = threading.Lock()
        # (run id, node id) -> the latest drop ids this node received in a train message.
        self._verdicts: dict[tuple[int, int], np.ndarray] = {}
        # id(message) -> (message, its cached verdicts) while an evaluate handler runs.
        self._handling: dict[int, tuple[Message, np.ndarray]] = {}
        # id(train message) -> (message, kept counts of its keep_mask calls), the latest few.
        self._counts: OrderedDict[int, tuple[Message, list[int]]] = OrderedDict()

    def __getstate__(self) -> dict:
        # Flower's Ray backend pickles the ClientApp, this object with it, for every message:
        # the caches stay behind (the verdicts travel in the node's context.state instead).
        return {k: v for k, v in self.__dict__.items()
                if k not in ("_last_read", "_lock", "_verdicts", "_handling", "_counts")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._reset_caches()

    def _upload(self, msg: Message, context: Context) -> Message:
        request = UploadRequest.from_content(msg.content)
        samples = self.samples(context)
        if isinstance(samples, tuple | list):
            if len(samples) not in (2, 3):
                raise TypeError("samples(context) must return (x, ids), (x, ids, y) or a "
                                f"dataset, got a {type(samples).__name__} of {len(samples)}")
            content = encode_upload(*samples[:2], request,
                                    y=samples[2] if len(samples) == 3 else None,
                                    layout=self._read["layout"])
        else:
            data = self._load(samples)
            content = encode_upload(data.images, _ids(data), request, y=data.labels,
                                    layout="NCHW")
        return Message(tag_partition(content, context.node_config), reply_to=msg)

    def _local_samples(self, context: Context) -> tuple[np.ndarray, np.ndarray]:
        """The local images (uint8 (N, C, H, W), as they would be uploaded) and their ids."""
        samples = self.samples(context)
        if isinstance(samples, tuple | list):
            if len(samples) not in (2, 3):
                raise TypeError("samples(context) must return (x, ids), (x, ids, y) or a "
                                f"dataset, got a {type(samples).__name__} of {len(samples)}")
            x, ids = samples[0], np.asarray(samples[1])
            if hasattr(x, "detach") and hasattr(x, "numpy"):  # a torch tensor
                x = x.detach().cpu().numpy()
            if len(x) != len(ids):
                raise ValueError(f"{len(x)} samples but {len(ids)} ids; give one id per sample")
            return check_images(x, "local samples", dtype=np.uint8, allow_empty=True,
                                layout=self._read["layout"]), ids.astype(np.int64)
        data = self._load(samples)
        return data.images, _ids(data)

    def _score(self, msg: Message, context: Context) -> Message:
        # Local screening: score the local samples with the shipped detector; only the ids and
        # each sample's evidence (a few float16 numbers) go back.
        detector = LocalRequest.from_content(msg.content).detector(context_device(context))
        x, ids = self._local_samples(context)
        evidence = detector.score_evidence(x, layout="NCHW")
        return Message(tag_partition(encode_scores(ids, evidence, len(ids)),
                                     context.node_config), reply_to=msg)

    def _self_train(self, msg: Message, context: Context) -> Message:
        # Federated self-training: train the shipped BiGAN on the samples it keeps here.
        from fedsieve.shared.detectors.federated import data_seed, local_update

        request = LocalRequest.from_content(msg.content)
        detector = request.detector(context_device(context))
        x, ids = self._local_samples(context)
        update = local_update(detector, x, steps=int(request.config["steps"]),
                              seed=data_seed(int(request.config["seed"]), ids),
                              first_round=bool(request.config["first-round"]))
        return Message(encode_update(update.state, update.residual_sum, update.num_normal),
                       reply_to=msg)

    def _spot_check(self, msg: Message, context: Context) -> Message:
        # The server verifies some of the evidence this client reported: their images go up.
        asked = requested_ids(msg.content)
        x, ids = self._local_samples(context)
        position = {int(i): k for k, i in enumerate(ids)}
        unknown = [int(i) for i in asked if int(i) not in position]
        if unknown:
            raise ValueError(f"the spot check asks for ids this client does not hold: "
                             f"{unknown[:5]}")
        rows = np.array([position[int(i)] for i in asked], dtype=np.int64)
        return Message(encode_spot_check(x[rows], ids[rows]), reply_to=msg)

    def _load(self, data: Any) -> LoadedImages:
        # Every upload chunk and every ids_for / kept_dataset call asks for the same dataset
        # object: read (decode) it once while that object lives. Paths and arrays, which may
        # change between calls, are read each time.
        cached = self._last_read
        if cached is not None and cached[0]() is data:
            return cached[1]
        try:
            loaded = load_images(data, **self._read)
        except ValueError as exc:
            raise ValueError(f"cannot read the samples' images: {exc}. samples(context) must "
                             "return (x, ids), (x, ids, y) or a dataset") from exc
        if not isinstance(data, str | os.PathLike | np.ndarray):
            try:
                self._last_read = (weakref.ref(data), loaded)
            except TypeError:  # an object without weak references: not cached
                pass
        return loaded

    def ids_for(self, data: Any) -> np.ndarray:
        """The ids the upload handler gives the samples of ``data``.

        Parameters
        ----------
        data : object
            What ``samples(context)`` returns when it returns a dataset (or any source
            :func:`~fedsieve.shared.data.sources.load_images` reads), read the same way.

        Returns
        -------
        numpy.ndarray
            int64 (N,) ids derived from the images
            (:func:`~fedsieve.shared.data.sources.stable_ids`): unique, and the same each time the
            same data is read.
        """
        return _ids(self._load(data))

    def _remember_verdicts(self, msg: Message, context: Context,
                           call_next: Callable[[Message, Context], Message]) -> Message:
        """A ClientApp mod: keep a train message's verdicts in ``context.state`` (Flower keeps
        it for this node across the run, whichever process runs the next message) and hand
        them to :meth:`keep_mask` while an evaluate or query handler runs."""
        if _kind(msg) == MessageType.TRAIN:
            if VERDICT_RECORD in msg.content.array_records:
                drops = decode_verdicts(msg.content)
                context.state[CACHED_VERDICTS] = encode_verdicts(drops)
                self._remember(msg, drops)
            return call_next(msg, context)
        cached = context.state.array_records.get(CACHED_VERDICTS)
        if cached is None:
            return call_next(msg, context)
        with self._lock:
            self._handling[id(msg)] = (msg, cached["drop-ids"].numpy())
        try:
            return call_next(msg, context)
        finally:
            with self._lock:
                self._handling.pop(id(msg), None)

    def _remember(self, msg: Message, drops: np.ndarray) -> None:
        key = (int(msg.metadata.run_id), int(msg.metadata.dst_node_id))
        with self._lock:
            self._verdicts[key] = drops

    def drop_ids(self, msg: Message, *, screened: bool | None = None) -> np.ndarray:
        """Ids of the samples to leave out for ``msg``.

        Parameters
        ----------
        msg : flwr.app.Message
            The message being handled. A train message carries the server's verdicts (none
            when the server screens nothing). For any other message (evaluate, query) these
            are the verdicts of the latest train message this node received in the run.
        screened : bool, optional
            For a message other than train: False leaves nothing out. None (default): the
            constructor's ``screen_evaluation``.

        Returns
        -------
        numpy.ndarray
            int64 ids; empty when nothing is dropped (or this node has not trained yet).

        Raises
        ------
        ValueError
            ``screened=False`` for a train message: the server excludes a client that trains
            on samples it dropped.
        """
        if _kind(msg) == MessageType.TRAIN:
            if screened is False:
                raise ValueError("screened=False applies to evaluate and query messages; a "
                                 "train message's verdicts always apply (the server excludes "
                                 "a client that reports training on more than it kept)")
            drops = decode_verdicts(msg.content)
            if VERDICT_RECORD in msg.content.array_records:
                self._remember(msg, drops)
            return drops
        if not (self.screen_evaluation if screened is None else screened):
            return np.empty(0, np.int64)
        with self._lock:
            handling = self._handling.get(id(msg))
            if handling is not None and handling[0] is msg:
                return handling[1]
            key = (int(msg.metadata.run_id), int(msg.metadata.dst_node_id))
            return self._verdicts.get(key, np.empty(0, np.int64))

    def keep_mask(self, msg: Message, ids: np.ndarray, *,
                  screened: bool | None = None) -> np.ndarray:
        """Boolean mask over ``ids``: True for the samples the server kept.

        For a train message, the number of True entries is what :meth:`reply` reports unless
        told otherwise. ``screened`` is as in :meth:`drop_ids`.
        """
        mask = ~np.isin(np.asarray(ids), self.drop_ids(msg, screened=screened))
        if _kind(msg) == MessageType.TRAIN:
            with self._lock:
                entry = self._counts.pop(id(msg), None)
                if entry is None or entry[0] is not msg:
                    entry = (msg, [])
                entry[1].append(int(mask.sum()))
                self._counts[id(msg)] = entry  # the most recent last
                while len(self._counts) > _MAX_TRACKED_MESSAGES:
                    self._counts.popitem(last=False)
        return mask

    def kept(self, msg: Message, ids: np.ndarray, *arrays: np.ndarray,
             screened: bool | None = None) -> tuple[np.ndarray, ...]:
        """The rows of each of ``arrays`` (aligned with ``ids``) that the server kept.

        In a train message the server's verdicts; in an evaluate message, by default, those
        of this node's latest train message (``screened`` as in :meth:`drop_ids`).
        """
        mask = self.keep_mask(msg, ids, screened=screened)
        return tuple(np.asarray(a)[mask] for a in arrays)

    def kept_dataset(self, msg: Message, ids_or_dataset: Any, dataset: Any = None, *,
                     screened: bool | None = None) -> Any:
        """``dataset`` without the samples the server dropped.

        Called as ``kept_dataset(msg, ids, dataset)`` with ``ids`` aligned with the dataset's
        items, or as ``kept_dataset(msg, dataset)``, deriving the ids with :meth:`ids_for`
        (for a dataset ``samples(context)`` returns). In an evaluate message, by default, the
        drops of this node's latest train message apply (``screened`` as in
        :meth:`drop_ids`).

        Returns
        -------
        datasets.Dataset or torch.utils.data.Subset
            ``dataset.select(kept)`` for a Hugging Face dataset (keeping its format and
            transforms), otherwise a ``torch.utils.data.Subset`` of ``dataset``.

        Raises
        ------
        ValueError
            ``ids`` and ``dataset`` differ in length.
        """
        if dataset is None:
            dataset, ids = ids_or_dataset, self.ids_for(ids_or_dataset)
        else:
            ids = np.asarray(ids_or_dataset)
        if len(ids) != len(dataset):
            raise ValueError(f"{len(ids)} ids for a dataset of {len(dataset)} samples; give one "
                             "id per sample, in the dataset's order")
        kept = np.flatnonzero(self.keep_mask(msg, ids, screened=screened)).tolist()
        from datasets import Dataset as HFDataset

        if isinstance(dataset, HFDataset):
            return dataset.select(kept)
        from torch.utils.data import Subset

        return Subset(dataset, kept)

    def kept_count(self, msg: Message) -> int | None:
        """How many samples the latest :meth:`keep_mask` call (or :meth:`kept`,
        :meth:`kept_dataset`) kept for the train message ``msg``; None before any."""
        counts = self._kept_counts(msg)
        return counts[-1] if counts else None

    def _kept_counts(self, msg: Message) -> list[int]:
        with self._lock:
            entry = self._counts.get(id(msg))
        return list(entry[1]) if entry is not None and entry[0] is msg else []

    def reply(self, msg: Message, arrays: ArrayRecord, num_examples: int | None = None,
              metrics: dict[str, float] | None = None) -> Message:
        """The train reply Flower's strategies expect: the model, and the number of samples
        trained on under :attr:`weighted_by_key`.

        Parameters
        ----------
        msg : flwr.app.Message
            The train message being answered.
        arrays : flwr.app.ArrayRecord
            The trained model.
        num_examples : int, optional
            The number of samples trained on. None (the default): the number the latest
            :meth:`kept` / :meth:`kept_dataset` / :meth:`keep_mask` call for ``msg`` kept. A
            smaller number is accepted (training on part of the kept samples).
        metrics : dict, optional
            Further metrics for the strategy to aggregate (numbers, e.g. ``{"train-loss":
            0.3}``). A count under :attr:`weighted_by_key` here counts as ``num_examples``.

        Returns
        -------
        flwr.app.Message
            The reply, with ``"arrays"`` and ``"metrics"`` records.

        Raises
        ------
        ValueError
            The count is larger than what was kept (the server would exclude this client as
            over-reported), not a non-negative integer, or missing while nothing was kept
            through this SDK for ``msg``.
        """
        metrics = dict(metrics or {})
        key = self.weighted_by_key
        if key in metrics:
            if num_examples is not None and metrics[key] != num_examples:
                raise ValueError(f"reply() got num_examples={num_examples} and "
                                 f"metrics[{key!r}]={metrics[key]}; give the count once")
            num_examples = metrics.pop(key)
        counts = self._kept_counts(msg)
        if num_examples is None:
            if not counts:
                raise ValueError(
                    "reply() cannot count the samples trained on: no kept(), kept_dataset() "
                    "or keep_mask() call saw this train message. Filter the local data with "
                    "sieve.kept(msg, ids, ...) or sieve.kept_dataset(msg, ...) first, or pass "
                    "num_examples=<the number of samples trained on>")
            if len(set(counts)) > 1:
                raise ValueError(
                    f"reply() cannot tell which of the kept() calls for this message was the "
                    f"training data (they kept {', '.join(map(str, counts))} samples); pass "
                    "num_examples=<the number of samples trained on>")
            num_examples = counts[0]
        if isinstance(num_examples, float | np.floating) and float(num_examples).is_integer():
            num_examples = int(num_examples)  # a count that went through a float metric
        if (isinstance(num_examples, bool)
                or not isinstance(num_examples, int | np.integer) or num_examples < 0):
            raise ValueError(f"num_examples must be a non-negative integer, got "
                             f"{num_examples!r}")
        if counts and num_examples > max(counts):
            kept = max(counts)
            raise ValueError(
                f"num_examples={int(num_examples)} but the server's verdicts kept {kept} of "
                f"the samples given to kept()/kept_dataset(); the server would exclude this "
                f"client as over-reported. Report the samples trained on, after screening "
                f"(len of what kept() returned), or leave num_examples out and the SDK "
                f"reports {kept}")
        record = MetricRecord({**metrics, key: int(num_examples)})
        return Message(RecordDict({"arrays": arrays, "metrics": record}), reply_to=msg)


def _kind(msg: Message) -> str:
    """The message's category: ``"train"`` for ``"train"`` and ``"train.<action>"``."""
    return msg.metadata.message_type.split(".", 1)[0]


def _ids(data: LoadedImages) -> np.ndarray:
    # load_images returns (N, C, H, W): say so, for images of more than 4 channels.
    return stable_ids(data.images, layout="NCHW")
