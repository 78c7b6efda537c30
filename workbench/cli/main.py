"""The `workbench` command: train, epsilon, calibrate, runs, ledger, audit, data.

User errors print one line ("error: ...") and exit with code 2; nothing prints a traceback for
bad input.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Optional

import typer

from workbench.cli.common import (
    _fail,
    _load_config,
    _print_json,
    _print_list,
    _Progress,
    _quiet_libraries,
    _store,
)
from workbench.config import GROUPS, ConfigError, RunConfig
from workbench.errors import UserError
from workbench.events import jsonable

app = typer.Typer(
    no_args_is_help=True, add_completion=False, help="DP Workbench: differentially private LoRA fine-tuning."
)
runs_app = typer.Typer(no_args_is_help=True, help="List, show, evaluate, export and delete stored runs.")
app.add_typer(runs_app, name="runs")


@app.command()
def train(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="A YAML or JSON config file."),
    set_: list[str] = typer.Option(
        [],
        "--set",
        "-s",
        help="Override a config key: --set optimisation.batch_size=64 (repeatable; --help-keys lists them).",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the final summary as JSON on stdout."),
    help_keys: bool = typer.Option(False, "--help-keys", help="List every config key with its default and help."),
    nproc: Optional[int] = typer.Option(
        None,
        "--nproc",
        help="Run on N processes (data-parallel DP-SGD, one GPU each on CUDA, gloo on the CPU); default: the "
        "config's nproc (1). Several machines: torchrun --nproc-per-node N ... -m workbench train.",
    ),
) -> None:
    """Fine-tune with DP-LoRA; a progress bar with loss and epsilon goes to stderr."""
    if help_keys:
        rows = RunConfig.help_table(flat=False)  # dotted keys, top-level first, then group by group
        width = max(len(key) for key, _, _ in rows)
        group = None
        for key, default, text in rows:
            if "." in key and key.split(".")[0] != group:
                group = key.split(".")[0]
                typer.echo(f"\n# {group}: {GROUPS[group]} (YAML: nested under {group}:)")
            typer.echo(f"{key:{width}} {default:12} {text}")
        return
    _quiet_libraries()
    cfg = _load_config(config, set_)
    from workbench.running import launch as distributed
    from workbench.session import Session

    try:  # --nproc N: launch N ranks and wait (exit code); a rank > 0 trains and exits; rank 0 goes on below
        cfg, code = distributed.enter(cfg, nproc=nproc, extra_args=["--json"] if as_json else [])
    except ConfigError as err:
        _fail(str(err))
    if code is not None:
        raise typer.Exit(code)
    session = Session(cfg, subscribers=(_Progress(),))
    session.start()
    try:
        while not session.done:
            time.sleep(0.2)
    except KeyboardInterrupt:
        typer.echo(
            "stopping: the step under way is discarded and the last evaluation skipped (workbench runs evaluate)...",
            err=True,
        )
        session.stop()
        session.wait()
    distributed.shutdown()
    summary = session.summary or {}
    if as_json:
        _print_json(summary)
    else:
        _print_summary(summary)
    if summary.get("status") == "failed":
        internal = str(summary.get("reason", "")).startswith("internal error")
        if not as_json:
            typer.echo(f"error: {summary.get('reason')}", err=True)
        raise typer.Exit(1 if internal else 2)


def _print_summary(s: dict) -> None:
    if s.get("status") == "failed":
        return
    from workbench.planning.wording import epsilon_sentence, person_sentence
    from workbench.present.diagnostics import baseline_text, class_prior_text, prefix_cache_text

    eps = s.get("epsilon")
    eps_text = "inf (non-private)" if isinstance(eps, float) and math.isinf(eps) else f"{eps:.4g}"
    lines = [
        f"run {s.get('run_id')}: {s.get('status')} ({s.get('reason')})",
        f"  privacy: epsilon={eps_text} delta={s.get('delta'):.2g} accountant={s.get('accountant')} "
        f"sigma={s.get('noise_multiplier'):.4g} q={s.get('sample_rate'):.4g} steps={s.get('steps')} "
        f"neighbouring={s.get('neighboring')}",
    ]
    if s.get("seeded_randomness"):
        lines.insert(1, f"  WARNING: {s.get('randomness')} (noise_seed is set; the epsilon does not hold)")
    if s.get("edgeworth_epsilon") is not None:
        lines.append(f"  Edgeworth approximation (comparison, not a bound): epsilon~{s['edgeworth_epsilon']:.4g}")
    if isinstance(s.get("audit"), dict):
        a = s["audit"]
        lines.append(
            f"  audit: empirical epsilon lower bound {a['epsilon_lower_bound']:.4g} ({a['canaries']} canaries, "
            f"{a['correct']} of {a['guesses']} guesses correct, {a['confidence']:.0%}); `workbench audit {s.get('run_id')}`"
        )
        if audit_reading(a):
            lines.append("    " + audit_reading(a))
        if a.get("exposure"):
            lines.append(
                "  exposure of the demo secrets (bits): "
                + ", ".join(
                    f"{e['exposure']:.3g}" + ("" if e["in_training"] else " (not trained on)") for e in a["exposure"]
                )
            )
    if s.get("steps_done_epsilon") is not None:
        lines.append(
            f"  stopped by hand: epsilon above is the planned one; the {s['steps_done_epsilon']:.4g} of the steps done "
            f"holds only if the stop used public information only. {s.get('stop_note')}"
        )
    if prefix_cache_text(s.get("prefix_cache")):
        lines.append("  " + prefix_cache_text(s.get("prefix_cache")))
    metrics = [f"{k}={s[k]:.4f}" for k in ("val_loss", "perplexity", "accuracy") if isinstance(s.get(k), float)]
    if metrics:
        lines.append("  validation: " + " ".join(metrics))
    elif s.get("adapter_dir"):
        lines.append(
            "  validation: not measured after the last step (a Stop skips that evaluation); "
            f"`workbench runs evaluate {s.get('run_id')}` measures the adapter now"
        )
    against = baseline_text(s, s.get("baseline"))
    if against:
        which = "the untuned model and the majority class" if "majority class" in against else "the untuned model"
        lines.append(f"  against {which} (validation telemetry, not covered by epsilon): {against}")
    prior = class_prior_text(s, s.get("baseline"), private=bool(s.get("noise_multiplier")))
    if prior:
        lines.append(f"  {prior}")
    sentence = epsilon_sentence(
        eps if isinstance(eps, (int, float)) else None,
        delta=s.get("delta"),
        unit=s.get("privacy_unit") or "example",
        neighboring=s.get("neighboring") or "add_remove",
        max_examples_per_user=s.get("max_examples_per_user"),
        example_epsilon=s.get("example_level_epsilon"),
        seeded=bool(s.get("seeded_randomness")),
    )
    if sentence and s.get("steps"):
        lines.append(f"  what epsilon protects: {sentence}")
        person = person_sentence(
            eps if isinstance(eps, (int, float)) else None,
            people=s.get("people"),
            unit=s.get("privacy_unit") or "example",
            user_sampling=s.get("user_sampling"),
            max_examples_per_user=s.get("max_examples_per_user"),
            example_epsilon=s.get("example_level_epsilon"),
        )
        if person:
            lines.append(f"  {person}")
    if s.get("adapter_dir"):
        lines.append(f"  adapter: {s['adapter_dir']}")
    typer.echo("\n".join(lines), err=True)


# -- accounting --------------------------------------------------------------------------------------


def _accountant_option():
    return typer.Option("pld", "--accountant", help="pld (default), rdp, prv, or edgeworth (an approximation).")


def _unit_option():
    return typer.Option(
        "example", "--privacy-unit", help="example, or user (ELS: k examples per user, mixture-of-Gaussians PLD)."
    )


def _neighboring_option():
    return typer.Option(
        "add_remove",
        "--neighboring",
        help="add_remove (dp_accounting's default) or replace_one (pld only; the size is public).",
    )


def _k_option():
    return typer.Option(1, "--max-examples-per-user", help="k: most examples one user contributes (user level).")


def _sample_rate_option():
    return typer.Option(..., "--sample-rate", help="q: Poisson sampling rate (batch / N).")


def _steps_option():
    return typer.Option(..., "--steps", help="T: number of steps.")


def _delta_option():
    return typer.Option(..., "--delta", help="delta of (epsilon, delta)-DP.")


def _els_relation(neighboring: str) -> None:
    """User-level ELS epsilon is a mixture-of-Gaussians PLD, which dp_accounting analyses for add/remove only."""
    from workbench import privacy

    if neighboring != "add_remove":
        raise privacy.PrivacyError(
            "user-level ELS (mixture of Gaussians) is analysed for add_remove only. Use --neighboring add_remove."
        )


def _user_level(unit: str) -> bool:
    if unit not in ("example", "user"):
        _fail(f"--privacy-unit must be 'example' or 'user'. Found {unit!r}.")
    return unit == "user"


@app.command()
def epsilon(
    noise_multiplier: float = typer.Option(..., "--noise-multiplier", help="sigma: noise std / clipping norm."),
    sample_rate: float = _sample_rate_option(),
    steps: int = _steps_option(),
    delta: float = _delta_option(),
    accountant: str = _accountant_option(),
    privacy_unit: str = _unit_option(),
    k: int = _k_option(),
    neighboring: str = _neighboring_option(),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Epsilon spent by the Poisson-subsampled Gaussian mechanism after T steps (user-level: ELS)."""
    from workbench import privacy

    try:
        mech = _mechanism(noise_multiplier, sample_rate, steps, delta, accountant, privacy_unit, k, neighboring)
        approximation = privacy.is_approximation(accountant) and not mech.els
        eps = (
            privacy.epsilon(**_run(mech), accountant=accountant, neighboring=neighboring)
            if approximation
            else mech.epsilon()
        )
    except privacy.PrivacyError as err:
        _fail(str(err))
    out = dict(
        epsilon=eps,
        **_run(mech),
        accountant=accountant if approximation else mech.accountant,
        approximation=approximation,
        privacy_unit=privacy_unit,
        neighboring=neighboring,
    )
    if mech.els:
        g_eps, g_delta = mech.group_bound()
        out.update(
            max_examples_per_user=k,
            example_level_epsilon=mech.unit_epsilon(),
            group_privacy_epsilon=g_eps,
            group_privacy_delta=g_delta,
        )
    if as_json:
        _print_json(out)
    else:
        note = " (Edgeworth approximation, not an upper bound)" if out["approximation"] else ""
        typer.echo(f"epsilon = {eps:.6g}{note}")


def _mechanism(sigma, sample_rate, steps, delta, accountant, privacy_unit, k, neighboring):
    """The mechanism the accounting commands describe (planning.Mechanism): ELS for a user, the upper bound
    for the accountant named (Edgeworth is a comparison beside PLD)."""
    from workbench import privacy
    from workbench.planning.mechanism import Mechanism

    user = _user_level(privacy_unit)
    if user:
        _els_relation(neighboring)
    else:
        privacy.check_neighboring(neighboring, accountant=privacy.bound_accountant(accountant))
    return Mechanism(
        sample_rate=sample_rate,
        steps=steps,
        delta=delta,
        noise_multiplier=sigma,
        accountant="pld" if user else privacy.bound_accountant(accountant),
        neighboring=neighboring,
        privacy_unit=privacy_unit,
        user_sampling="els" if user else None,
        max_examples_per_user=k if user else None,
        comparison_accountant="edgeworth" if accountant == "edgeworth" and not user else None,
    )


def _run(mech) -> dict:
    return dict(
        noise_multiplier=mech.noise_multiplier, sample_rate=mech.sample_rate, steps=mech.steps, delta=mech.delta
    )


@app.command()
def calibrate(
    target_epsilon: float = typer.Option(..., "--target-epsilon", help="The epsilon to reach after T steps."),
    sample_rate: float = _sample_rate_option(),
    steps: int = _steps_option(),
    delta: float = _delta_option(),
    accountant: str = _accountant_option(),
    privacy_unit: str = _unit_option(),
    k: int = _k_option(),
    neighboring: str = _neighboring_option(),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """The smallest noise multiplier whose epsilon does not exceed the target (user-level: ELS).

    Only upper bounds calibrate: with --accountant edgeworth, PLD sets sigma and Edgeworth's
    approximation of the epsilon at that sigma is shown beside it."""
    from workbench import privacy

    try:
        mech = _mechanism(None, sample_rate, steps, delta, accountant, privacy_unit, k, neighboring)
        mech = mech.calibrated(target_epsilon)
        eps, comparison = mech.epsilon(), mech.comparison_epsilon()
    except privacy.PrivacyError as err:
        _fail(str(err))
    sigma, accountant = mech.noise_multiplier, mech.accountant
    run = _run(mech)
    del run["noise_multiplier"]
    out = dict(
        noise_multiplier=sigma,
        epsilon=eps,
        target_epsilon=target_epsilon,
        **run,
        accountant=accountant,
        neighboring=neighboring,
    )
    if comparison is not None:
        out["edgeworth_epsilon"] = comparison
    if as_json:
        _print_json(out)
    else:
        typer.echo(
            f"noise_multiplier = {sigma:.6g} (epsilon = {eps:.6g} <= {target_epsilon:g}, {accountant}, {neighboring})"
        )
        if comparison is not None:
            typer.echo(f"Edgeworth approximation at this sigma: epsilon ~ {comparison:.6g} (not an upper bound)")


# -- check -------------------------------------------------------------------------------------------


@app.command()
def check(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="A YAML or JSON config file."),
    set_: list[str] = typer.Option(
        [],
        "--set",
        "-s",
        help="Override a config key: --set optimisation.batch_size=64 (repeatable; --help-keys lists them).",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the findings as a JSON list on stdout."),
) -> None:
    """Pre-flight privacy check of a run config: the DP pitfalls it walks into, one line each.

    Reads the data and resolves the privacy plan (q, steps, delta, sigma) without loading the model.
    Exit code: 0 when no finding is an error, 1 when any is (e.g. seeded randomness: no DP guarantee),
    so scripts can gate a run on it; 2 for a config or data error.
    """
    _quiet_libraries()
    cfg = _load_config(config, set_)
    from workbench.privacy.checks import format_findings, preflight

    try:
        _echo_sizes(cfg, err=as_json)  # one stream in text mode: stdout and stderr lines ran together in a pipe
        task, plan = _plan_without_model(cfg)
        findings = preflight(cfg, plan, task=task)
        person = _person_sentence(cfg, plan)
    except UserError as err:
        _fail(str(err))
    if as_json:
        _print_json([f.to_dict() for f in findings])
    else:
        typer.echo(
            f"plan: N={plan.dataset_size} q={plan.sample_rate:.4g} steps={plan.steps} sigma={plan.noise_multiplier:.4g} "
            f"delta={plan.delta:.2g} accountant={plan.accountant} unit={plan.privacy_unit}"
        )
        typer.echo(format_findings(findings) or "no findings")
        if person:
            typer.echo(person)
    if any(f.severity == "error" for f in findings):
        raise typer.Exit(1)


def _typed_size_is_public(cfg: RunConfig, dataset_size: int) -> RunConfig:
    """`workbench plan --dataset-size N` is a calculator: the N typed is a public number, declared as
    ``public_dataset_size`` unless the relation is replace-one (which needs none). So ``auto`` resolves to add/remove,
    as in the notebook planner (widgets.planner.PlanSettings.config), and both give one epsilon for the same inputs."""
    if cfg.neighboring == "replace_one" or cfg.public_dataset_size is not None:
        return cfg
    return cfg.with_overrides({"public_dataset_size": dataset_size})


def _echo_sizes(cfg: RunConfig, *, err: bool = True) -> None:
    """The data's own counts, on this machine only: what public_dataset_size would declare."""
    from workbench.engine.prepare import dataset_sizes
    from workbench.planning.plan import sampled_units

    examples, users = dataset_sizes(cfg)
    uls = cfg.privacy_unit == "user" and cfg.user_sampling == "uls"
    count = users if uls else examples
    typer.echo(
        f"data: {count} {sampled_units(cfg)}"
        + (f" ({users} users)" if users and not uls else "")
        + "; to declare that size public (add/remove neighbours): --set public_dataset_size="
        + str(count),
        err=err,
    )


def _person_sentence(cfg: RunConfig, plan) -> str:
    """What the planned epsilon means for a person when the data has users ('' otherwise): planning/wording.py."""
    from workbench.engine.data.describe import people
    from workbench.engine.prepare import load_splits
    from workbench.planning.wording import person_sentence

    train, _ = load_splits(cfg)
    found = people(train)
    if found is None:
        return ""
    eps = plan.epsilon_at(plan.steps) if plan.private else math.inf
    return person_sentence(
        eps,
        people=found,
        unit=plan.privacy_unit,
        user_sampling=plan.user_sampling,
        max_examples_per_user=plan.max_examples_per_user,
        example_epsilon=plan.user_level_report(plan.steps).get("example_level_epsilon"),
    )


def _plan_without_model(cfg: RunConfig):
    """(task, PrivacyPlan) from the data splits alone; under user-level DP N counts each user's first k."""
    from workbench.engine.prepare import dataset_sizes, load_splits
    from workbench.planning.plan import make_plan

    train, _ = load_splits(cfg)
    task = train.task if cfg.task == "auto" else cfg.task
    examples, users = dataset_sizes(cfg)
    return task, make_plan(cfg, dataset_size=examples, num_users=users if cfg.privacy_unit == "user" else None)


# -- plan --------------------------------------------------------------------------------------------


@app.command("plan")
def plan_cmd(
    dataset_size: Optional[int] = typer.Option(
        None, "--dataset-size", "-n", help="N in privacy units (examples; users under ULS). Default: the config's data."
    ),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="A YAML or JSON config file."),
    set_: list[str] = typer.Option(
        [],
        "--set",
        "-s",
        help="Override a config key: --set optimisation.batch_size=64 (repeatable; --help-keys lists them).",
    ),
    target_epsilon: Optional[float] = typer.Option(None, "--target-epsilon", help="Default: the config's (8)."),
    delta: Optional[float] = typer.Option(None, "--delta", help="Default: the config's, or below 1/N."),
    accountant: Optional[str] = typer.Option(None, "--accountant", help="pld (default), rdp, prv, or edgeworth."),
    neighboring: Optional[str] = typer.Option(None, "--neighboring", help="auto (default), add_remove, replace_one."),
    recommend: bool = typer.Option(
        False, "--recommend", help="Recommend the batch size and steps with the smallest noise-batch ratio sigma/B."
    ),
    budget_examples: Optional[int] = typer.Option(
        None, "--budget-examples", help="Compute budget: examples you can afford to process (B x T; users under ULS)."
    ),
    budget_minutes: Optional[float] = typer.Option(
        None, "--budget-minutes", help="Compute budget in minutes (with --examples-per-second)."
    ),
    examples_per_second: Optional[float] = typer.Option(
        None, "--examples-per-second", help="Measured training speed, for --budget-minutes."
    ),
    min_steps: int = typer.Option(100, "--min-steps", help="Fewest steps a recommended run may take."),
    as_json: bool = typer.Option(False, "--json", help="Print the plan or the recommendation as JSON on stdout."),
) -> None:
    """The privacy plan of a config (q, steps, sigma, epsilon), or with --recommend the expected batch size and
    steps that minimise the noise-batch ratio sigma/B within a compute budget (a heuristic after McKenna et al.
    2025, "Scaling Laws for Differentially Private Language Models"), with the curve over batch sizes."""
    overrides = list(set_)
    for key, value in (
        ("target_epsilon", target_epsilon),
        ("delta", delta),
        ("accountant", accountant),
        ("neighboring", neighboring),
    ):
        if value is not None:
            overrides.append(f"{key}={value}")
    cfg = _load_config(config, overrides)
    try:
        if dataset_size is None:
            if config is None and not set_:
                _fail("give the dataset size (--dataset-size N) or a config whose data to count (--config FILE).")
            _quiet_libraries()
            n_examples, n_users = _data_sizes(cfg)
        else:
            n_examples, n_users = dataset_size, dataset_size if cfg.privacy_unit == "user" else None
            cfg = _typed_size_is_public(cfg, dataset_size)
        if recommend:
            from workbench.planning.recommend import recommend_for_config

            rec = recommend_for_config(
                cfg,
                dataset_size=n_examples,
                num_users=n_users,
                budget_examples=budget_examples,
                budget_minutes=budget_minutes,
                examples_per_second=examples_per_second,
                min_steps=min_steps,
            )
        else:
            from workbench.planning.plan import make_plan

            plan = make_plan(cfg, dataset_size=n_examples, num_users=n_users)
            final = plan.epsilon_at(plan.steps)
    except UserError as err:
        _fail(str(err))
    if recommend:
        if as_json:
            _print_json(rec.to_dict())
        else:
            typer.echo("\n".join(rec.sentences()))
            typer.echo(f"\n{'B':>6} {'T':>6} {'sigma':>8} {'sigma/B':>9} {'epsilon':>8}  series")
            for c, series in [(c, "min steps") for c in rec.at_min_steps] + [(c, "budget") for c in rec.whole_budget]:
                mark = "  <- recommended" if c == rec.best else ""
                typer.echo(
                    f"{c.batch_size:>6} {c.steps:>6} {c.noise_multiplier:>8.4g} {c.noise_batch_ratio:>9.3g} "
                    f"{c.epsilon:>8.4g}  {series}{mark}"
                )
        return
    out = {**plan.settings(), "dataset_size": plan.dataset_size, "num_users": plan.num_users, "epsilon": final}
    if as_json:
        _print_json(out)
    else:
        typer.echo(
            f"N={plan.dataset_size} q={plan.sample_rate:.4g} steps={plan.steps} sigma={plan.noise_multiplier:.4g} "
            f"delta={plan.delta:.2g} epsilon={final:.4g} accountant={plan.accountant} neighbouring={plan.neighboring} "
            f"unit={plan.privacy_unit}"
        )


def _data_sizes(cfg: RunConfig) -> tuple[int, int | None]:
    """(training examples after the per-user cap, users) of the config's data, without the model."""
    from workbench.engine.prepare import dataset_sizes

    return dataset_sizes(cfg)


# -- runs --------------------------------------------------------------------------------------------


def _get_run(store, run_id: str):
    from workbench.store.runs import RunNotFound

    try:
        return store.get(run_id)
    except RunNotFound as err:
        _fail(str(err))


@runs_app.command("list")
def runs_list(as_json: bool = typer.Option(False, "--json")) -> None:
    """Every stored run with status, model, epsilon and metric."""
    _print_list(
        _store().list(),
        as_json,
        to_json=lambda r: r.to_dict(),
        empty="no runs yet: `workbench train` starts one.",
        header=f"{'run id':24} {'name':{NAME_WIDTH}} {'status':12} {'model':14} {'epsilon':>9} {'val_loss':>9} {'accuracy':>9}",
        each=_print_run,
    )


NAME_WIDTH = 24  # the runs list's name column (a longer name ends in "…"; `runs show` has it whole)


def _print_run(r) -> None:
    s = r.summary or {}
    eps = r.final_epsilon  # the summary's stored value, as every surface shows it
    eps_t = "-" if eps is None else ("inf" if math.isinf(eps) else f"{eps:.3g}")
    vl = s.get("val_loss")
    acc = s.get("accuracy")
    name = r.name or "-"
    name = name if len(name) <= NAME_WIDTH else name[: NAME_WIDTH - 1] + "…"
    typer.echo(
        f"{r.id:24} {name:{NAME_WIDTH}} {r.status:12} {str(r.config.get('model'))[:14]:14} {eps_t:>9} "
        f"{('-' if vl is None else f'{vl:.4f}'):>9} {('-' if acc is None else f'{acc:.3f}'):>9}"
    )


@runs_app.command("show")
def runs_show(run_id: str, as_json: bool = typer.Option(False, "--json")) -> None:
    """One run: config, status, summary, and the number of events stored."""
    store = _store()
    rec = _get_run(store, run_id)
    events = store.events(rec.id)
    counts: dict[str, int] = {}
    for _, e in events:
        counts[e.kind] = counts.get(e.kind, 0) + 1
    out = {**rec.to_dict(), "event_counts": counts}
    if as_json:
        _print_json(out)
        return
    typer.echo(f"run {rec.id}  status: {rec.status}" + (f" ({rec.reason})" if rec.reason else ""))
    for k, v in (rec.summary or {}).items():
        typer.echo(f"  {k}: {v}")
    typer.echo(f"  events: {counts}")


@runs_app.command("evaluate")
def runs_evaluate(
    run_id: str,
    no_generate: bool = typer.Option(
        False,
        "--no-generate",
        help="Loss and accuracy only, without the sample generations (seconds a prompt on a CPU).",
    ),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Evaluate a stored run's adapter on its validation split now and add the evaluation to its events (a Stop skips
    the last one): telemetry from held-out examples no step read, not covered by epsilon, spending no budget."""
    _quiet_libraries()
    from workbench.session import evaluate_run

    store = _store()
    rec = _get_run(store, run_id)
    try:
        evaluation = evaluate_run(rec.id, store=store, generate=not no_generate, wait=None)
    except UserError as err:
        _fail(str(err))
    if as_json:
        _print_json(evaluation.to_dict())
        return
    numbers = [f"val_loss {evaluation.val_loss:.4f}"]
    if evaluation.accuracy is not None:
        numbers.append(f"accuracy {evaluation.accuracy:.3f}")
    typer.echo(
        f"evaluated {rec.id} after step {evaluation.step}: {', '.join(numbers)} "
        "(validation telemetry, not covered by epsilon; stored with the run's events)"
    )


@runs_app.command("export")
def runs_export(
    run_id: str,
    directory: Path,
    with_telemetry: bool = typer.Option(
        False,
        "--with-telemetry",
        help="Also export every event and the validation metrics (computed from the raw data: NOT covered by DP).",
    ),
    force: bool = typer.Option(
        False,
        "--force",
        help="Export a run with seeded randomness (noise_seed: no DP guarantee); the card keeps the warning.",
    ),
    fmt: str = typer.Option(
        "adapter",
        "--format",
        "-f",
        help="adapter (default: the PEFT adapter and its privacy report), or the run's telemetry as csv, parquet or "
        "tensorboard (NOT covered by DP).",
    ),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Copy a run's adapter (PEFT format) with its privacy report and config to DIR (never its secret key);
    --format csv|parquet|tensorboard writes its steps and evaluations for other tools instead."""
    from workbench.store.export import ExportError, export_metrics, export_run

    store = _store()
    rec = _get_run(store, run_id)
    try:
        if fmt == "adapter":
            target = export_run(store, rec.id, directory, telemetry=with_telemetry, force=force)
        else:
            target = export_metrics(store, rec.id, directory, fmt)
            from workbench.cli.common import _telemetry_note

            _telemetry_note(fmt)
    except ExportError as err:
        _fail(str(err))
    out = {"run_id": rec.id, "exported_to": str(target)}
    _print_json(out) if as_json else typer.echo(f"exported {rec.id} to {target}")


@runs_app.command("replay")
def runs_replay(run_id: str, as_json: bool = typer.Option(False, "--json")) -> None:
    """Retrain a stored run with its own secret key (kept beside it, mode 0600): the same Poisson batches and
    the same noise, so the same adapter bit for bit. For the data owner, on the machine that trained it."""
    _quiet_libraries()
    from workbench.engine.randomness import ReplayError, RunRandomness
    from workbench.session import Session

    store = _store()
    rec = _get_run(store, run_id)
    if (rec.summary or {}).get("federated"):
        _fail(
            f"run {rec.id} is a federated run, and replay retrains one data holder's run: it would train this "
            "federation's data centrally, another mechanism (and at the record and subject levels the clients' keys are "
            "not kept). Federated runs are not replayed; run `workbench federate` again instead."
        )
    try:
        pinned = {"output_dir": None}  # never overwrite the original's adapter
        sigma = (rec.summary or {}).get("noise_multiplier")
        if rec.config.get("noise_multiplier") is None and isinstance(sigma, (int, float)) and sigma > 0:
            # the sigma the original calibrated to its target, not a new calibration: a later workbench may find
            # another sigma within its tolerance (both within the target), and a replay must draw the same noise
            pinned["noise_multiplier"] = float(sigma)
        cfg = RunConfig.from_dict({**rec.config, **pinned})
        randomness = (  # the noise source the run used: a seeded run's summary says (none: source 1)
            RunRandomness.seeded(cfg.noise_seed, noise_version=(rec.summary or {}).get("noise_source", 1))
            if cfg.noise_seed is not None
            else RunRandomness.load(store.run_dir(rec.id), run_id=rec.id)
        )
        _replay_data_check(store, rec.id, cfg)  # the same key on other data cancels the noise: refused
    except (ConfigError, ReplayError) as err:
        _fail(str(err))
    done = (rec.summary or {}).get("steps")
    session = Session(
        cfg,
        store=store,
        randomness=randomness,
        subscribers=(_Progress(),),
        stop_after=done if rec.status == "stopped" else None,
        name=f"replay of {rec.id}",
        replay_of=rec.id,
    )
    summary = session.run()
    if summary.get("status") == "failed":
        _fail(f"the replay failed: {summary.get('reason')}")
    same = _same_adapter((rec.summary or {}).get("adapter_dir"), summary.get("adapter_dir"))
    out = {"run_id": rec.id, "replay_id": session.run_id, "identical_adapter": same}
    if as_json:
        _print_json(out)
    else:
        verdict = {
            True: "identical to the original, bit for bit",
            False: "DIFFERENT from the original (data or code changed?)",
            None: "not compared (the original has no adapter)",
        }[same]
        typer.echo(f"replayed {rec.id} as {session.run_id}: adapter {verdict}")


def _replay_data_check(store, run_id: str, cfg: RunConfig) -> None:
    """ReplayError unless ``cfg``'s data holds exactly the records run ``run_id`` trained on (store/ledger.py)."""
    from workbench.engine.fingerprint import dataset_fingerprint
    from workbench.engine.prepare import load_source
    from workbench.engine.randomness import ReplayError
    from workbench.store.ledger import Ledger

    try:
        digest = dataset_fingerprint(load_source(cfg), privacy_unit=cfg.privacy_unit)
    except UserError as err:
        raise ReplayError(f"run {run_id}'s data cannot be read for its replay: {err}") from None
    Ledger(store).check_replay(run_id, digest, data=cfg.data)


def _same_adapter(first: str | None, second: str | None) -> bool | None:
    """Whether two adapter folders hold the same weights (every .safetensors / .bin file, byte for byte)."""
    if not first or not second or not Path(first).exists():
        return None

    def weights(folder: str) -> dict[str, bytes]:
        return {p.name: p.read_bytes() for p in sorted(Path(folder).iterdir()) if p.suffix in (".safetensors", ".bin")}

    return weights(first) == weights(second)


@runs_app.command("delete")
def runs_delete(
    run_id: str,
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Delete a run, its events and its adapter."""
    store = _store()
    rec = _get_run(store, run_id)
    if not yes and not as_json and not typer.confirm(f"delete run {rec.id} ({rec.status})?"):
        raise typer.Exit(1)
    try:
        store.delete(rec.id)
    except ValueError as err:
        _fail(str(err))
    _print_json({"run_id": rec.id, "deleted": True}) if as_json else typer.echo(f"deleted {rec.id}")


# -- ledger --------------------------------------------------------------------------------------------


@app.command("ledger")
def ledger_cmd(
    data_path: Optional[str] = typer.Option(
        None, "--data", help="Show the ledger of this data file ('demo' for the demo data), found by its content."
    ),
    column: list[str] = typer.Option(
        [], "--column", help="Map a role to your column as the runs did: --column text=sentence."
    ),
    forget: Optional[str] = typer.Option(
        None, "--forget", metavar="RUN_ID", help="Take a run out of the totals; who, when and why are recorded."
    ),
    reason: Optional[str] = typer.Option(None, "--reason", help="Why the run is forgotten (asked for when not given)."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """The privacy ledger: per dataset, every DP run on it, its epsilon, and the total of all of them composed
    (PLD over the stored events, not a sum). Deleted runs stay in it; --forget takes one out, on the record."""
    _quiet_libraries()
    from workbench.store.ledger import Ledger, LedgerError

    ledger = Ledger(_store())
    if forget is not None:
        try:
            entry = ledger.get(forget)
        except LedgerError as err:
            _fail(str(err))
        if not yes and not typer.confirm(
            f"forget run {entry.label} (epsilon {entry.epsilon:.4g} on {entry.dataset_name})? Do this only if none of "
            "its outputs (adapter, metrics, logs) was seen by anyone who must not learn the data"
        ):
            raise typer.Exit(1)
        if reason is None and not yes:
            reason = typer.prompt("why", default="", show_default=False)
        try:
            record = ledger.forget(entry.run_id, reason or "")
        except LedgerError as err:
            _fail(str(err))
        _print_json(record.to_dict()) if as_json else typer.echo(
            f"forgot {entry.run_id} ({record.who}): {record.reason}"
        )
        return
    if data_path is None:
        datasets = ledger.datasets()
    else:
        fingerprints, touching = _data_fingerprints(ledger, data_path, column)
        datasets = ledger.datasets(fingerprints, touching=touching)
        if not datasets:
            _fail(
                f"{data_path}: never trained on: no run in the ledger trained on any of its "
                f"{len(touching.examples)} examples or {len(touching.users)} users."
            )
    _print_list(
        datasets,
        as_json,
        to_json=lambda d: {**d.to_dict(), "path_given": data_path, "tuning_sessions": _sessions_json(d)},
        empty="the privacy ledger is empty: no run has trained yet.",
        each=lambda d: _print_dataset(d, data_path),
    )


def _data_fingerprints(ledger, path: str, column: list[str]):
    """(the exact-records fingerprints of ``path`` as example-level and user-level data, which rows stored before
    units were kept are found by; its units as the ledger keys them, which every newer row is found by)."""
    _quiet_libraries()
    from workbench.engine.data import load_dataset
    from workbench.engine.fingerprint import dataset_fingerprint, unit_identities

    try:
        ds = load_dataset(path, columns=dict(_split_kv(c) for c in column) or None)
        touching = ledger.data_units(unit_identities(ds))
    except UserError as err:
        _fail(str(err))
    return [dataset_fingerprint(ds, privacy_unit=unit) for unit in ("example", "user")], touching


def _sessions_json(d) -> dict:
    return {
        name: (cost if isinstance(cost, str) else {**cost.__dict__, "epsilon": cost.epsilon})
        for name, cost in d.tuning_sessions().items()
    }


def _print_dataset(d, path_given: str | None) -> None:
    from workbench.present.ledger import dataset_title, forgotten_lines, group_lines, ledger_table, total_text

    given = f" (path given: {path_given})" if path_given else ""
    typer.echo(dataset_title(d) + given)
    for line in group_lines(d):
        typer.echo("  " + line)
    table = ledger_table(d)
    if table.rows:
        typer.echo(f"  {'run':24} {'name':16} {'steps':>6} {'delta':>8} {'epsilon':>9}  relation")
        for run, name, _, steps, delta, eps, relation, note in table.rows:
            typer.echo(
                f"  {run:24} {name[:16]:16} {steps:>6} {delta:>8} {eps:>9}  {relation}"
                + (f"  ({note})" if note else "")
            )
    typer.echo("  " + total_text(d))
    for name, cost in d.tuning_sessions().items():
        if isinstance(cost, str):
            typer.echo(f"  tuning session {name}: {cost}")
        elif cost.repeat_and_select is not None:
            typer.echo(
                f"  tuning session {name}: best of its {cost.runs} runs costs at most epsilon "
                f"{cost.epsilon:.4g} (the smaller of RepeatAndSelect {cost.repeat_and_select:.4g}, {cost.distribution}, "
                f"mean {cost.mean:g}, and composition {cost.composition:.4g})"
                + (f"\n    note: {cost.note}" if cost.note else "")
            )
        elif cost.note:
            typer.echo(
                f"  tuning session {name}: best of its {cost.runs} runs costs at most epsilon "
                f"{cost.composition:.4g} (composition of all runs)\n    note: {cost.note}"
            )
    for line in forgotten_lines(d):
        typer.echo("  " + line)


# -- audit ---------------------------------------------------------------------------------------------


def audit_reading(a: dict) -> str:
    """How to read an audit result: interim or final, its power and what it is compared against."""
    parts = []
    if a.get("interim"):
        parts.append("INTERIM reading, not a bound (the run ended before its planned end)")
    if a.get("power") is not None:
        parts.append(f"power {a['power']:.3g}: the most this audit could show at these settings")
    if a.get("compared_to"):
        eps = a.get("compared_epsilon")
        parts.append(f"compared with {eps if isinstance(eps, str) else f'{eps:.4g}'}, {a['compared_to']}")
    return "; ".join(parts)


@app.command("audit")
def audit_cmd(
    run_id: str, as_json: bool = typer.Option(False, "--json", help="Print the result as JSON on stdout.")
) -> None:
    """The one-run privacy audit of a stored run (trained with --set audit=gradient_canaries or
    audit=input_canaries): the empirical epsilon lower bound beside the claimed epsilon, and on the demo data
    the exposure of its planted secrets. Exit code 1 when the lower bound exceeds the claim (the
    implementation is less private than its accounting says, or a 1 - confidence accident); 2 for an unknown
    run or one without an audit."""
    store = _store()
    rec = _get_run(store, run_id)
    summary = rec.summary or {}
    result = summary.get("audit")
    if not result:
        if rec.status in ("queued", "running"):
            _fail(f"run {rec.id} is still {rec.status}: its audit is reported when it ends.")
        kind = (rec.config or {}).get("audit", "none")
        _fail(
            f"run {rec.id} has no audit (audit={kind}, status {rec.status}). "
            "Train with --set audit=gradient_canaries or --set audit=input_canaries to audit a run."
        )
    claimed = result.get("compared_epsilon", summary.get("epsilon"))  # the canaries' own epsilon (canaries.py)
    claimed_f = math.inf if claimed in ("inf", None) else float(claimed)
    exceeds = result["epsilon_lower_bound"] > claimed_f and not result.get("interim")
    if as_json:
        _print_json(
            {
                "run_id": rec.id,
                **result,
                "claimed_epsilon": claimed_f,
                "delta": summary.get("delta"),
                "exceeds_claim": exceeds,
            }
        )
    else:
        claim_text = "inf (non-private)" if math.isinf(claimed_f) else f"{claimed_f:.4g}"
        typer.echo(
            f"run {rec.id}: empirical epsilon lower bound {result['epsilon_lower_bound']:.4g} at "
            f"{result['confidence']:.0%} confidence ({result['canaries']} {result['kind'].replace('_', ' ')}, "
            f"{result['correct']} of {result['guesses']} guesses correct); claimed upper bound {claim_text} "
            f"(delta {summary.get('delta', float('nan')):.2g})"
        )
        if audit_reading(result):
            typer.echo("  " + audit_reading(result))
        for e in result.get("exposure") or []:
            typer.echo(
                f"  exposure of {e['user_id']}'s secret: {e['exposure']:.3g} bits (rank {e['rank']} of "
                f"{e['candidates']} candidates; {'trained on' if e['in_training'] else 'not trained on: a control'})"
            )
        if exceeds:
            typer.echo(
                "the lower bound EXCEEDS the claimed epsilon: the implementation is less private than its "
                "accounting says (or a rare statistical accident); investigate before trusting the claim.",
                err=True,
            )
    if exceeds:
        raise typer.Exit(1)


# -- data ----------------------------------------------------------------------------------------------


@app.command()
def data(
    path: str = typer.Argument(..., help="A data file, or 'demo'."),
    column: list[str] = typer.Option([], "--column", help="Map a role to your column: --column text=sentence."),
    model: str = typer.Option("tiny", "--model", help="Whose tokenizer counts tokens (default, tiny, a path, ...)."),
    max_seq_len: int = typer.Option(256, "--max-seq-len"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """How a file will be read: schema, columns, examples, users, token lengths, rendered examples."""
    _quiet_libraries()
    from workbench.engine.data import describe_dataset, load_dataset

    try:
        columns = dict(_split_kv(c) for c in column) or None
        ds = load_dataset(path, columns=columns)
        tok = _tokenizer(model)
        info = describe_dataset(ds, tok, max_seq_len=max_seq_len)
    except UserError as err:
        _fail(str(err))
    if as_json:
        _print_json(info)
        return
    typer.echo(json.dumps(jsonable(info), indent=2, ensure_ascii=False))
    if info.get("label_names"):
        typer.echo(
            f"labels in this file: {json.dumps(info['label_names'], ensure_ascii=False)}. A private run needs them in "
            f"its config (labels: {json.dumps(info['label_names'], ensure_ascii=False)}, or --set 'labels=[...]'): the "
            "classifier's width and label names are released with the adapter, so they must be chosen in advance, "
            "never read from the private data.",
            err=True,
        )


def _split_kv(text: str) -> tuple[str, str]:
    if "=" not in text:
        raise ConfigError(f"--column {text!r} is not role=column, e.g. --column text=sentence.")
    k, v = text.split("=", 1)
    return k.strip(), v.strip()


def _tokenizer(model: str):
    from workbench.engine.models import ModelError, _source, tiny_tokenizer

    if model == "tiny":
        return tiny_tokenizer()
    from transformers import AutoTokenizer

    source, extra = _source(model)
    try:
        return AutoTokenizer.from_pretrained(source, **extra)
    except (OSError, ValueError) as err:
        raise ModelError(f"could not load the tokenizer of {model!r}: {str(err).splitlines()[0][:200]}") from None


@app.command("app")
def app_cmd(
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to bind; 127.0.0.1 keeps it on this machine."),
    port: int = typer.Option(7860, "--port"),
    share: bool = typer.Option(False, "--share", help="A public Gradio link; refused without --auth."),
    auth: Optional[str] = typer.Option(None, "--auth", help="USER:PASS required to open the app."),
    max_upload_mb: int = typer.Option(50, "--max-upload-mb", help="Largest data file accepted for upload."),
    config: Optional[Path] = typer.Option(
        None, "--config", "-c", help="Preset the controls from a run config (YAML/JSON), e.g. assets/demo.yaml."
    ),
    workshop: bool = typer.Option(
        False, "--workshop", help="Workshop mode: participants log in, see their own runs, share a fair queue."
    ),
    participants_file: Optional[Path] = typer.Option(
        None,
        "--participants-file",
        help="Workshop: a CSV file 'name,password,role' (role 'instructor' marks the instructor).",
    ),
    join_code: Optional[str] = typer.Option(
        None, "--join-code", help="Workshop: participants join at /workbench/join with this code and a chosen name."
    ),
    instructor: Optional[str] = typer.Option(
        None, "--instructor", help="Workshop: the instructor's NAME:PASSWORD (or mark one in the participants file)."
    ),
    workshop_slots: int = typer.Option(
        1, "--workshop-slots", min=1, help="Workshop: runs that train at once (small runs share the cores)."
    ),
    max_queued: int = typer.Option(
        2, "--max-queued", min=1, help="Workshop: runs each participant may have waiting in the queue."
    ),
) -> None:
    """Open the Gradio workbench (Plan, Train, Compare, Runs; with --workshop, a Workshop tab too)."""
    _quiet_libraries()
    defaults: dict = {}
    if config is not None:
        try:
            defaults = RunConfig.from_file(config).to_dict()
        except ConfigError as err:
            _fail(str(err))
    if share and not auth:
        _fail("--share publishes the app on the internet; add --auth USER:PASS to protect it.")
    if auth is not None and (":" not in auth or not auth.split(":", 1)[0] or not auth.split(":", 1)[1]):
        _fail("--auth must be USER:PASS, e.g. --auth alice:s3cret.")
    try:
        from workbench.app import launch
    except ImportError as err:
        _fail(f"the app needs gradio ({err}). Install it with `pip install 'dp-workbench[app]'` or `make install`.")
    room = None
    if workshop:
        room = dict(
            participants_file=str(participants_file) if participants_file else None,
            join_code=join_code,
            instructor=instructor,
            slots=workshop_slots,
            max_queued=max_queued,
        )
        from workbench.app.workshop import Workshop, WorkshopError
        from workbench.store.runs import RunStore

        try:  # the flags' problems as messages now, before the server starts
            Workshop.from_options(RunStore(), session_factory=lambda *a, **k: None, **room)
        except WorkshopError as err:
            _fail(str(err))
    elif participants_file or join_code or instructor:
        _fail("--participants-file, --join-code and --instructor are workshop options: add --workshop.")
    launch(host=host, port=port, share=share, auth=auth, max_upload_mb=max_upload_mb, defaults=defaults, workshop=room)


from workbench.cli import sweeps as _sweeps  # noqa: E402 - `sweep` and `compare`

_sweeps.register(app)
from workbench.cli import federate as _federate  # noqa: E402 - `federate` (federated DP-LoRA on Flower)

_federate.register(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
