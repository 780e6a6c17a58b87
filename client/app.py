"""The example ClientApp: the MNIST classifier trained on the samples the server kept.

``app`` reads its settings from Flower's run config; :func:`make_client_app` builds the same
app around explicit settings (what ``fedsieve simulate`` uses).
"""

from __future__ import annotations

from flwr.app import ArrayRecord, Context, Message
from flwr.clientapp import ClientApp

from fedsieve.client.sdk import FedSieve
from fedsieve.client.task import load_local_data
from fedsieve.shared.config import RunSettings
from fedsieve.shared.devices import context_device
from fedsieve.shared.task.classifier import train_local
from fedsieve.shared.task.example_data import example_classifier


def make_client_app(settings: RunSettings | None = None) -> ClientApp:
    """A ClientApp with the fedsieve SDK; ``settings`` None means: read the run config."""
    app = ClientApp()

    def settings_of(context: Context) -> RunSettings:
        return settings or RunSettings.from_run_config(context.run_config)

    def samples(context: Context):
        # Labels go up too: a server with a label check drops contradicted ones.
        data = load_local_data(context, settings_of(context))
        return data.x, data.ids, data.y

    sieve = FedSieve(app, samples)

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        run = settings_of(context)
        data = load_local_data(context, run)
        x, y = sieve.kept(msg, data.ids, data.x, data.y)
        model = example_classifier(run.task)
        model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
        server_round = int(msg.content["config"].get("server-round", 0))
        task = run.task
        loss = train_local(model, x, y, epochs=task.local_epochs, batch_size=task.batch_size,
                           lr=task.learning_rate,
                           seed=run.seed * 100_003 + server_round * 1_009 + _partition(context),
                           device=context_device(context, run.filter.device))
        # The SDK reports len(x), the samples kept() returned, under the strategy's key.
        return sieve.reply(msg, ArrayRecord(model.state_dict()), metrics={"train-loss": loss})

    return app


def _partition(context: Context) -> int:
    return int(context.node_config.get("partition-id", 0))


app = make_client_app()
