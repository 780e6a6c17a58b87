"""The fedsieve client SDK: answer the server's screening and train on what it kept.

A Flower user adds it to an existing ClientApp in a few lines::

    from flwr.clientapp import ClientApp
    from fedsieve.client import FedSieve

    app = ClientApp()
    sieve = FedSieve(app, samples=lambda context: load_my_data(context)[::2])  # (x, ids)

    @app.train()
    def train(msg, context):
        x, y, ids = load_my_data(context)
        x, y = sieve.kept(msg, ids, x, y)        # the server's drops are gone
        ...                                       # the user's own training
        return sieve.reply(msg, model_record, num_examples=len(x), metrics={...})

``samples(context)`` returns the client's local images (uint8 (N, 28, 28) or float32 in
[0, 1]) and their ids (int64, unique), and optionally their labels as a third item: a server
that runs a label check (``AnomalyFilter(label_check=...)``) then also drops samples whose
label contradicts their image. The ids are how the server names what to drop. When the
server's inner strategy weights by another key than ``"num-examples"`` (Flower's
``FedAvg(weighted_by_key="n")``), pass the same key: ``FedSieve(app, samples,
weighted_by_key="n")``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedsieve.shared.protocol import (
    UPLOAD_ACTION,
    UploadRequest,
    decode_verdicts,
    encode_upload,
)

#: ``samples(context) -> (x, ids)`` or ``(x, ids, y)``.
SampleFn = Callable[[Context], tuple[np.ndarray, ...]]


class FedSieve:
    """Registers the upload handler on ``app`` and filters local data by the server's verdicts.

    Parameters
    ----------
    app : flwr.clientapp.ClientApp
        The user's ClientApp; a ``query`` handler named :data:`UPLOAD_ACTION` is added.
    samples : callable
        ``samples(context) -> (x, ids)`` or ``(x, ids, y)``: the local samples, their ids
        and, when the server should check labels too, their labels (integers).
    weighted_by_key : str, default "num-examples"
        The metric key :meth:`reply` writes the number of trained samples under: the key the
        server's inner strategy weights by (its ``weighted_by_key``; Flower's strategies use
        ``"num-examples"`` unless told otherwise). The server's AnomalyFilter reads the same
        key to check the count against what the client kept.
    """

    def __init__(self, app: ClientApp, samples: SampleFn, *,
                 weighted_by_key: str = "num-examples") -> None:
        self.samples = samples
        self.weighted_by_key = weighted_by_key
        app.query(UPLOAD_ACTION)(self._upload)

    def _upload(self, msg: Message, context: Context) -> Message:
        request = UploadRequest.from_content(msg.content)
        samples = self.samples(context)
        if not isinstance(samples, tuple | list) or len(samples) not in (2, 3):
            raise TypeError("samples(context) must return (x, ids) or (x, ids, y), got "
                            f"{type(samples).__name__}")
        return Message(encode_upload(*samples[:2], request,
                                     y=samples[2] if len(samples) == 3 else None),
                       reply_to=msg)

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

    def kept_dataset(self, msg: Message, ids: np.ndarray, dataset: Any):
        """A ``torch.utils.data.Subset`` of ``dataset`` (indexed like ``ids``) without the drops."""
        from torch.utils.data import Subset

        return Subset(dataset, np.flatnonzero(self.keep_mask(msg, ids)).tolist())

    def reply(self, msg: Message, arrays: ArrayRecord, num_examples: int,
              metrics: dict[str, float] | None = None) -> Message:
        """The train reply Flower's strategies expect: the model, and the number of samples
        trained on under :attr:`weighted_by_key`.

        ``num_examples`` must be the number of samples actually trained on; the server
        excludes a client that reports more than it kept.
        """
        record = MetricRecord({**(metrics or {}), self.weighted_by_key: int(num_examples)})
        return Message(RecordDict({"arrays": arrays, "metrics": record}), reply_to=msg)
