"""The `workbench` command: typer commands in ``main`` (train, plan, check, runs, ledger, app...) and ``sweeps``
(sweep, compare), with what they share in ``common``."""

from workbench.cli.main import app, main

__all__ = ["app", "main"]
