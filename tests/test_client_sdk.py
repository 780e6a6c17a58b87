"""The client SDK's train reply names its sample count the way the server's strategy weights."""

from __future__ import annotations

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from fedsieve.client import FedSieve
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
