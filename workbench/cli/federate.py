"""The `workbench federate` command (``register(app)`` adds it to the CLI's app): federated DP-LoRA on Flower.

    workbench federate --config run.yaml --clients 10 --rounds 20 --clients-per-round 4 \\
        [--partition by-user|by-column:NAME|dirichlet:ALPHA] [--privacy-level client|record|subject] [--ffa]

K simulated clients through Flower's simulation engine (Ray), one stored run whose rounds are its steps (the app's
Runs and Compare tabs show it like any run). Bad input prints one line ("error: ...") and exits 2.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from workbench.cli import common


def federate_cmd(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="The run config (YAML or JSON)."),
    set_: list[str] = typer.Option([], "--set", "-s", help="Override a config key: --set privacy.target_epsilon=4."),
    clients: int = typer.Option(..., "--clients", "-k", help="K: the number of clients (data holders)."),
    rounds: int = typer.Option(..., "--rounds", "-r", help="R: the number of rounds."),
    clients_per_round: int = typer.Option(
        ..., "--clients-per-round", "-m", help="M: clients expected each round (each Poisson-sampled at M/K)."
    ),
    partition: str = typer.Option(
        "by-user", "--partition", "-p", help="by-user, by-column:NAME (e.g. a clinic column) or dirichlet:ALPHA."
    ),
    privacy_level: str = typer.Option(
        "client",
        "--privacy-level",
        help="client (DP-FedAvg: the server's noise), record (each client's DP-SGD) or subject (a person across "
        "clients; needs privacy.unit=user).",
    ),
    local_steps: int = typer.Option(1, "--local-steps", help="Steps of the engine each client takes per round."),
    ffa: bool = typer.Option(False, "--ffa", help="FFA-LoRA: A frozen, only B trained and aggregated."),
    name: Optional[str] = typer.Option(None, "--name", "-n", help="The run's name in the store."),
    as_json: bool = typer.Option(False, "--json", help="Print the run's summary as JSON at the end."),
) -> None:
    """Train one LoRA adapter over K simulated clients with Flower, private per client, record or subject."""
    common._quiet_libraries()
    cfg = common._load_config(config, set_)
    try:
        from workbench.federated.run import federate
    except ImportError as err:
        common._fail(
            f"federated runs need Flower ({err}). Install it with `pip install 'dp-workbench[federated]'` or "
            "`make install`."
        )
    from workbench.errors import UserError
    from workbench.federated.options import FederatedOptions

    try:
        options = FederatedOptions(
            clients=clients,
            rounds=rounds,
            clients_per_round=clients_per_round,
            partition=partition,
            privacy_level=privacy_level,
            local_steps=local_steps,
            ffa=ffa,
        )
        summary = federate(
            cfg,
            options,
            name=name,
            store=common._store(),
            subscribers=(common._Progress(),) if sys.stderr.isatty() else (),
        )
    except UserError as err:
        common._fail(str(err))
    if as_json:
        common._print_json(summary)
    else:
        _print_summary(summary)
    if summary["status"] == "failed":
        raise typer.Exit(1)


def _print_summary(s: dict) -> None:
    acc = "" if s.get("accuracy") is None else f" accuracy={s['accuracy']:.3f}"
    typer.echo(f"run {s['run_id']}: {s['status']} ({s['reason']}){acc}")
    typer.echo(f"  {s['privacy_level']}-level epsilon={s['epsilon']:.3g} delta={s['delta']:.2g}: {s['rule']}")
    if s.get("subject_pld_epsilon") is not None:
        typer.echo(f"  worst subject by PLD composition of its clients: epsilon={s['subject_pld_epsilon']:.3g}")
    typer.echo(
        f"  bytes to the sampled clients per round: {s['bytes_per_round']:.0f}; wall time {s['wall_time']:.0f} s"
    )
    for c in s["clients"]:
        loss = c.get("loss")
        typer.echo(
            f"  {c['client']}: {c['examples']} examples, sampled {c['rounds']} rounds"
            + ("" if loss is None else f", last loss {loss:.3f}")
            + ("" if c.get("update_norm") is None else f", update norm {c['update_norm']:.3g}")
        )


def register(app: typer.Typer) -> None:
    """Add `workbench federate` to ``app``."""
    app.command("federate")(federate_cmd)
