"""Run a ServerApp and a ClientApp in Flower's simulation engine, in this process.

Flower 1.41 deprecates ``flwr.simulation.run_simulation``, its only public in-process entry
point, and prints so in every run: it asks for ``flwr run``. ``flwr run . local`` (what the
README gives for a user's own app) hands the project to a local SuperLink, which starts
Flower's simulation runtime (``flwr-simulation``, :mod:`flwr.simulation.app`); that runtime
loads the two apps and runs them with ``flwr.simulation.run_simulation._run_simulation``.
``run_simulation`` is a wrapper around the same function that adds the deprecation warning.

fedsieve's harness (``fedsieve simulate``, sweeps, benchmarks, tests) builds its apps around
settings objects in this process and must run from an installed package in any directory, on
a machine where other runs go on at once. ``flwr run`` would add a SuperLink process that
outlives the command (on fixed local ports, with its state under ``~/.flwr``), package the
working directory as an app, and restart both apps from that package. So :func:`run_apps`
calls the engine function that Flower's own runtime calls. It is not public API: fedsieve pins
``flwr<1.42``, and when a Flower release no longer has it, :func:`run_apps` falls back to the
public ``run_simulation`` (results unchanged, the deprecation warning back).
"""

from __future__ import annotations

from flwr.clientapp import ClientApp
from flwr.serverapp import ServerApp


def run_apps(server_app: ServerApp, client_app: ClientApp, num_supernodes: int, *,
             backend_config: dict | None = None, verbose: bool = False) -> None:
    """Run ``server_app`` against ``num_supernodes`` simulated nodes running ``client_app``.

    Parameters
    ----------
    server_app : flwr.serverapp.ServerApp
        The ServerApp; it runs in a thread of this process.
    client_app : flwr.clientapp.ClientApp
        The ClientApp every simulated node runs (in Ray actors with the default backend).
    num_supernodes : int
        Simulated nodes (SuperNodes).
    backend_config : dict, optional
        Flower's backend configuration (``client_resources``, ``init_args``, ``actor``), as
        for ``run_simulation``.
    verbose : bool, default False
        Flower's DEBUG log too.

    Raises
    ------
    RuntimeError
        Flower's engine failed (the ServerApp's own exception is raised as it is).
    """
    try:
        from flwr.simulation.run_simulation import _run_simulation
        from flwr.supercore.telemetry import EventType
    except ImportError:  # a Flower without the engine function: its public (deprecated) API
        from flwr.simulation import run_simulation

        run_simulation(server_app, client_app, num_supernodes=num_supernodes,
                       backend_config=backend_config, verbose_logging=verbose)
        return
    _run_simulation(num_supernodes=num_supernodes, client_app=client_app,
                    server_app=server_app, backend_name="ray", backend_config=backend_config,
                    verbose_logging=verbose,
                    exit_event=EventType.PYTHON_API_RUN_SIMULATION_LEAVE)
