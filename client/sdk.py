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
        return sieve.reply(msg, model_record, num_examples=len(kept), metrics={...})

With arrays and ids of the user's own, ``samples`` returns a tuple::

    sieve = FedSieve(app, samples=lambda context: load_my_data(context)[::2])  # (x, ids)

    @app.train()
    def train(msg, context):
        x, y, ids = load_my_data(context)
        x, y = sieve.kept(msg, ids, x, y)

``samples(context)`` returns either

- a tuple ``(x, ids)`` or ``(x, ids, y)``: the local images (any batch
  :func:`~fedsieve.shared.images.check_images` reads: uint8 or float32 in [0, 1], grey or
  with channels), their ids (int64, unique) and optionally their labels; a tuple always means
  this, so arrays of images and labels go as ``(x, sieve.ids_for(x), y)``;
- or data :func:`~fedsieve.shared.sources.load_images` reads (a torch or Hugging Face
  ``Dataset``, an array or tensor of images): its images, and its labels when it has some, are
  uploaded under ids derived from the image content (:func:`~fedsieve.shared.sources.stable_ids`).
  :meth:`FedSieve.ids_for` and :meth:`FedSieve.kept_dataset` derive the same ids in the train
  handler, so the data must read the same each time: apply random augmentation after
  ``kept_dataset`` (a Hugging Face dataset is read as stored, its transforms aside). A dataset
  object is read (decoded) once and reused while it lives, so returning the same object from
  ``samples`` costs one read per process; return a new object when the data changes.

Labels let a server that runs a label check (``AnomalyFilter(label_check=...)``) also drop
samples whose label contradicts their image. The ids are how the server names what to drop.
When the server's inner strategy weights by another key than ``"num-examples"`` (Flower's
``FedAvg(weighted_by_key="n")``), pass the same key: ``FedSieve(app, samples,
weighted_by_key="n")``.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Callable
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedsieve.shared.devices import context_device
from fedsieve.shared.images import check_images
from fedsieve.shared.local_protocol import (
    SCORE_ACTION,
    SELF_TRAIN_ACTION,
    SPOT_CHECK_ACTION,
    LocalRequest,
    encode_scores,
    encode_spot_check,
    encode_update,
    requested_ids,
)
from fedsieve.shared.protocol import (
    UPLOAD_ACTION,
    UploadRequest,
    decode_verdicts,
    encode_upload,
)
from fedsieve.shared.sources import LoadedImages, load_images, stable_ids

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
        that :func:`~fedsieve.shared.sources.load_images` reads, whose ids are then derived
        from its images (see the module docstring).
    weighted_by_key : str, default "num-examples"
        The metric key :meth:`reply` writes the number of trained samples under: the key the
        server's inner strategy weights by (its ``weighted_by_key``; Flower's strategies use
        ``"num-examples"`` unless told otherwise). The server's AnomalyFilter reads the same
        key to check the count against what the client kept.
    image_key, label_key, layout : str, optional
        How to read a dataset ``samples`` returns, as in
        :func:`~fedsieve.shared.sources.load_images` (the image and label columns of a
        Hugging Face dataset; the layout of an ambiguous array).
    """

    def __init__(self, app: ClientApp, samples: SampleFn, *,
                 weighted_by_key: str = "num-examples", image_key: str | None = None,
                 label_key: str | None = None, layout: str | None = None) -> None:
        self.samples = samples
        self.weighted_by_key = weighted_by_key
        self._read = {"image_key": image_key, "label_key": label_key, "layout": layout}
        self._last_read: tuple[weakref.ref, LoadedImages] | None = None
        app.query(UPLOAD_ACTION)(self._upload)
        # Local screening (AnomalyFilter(mode="local")): the images stay here.
        app.query(SCORE_ACTION)(self._score)
        app.query(SELF_TRAIN_ACTION)(self._self_train)
        app.query(SPOT_CHECK_ACTION)(self._spot_check)

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
        return Message(content, reply_to=msg)

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
        return Message(encode_scores(ids, evidence, len(ids)), reply_to=msg)

    def _self_train(self, msg: Message, context: Context) -> Message:
        # Federated self-training: train the shipped BiGAN on the samples it keeps here.
        from fedsieve.shared.detectors.federated import local_update

        request = LocalRequest.from_content(msg.content)
        detector = request.detector(context_device(context))
        x, _ = self._local_samples(context)
        update = local_update(detector, x, steps=int(request.config["steps"]),
                              seed=int(request.config["seed"]),
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
            :func:`~fedsieve.shared.sources.load_images` reads), read the same way.

        Returns
        -------
        numpy.ndarray
            int64 (N,) ids derived from the images
            (:func:`~fedsieve.shared.sources.stable_ids`): unique, and the same each time the
            same data is read.
        """
        return _ids(self._load(data))

    @staticmethod
    def drop_ids(msg: Message) -> np.ndarray:
        """Ids the server asks this client to drop (empty when it sent none)."""
        return decode_verdicts(msg.content)

    def keep_mask(self, msg: Message, ids: np.ndarray) -> np.ndarray:
        """Boolean mask over ``ids``: True for samples the server kept."""
        return ~np.isin(np.asarray(ids), self.drop_ids(msg))

    def kept(self, msg: Message, ids: np.ndarray, *arrays: np.ndarray) -> tuple[np.ndarray, ...]:
        """The rows of each of ``arrays`` (aligned with ``ids``) that the server kept."""
        mask = self.keep_mask(msg, ids)
        return tuple(np.asarray(a)[mask] for a in arrays)

    def kept_dataset(self, msg: Message, ids_or_dataset: Any, dataset: Any = None) -> Any:
        """``dataset`` without the samples the server dropped.

        Called as ``kept_dataset(msg, ids, dataset)`` with ``ids`` aligned with the dataset's
        items, or as ``kept_dataset(msg, dataset)``, deriving the ids with :meth:`ids_for`
        (for a dataset ``samples(context)`` returns).

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
        kept = np.flatnonzero(self.keep_mask(msg, ids)).tolist()
        from datasets import Dataset as HFDataset

        if isinstance(dataset, HFDataset):
            return dataset.select(kept)
        from torch.utils.data import Subset

        return Subset(dataset, kept)

    def reply(self, msg: Message, arrays: ArrayRecord, num_examples: int,
              metrics: dict[str, float] | None = None) -> Message:
        """The train reply Flower's strategies expect: the model, and the number of samples
        trained on under :attr:`weighted_by_key`.

        ``num_examples`` must be the number of samples actually trained on; the server
        excludes a client that reports more than it kept.
        """
        record = MetricRecord({**(metrics or {}), self.weighted_by_key: int(num_examples)})
        return Message(RecordDict({"arrays": arrays, "metrics": record}), reply_to=msg)


def _ids(data: LoadedImages) -> np.ndarray:
    # load_images returns (N, C, H, W): say so, for images of more than 4 channels.
    return stable_ids(data.images, layout="NCHW")
