"""The `workbench sweep` and `workbench compare` commands (``register(app)`` adds them to the CLI's app).

    workbench sweep --config run.yaml --grid privacy.target_epsilon=2,4,8 --seeds 3 --name eps
    workbench sweep resume eps
    workbench sweep list
    workbench sweep export eps DIR --format csv|parquet|tensorboard
    workbench compare eps [RUN_OR_SWEEP ...] [--by privacy.target_epsilon] [--json]

Bad input prints one line ("error: ...") and exits 2, like every other command.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from workbench.cli import common
from workbench.config import RunConfig
from workbench.present.sweeps import progress_line

sweep_app = typer.Typer(
    invoke_without_command=True,
    no_args_is_help=False,
    help="Run a grid of settings times seeds as one stored sweep; resume, list and export sweeps.",
)


def _grid_help() -> str:
    return (
        "A setting and its values: --grid privacy.target_epsilon=2,4,8 (repeatable; the sweep is their cross product)."
    )


@sweep_app.callback()
def sweep(
    ctx: typer.Context,
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="The base run config (YAML or JSON)."),
    set_: list[str] = typer.Option(
        [], "--set", "-s", help="Override a base config key: --set optimisation.max_steps=20."
    ),
    grid: list[str] = typer.Option([], "--grid", "-g", help=_grid_help()),
    grid_file: Optional[Path] = typer.Option(
        None, "--grid-file", help="A YAML/JSON file mapping settings to lists of values (added to any --grid)."
    ),
    seeds: Optional[str] = typer.Option(None, "--seeds", help="A number of seeds (3) or the seeds (0,4,7)."),
    name: Optional[str] = typer.Option(None, "--name", "-n", help="The sweep's name (default: sweep-DATE-TIME)."),
    parallel: int = typer.Option(1, "--parallel", "-p", help="Train N runs at once in N processes (CPU only)."),
    tuning: Optional[str] = typer.Option(
        None,
        "--tuning",
        help="Tuning mode: draw the number of runs from poisson, geometric, logarithmic or "
        "truncated_negative_binomial (secret randomness); the ledger reports the RepeatAndSelect bound "
        "of releasing the best run.",
    ),
    mean_runs: Optional[float] = typer.Option(None, "--mean-runs", help="Tuning mode: the expected number of runs."),
    tuning_shape: Optional[float] = typer.Option(
        None, "--tuning-shape", help="Tuning mode, truncated_negative_binomial: its shape (default 0.5)."
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="Validate and list the runs; store and train nothing."),
    as_json: bool = typer.Option(False, "--json", help="Print the sweep's runs and statuses as JSON at the end."),
) -> None:
    """Run the cross product of the --grid settings times --seeds, one run after another, as one stored sweep."""
    if ctx.invoked_subcommand is not None:
        return
    common._quiet_libraries()
    from workbench.sweeps import SweepError, create_sweep, parse_grid, parse_seeds, validate

    base = common._load_config(config, set_)
    if grid_file is not None:
        from workbench.sweeps import SweepError, grid_from_file

        try:
            grid = [*grid, *grid_from_file(grid_file)]
        except SweepError as err:
            common._fail(str(err))
    if dry_run:
        try:
            members = validate(base, parse_grid(grid), parse_seeds(seeds, base.seed))
        except SweepError as err:
            common._fail(str(err))
        common._print_json([{"label": label, "overrides": o} for label, o in members]) if as_json else [
            typer.echo(label) for label, _ in members
        ]
        return
    try:
        rec = create_sweep(
            base,
            grid=grid,
            seeds=seeds,
            name=name,
            tuning=tuning,
            mean_runs=mean_runs,
            tuning_shape=tuning_shape,
            store=common._store(),
        )
    except SweepError as err:
        common._fail(str(err))
    if rec.tuning:
        typer.echo(
            f"sweep {rec.name}: tuning mode, {rec.tuning['distribution']} with mean {rec.tuning['mean']:g}: "
            f"drew {rec.tuning['runs']} runs (secret randomness)",
            err=True,
        )
        if base.neighboring != "add_remove":
            typer.echo(
                "  note: the RepeatAndSelect bound is analysed for add_remove neighbours only; with "
                f"neighboring={base.neighboring} the ledger reports the composition of all runs. "
                "Use --set neighboring=add_remove for the tuning bound.",
                err=True,
            )
    else:
        typer.echo(f"sweep {rec.name}: {len(rec.members)} runs", err=True)
    _run(rec.name, parallel, as_json)


def _run(name: str, parallel: int, as_json: bool) -> None:
    from workbench.store.sweeps import SweepStore
    from workbench.sweeps import SweepError, execute

    store = common._store()

    def progress(p) -> None:
        typer.echo(progress_line(p), err=True)

    try:
        rec = execute(
            name,
            store=store,
            parallel=parallel,
            progress=progress,
            subscribers=(lambda member: (common._Progress(),)) if parallel == 1 and sys.stderr.isatty() else None,
        )
    except SweepError as err:
        common._fail(str(err))
    except KeyboardInterrupt:
        typer.echo(f"interrupted: `workbench sweep resume {name}` trains what did not finish.", err=True)
        raise typer.Exit(130)
    sweeps = SweepStore(store)
    counts = sweeps.counts(rec)
    if as_json:
        common._print_json(_sweep_json(sweeps, rec))
    else:
        typer.echo(f"sweep {name}: " + ", ".join(f"{v} {k}" for k, v in counts.items()), err=True)
    if any(k != "finished" for k in counts):
        raise typer.Exit(1)


def _sweep_json(sweeps, rec) -> dict:
    out = rec.to_dict()
    for m, row in zip(rec.members, out["members"]):
        row["status"] = sweeps.status(m)
    out["counts"] = sweeps.counts(rec)
    return out


@sweep_app.command("resume")
def sweep_resume(
    name: str,
    parallel: int = typer.Option(1, "--parallel", "-p", help="Train N runs at once in N processes (CPU only)."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Train what did not finish of sweep NAME (never-started, interrupted, failed or stopped runs)."""
    common._quiet_libraries()
    from workbench.store.sweeps import SweepNotFound, SweepStore
    from workbench.sweeps import pending

    sweeps = SweepStore(common._store())
    try:
        rec = sweeps.get(name)
    except SweepNotFound as err:
        common._fail(str(err))
    todo = pending(sweeps, rec)
    typer.echo(
        f"sweep {name}: {len(rec.members) - len(todo)} of {len(rec.members)} runs done, {len(todo)} to train", err=True
    )
    _run(name, parallel, as_json)


@sweep_app.command("list")
def sweep_list(as_json: bool = typer.Option(False, "--json")) -> None:
    """Every stored sweep: its name, settings swept, and how many of its runs finished."""
    from workbench.store.sweeps import SweepStore

    sweeps = SweepStore(common._store())

    def line(r) -> None:
        swept = ", ".join(r.keys) + (
            f"; tuning {r.tuning['distribution']} mean {r.tuning['mean']:g}" if r.tuning else ""
        )
        typer.echo(f"{r.name:28} {len(r.members):>5} {sweeps.counts(r).get('finished', 0):>8}  {swept}")

    common._print_list(
        sweeps.list(),
        as_json,
        to_json=lambda r: _sweep_json(sweeps, r),
        empty="no sweeps yet: `workbench sweep --grid key=v1,v2` starts one.",
        header=f"{'sweep':28} {'runs':>5} {'finished':>8}  swept",
        each=line,
    )


@sweep_app.command("show")
def sweep_show(name: str, as_json: bool = typer.Option(False, "--json")) -> None:
    """One sweep: each run's label, run id and status."""
    from workbench.store.sweeps import SweepNotFound, SweepStore

    sweeps = SweepStore(common._store())
    try:
        rec = sweeps.get(name)
    except SweepNotFound as err:
        common._fail(str(err))
    if as_json:
        common._print_json(_sweep_json(sweeps, rec))
        return
    typer.echo(f"sweep {rec.name}: " + ", ".join(f"{v} {k}" for k, v in sweeps.counts(rec).items()))
    for m in rec.members:
        typer.echo(f"  {m.label:28} {m.run_id or '-':24} {sweeps.status(m)}")


@sweep_app.command("export")
def sweep_export(
    name: str,
    directory: Path,
    fmt: str = typer.Option("csv", "--format", "-f", help="csv, parquet or tensorboard."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Every run of sweep NAME as one table set (csv, parquet) or TensorBoard event files, under DIR/NAME.
    The telemetry is computed from the raw data: NOT covered by the DP guarantee (a README says so)."""
    from workbench.store.export import ExportError, export_sweep_metrics
    from workbench.store.sweeps import SweepNotFound

    try:
        target = export_sweep_metrics(common._store(), name, directory, fmt)
    except SweepNotFound as err:
        common._fail(str(err))
    except ExportError as err:
        common._fail(str(err))
    common._telemetry_note(fmt)
    common._print_json({"sweep": name, "format": fmt, "exported_to": str(target)}) if as_json else typer.echo(
        f"exported sweep {name} ({fmt}) to {target}"
    )


# -- compare -----------------------------------------------------------------------------------------


def compare_cmd(
    items: list[str] = typer.Argument(..., help="Run ids (or unique prefixes) and sweep names."),
    by: list[str] = typer.Option(
        [], "--by", help="Group by these settings (repeatable; default: every setting that differs but the seed)."
    ),
    x: str = typer.Option("epsilon", "--x", help="Curves' x axis: step, epsilon, tokens or time."),
    band: str = typer.Option("sd", "--band", help="The band around a group's mean: sd or minmax."),
    as_json: bool = typer.Option(False, "--json", help="Groups, curves' final values, the frontier, as JSON."),
) -> None:
    """Compare runs and sweeps: groups of seeds with mean and spread, the privacy-utility frontier (Pareto front
    marked) and the table of differing settings with the resolved sigma, q, delta, relation and final metrics."""
    from workbench.present.compare import CompareError, comparison_report, group_table, load_views, resolve_runs

    by = [RunConfig.field_name(key) or key for key in by]  # --by privacy.target_epsilon: the stored runs' field name
    store = common._store()
    try:
        run_ids = resolve_runs(store, items)
        views = load_views(store, run_ids)
        report = comparison_report(views, by=by or None, x=x, band=band)
    except CompareError as err:
        common._fail(str(err))
    if as_json:
        common._print_json(report)
        return
    table = group_table(views, by=by or None)
    widths = [max(len(str(h)), *(len(str(r[i])) for r in table.rows)) for i, h in enumerate(table.headers)]
    typer.echo("  ".join(str(h).ljust(w) for h, w in zip(table.headers, widths)))
    for row in table.rows:
        typer.echo("  ".join(str(v).ljust(w) for v, w in zip(row, widths)))
    front = [p["group"] for p in report["frontier"] if p["pareto"]]
    if front:
        typer.echo(f"Pareto front (less epsilon, better {report['metric']}): " + ", ".join(front))


def register(app: typer.Typer) -> None:
    """Add `workbench sweep ...` and `workbench compare` to ``app``."""
    app.add_typer(sweep_app, name="sweep")
    app.command("compare")(compare_cmd)
