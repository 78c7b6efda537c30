"""Flower's deployment engine: the same ServerApp and ClientApp as ``workbench federate``, on several machines.

``flwr run`` loads ``server_app`` and ``client_app`` from this module (the Flower app's pyproject names them:
``serverapp = "workbench.federated.deploy:server_app"``, ``clientapp = "workbench.federated.deploy:client_app"``;
docs/federated.md has the whole snippet). A SuperLink runs the ServerApp, each data holder a SuperNode started
with ``--node-config "partition-id=C"`` (its index in the layout) and the data file at the path the run config
names. The run config (``[tool.flwr.app.config]``, or ``flwr run --run-config``) carries the public settings:

    config = "run.yaml"        # a workbench run config (empty: the defaults)
    set = "privacy.target_epsilon=4;batch_size=8"   # its overrides, ';'-separated (as --set)
    clients = 4, rounds = 10, clients-per-round = 2, partition = "by-user", privacy-level = "client",
    local-steps = 1, ffa = false, name = ""

The ServerApp stores the run in the SuperLink machine's run store (WORKBENCH_HOME) with its events, its summary and
its privacy-ledger row, as a simulated run; its secret key (client sampling, the noise) never leaves that process.
Each node builds the same layout from the same public settings and trains only its own partition (run.py).
"""

from __future__ import annotations

from flwr.app import Context, Message
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from workbench.config import RunConfig
from workbench.federated.options import FederatedOptions
from workbench.federated.partition import FederatedError

DEFAULTS = {
    "config": "",
    "set": "",
    "clients": 10,
    "rounds": 20,
    "clients-per-round": 4,
    "partition": "by-user",
    "privacy-level": "client",
    "local-steps": 1,
    "ffa": False,
    "name": "",
}


def settings_from(run_config: dict) -> tuple[RunConfig, FederatedOptions, str | None]:
    """(the workbench config, the federated options, the run's name) from a Flower run config (module
    docstring); FederatedError or ConfigError (one message) for a bad one."""
    unknown = sorted(set(run_config) - set(DEFAULTS))
    if unknown:
        raise FederatedError(
            f"unknown key(s) in the Flower run config: {', '.join(unknown)}. Known: {', '.join(DEFAULTS)}."
        )
    values = {**DEFAULTS, **run_config}
    base = RunConfig.from_file(values["config"]) if values["config"] else RunConfig()
    config = base.with_overrides([s.strip() for s in str(values["set"]).split(";") if s.strip()])
    counts = {k: int(values[k]) for k in ("clients", "rounds", "clients-per-round", "local-steps")}
    options = FederatedOptions(
        clients=counts["clients"],
        rounds=counts["rounds"],
        clients_per_round=counts["clients-per-round"],
        partition=str(values["partition"]),
        privacy_level=str(values["privacy-level"]),
        local_steps=counts["local-steps"],
        ffa=bool(values["ffa"]),
    )
    return config, options, str(values["name"]) or None


server_app = ServerApp()
client_app = ClientApp()


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    """One stored run on the deployment's grid (run.py ``FederatedRun``: DPFedAvg, the events, the ledger row)."""
    from workbench.federated.run import FederatedRun
    from workbench.store.runs import RunStore

    config, options, name = settings_from(dict(context.run_config))
    run = FederatedRun(config, options, store=RunStore(), name=name)
    summary = run.stored(lambda: run.serve(grid))
    print(f"workbench: federated run {summary['run_id']} {summary['status']}: {summary['reason']}")


@client_app.train()
def train(msg: Message, context: Context) -> Message:
    """A node's round on its partition (``partition-id`` of its node config), as in the simulation."""
    from workbench.federated.run import _spec, reply

    config, options, _ = settings_from(dict(context.run_config))
    return reply(_spec(config, options), msg, context)
