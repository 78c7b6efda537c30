"""Export a stored run: its adapter (PEFT format) with the privacy report and config, and, only when
asked for, the training telemetry.

What the DP guarantee covers is the adapter (and what is computed from it, or from the public
settings: the privacy report).  The telemetry is computed from the raw private data and is NOT
covered: every step event carries per-example gradient-norm histograms, the norm of the clipped
sum before noise, batch losses and the realised Poisson batch sizes; the summary's validation
metrics come from held-out private examples.  It is what the data owner watches to tune a run,
not something to publish with the adapter, so an export leaves it out unless ``telemetry=True``,
and then puts it in its own folder with a warning beside it.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from workbench.errors import UserError
from workbench.events import jsonable
from workbench.store.runs import RunStore

# Summary keys computed from the raw data (exported only with the telemetry), and the local path.
DATA_DEPENDENT_KEYS = (
    "val_loss",
    "perplexity",
    "accuracy",
    "predicted_label",
    "prediction_share",
    "baseline",
    "people",
    "wall_time",
    "reason",
    "adapter_dir",
    "prefix_cache",  # counts of the sampled examples and their tokens (engine/prefix_cache.py)
    "clients",  # a federated run's per-client table: losses, update norms, sizes (workbench/federated/table.py)
)
PATH_KEYS = ("model", "data", "validation_data", "output_dir")  # exported by their last part only
TELEMETRY_WARNING = """# Telemetry: not covered by the differential-privacy guarantee

These files were computed from the raw training and validation data: per-example gradient-norm
histograms, norms of clipped gradient sums before noise, batch losses, the realised batch sizes
and validation metrics. The (epsilon, delta) of the privacy report covers the adapter, not these.
Keep them with the data they came from; do not publish them with the adapter.
"""


# Every exported file's and folder's time (1980-01-02 00:00 UTC, after zip's earliest in any time zone): copies keep
# the training machine's times otherwise, which say when the run trained, the wall time the summary leaves out.
EXPORT_TIME = 315_619_200


class ExportError(UserError, ValueError):
    """The run cannot be exported; the message says why."""


def export_name(run_id: str) -> str:
    """An exported run's name: ``run-`` and the run id's random part, without the timestamp the id starts with.

    >>> export_name("20250101-093000-3fa2c1")
    'run-3fa2c1'
    """
    return "run-" + run_id.rsplit("-", 1)[-1]


def reset_times(folder: Path) -> None:
    """Set every file and folder under ``folder`` (and itself) to ``EXPORT_TIME``, folders after their contents."""
    for path in sorted(folder.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        os.utime(path, (EXPORT_TIME, EXPORT_TIME), follow_symlinks=False)
    os.utime(folder, (EXPORT_TIME, EXPORT_TIME))


def _portable(values: dict) -> dict:
    """Path-valued settings by their last part: nothing exported names a path of the training machine."""
    out = dict(values)
    for key in PATH_KEYS:
        value = out.get(key)
        if isinstance(value, str) and ("/" in value or "\\" in value):
            out[key] = Path(value).name
    return out


def export_run(
    store: RunStore, run_id: str, directory: str | Path, *, telemetry: bool = False, force: bool = False
) -> Path:
    """Copy run ``run_id`` to ``directory/run-<random part of the id>/`` (``export_name``) and return that folder.

    Always: ``adapter/`` (PEFT format, privacy_report.json, model card), ``config.json`` and a
    ``summary.json`` without the data-dependent metrics. Nothing says when the run trained: the folder and the
    summary's run_id leave out the id's timestamp, and every file's time is ``EXPORT_TIME``. With ``telemetry``:
    ``telemetry/`` with every event, the full summary and a README saying they are not covered by the guarantee.
    A run with seeded randomness (``noise_seed``) has no DP guarantee and is refused unless
    ``force``; its card and report keep the warning. A replay (``workbench runs replay``) is refused: it is a copy
    of its original's release. The run's secret key is never copied.
    """
    rec = store.get(run_id)
    summary = rec.summary or {}
    if (summary.get("seeded_randomness") or rec.config.get("noise_seed") is not None) and not force:
        raise ExportError(
            f"run {rec.id} used seeded randomness (noise_seed={rec.config.get('noise_seed')}): anyone with the seed can "
            "replay its sampling and noise, so it has no differential-privacy guarantee. Retrain without noise_seed, or "
            "export with --force (the model card keeps the warning)."
        )
    if summary.get("replay_of"):  # same key, same data: the original's release again (store/ledger.py)
        raise ExportError(
            f"run {rec.id} is a replay of run {summary['replay_of']} (same key, same data): its adapter is a copy of "
            f"that release, not a new one. Export {summary['replay_of']} instead."
        )
    adapter = summary.get("adapter_dir")
    if not adapter or not Path(adapter).exists():
        raise ExportError(f"run {rec.id} has no saved adapter (status: {rec.status}). Only runs that trained have one.")
    target = Path(directory) / export_name(rec.id)
    if target.exists():
        raise ExportError(f"{target} already exists. Choose another directory or remove it.")
    shutil.copytree(adapter, target / "adapter")
    (target / "config.json").write_text(json.dumps(_portable(rec.config), indent=2))
    released = _portable({k: v for k, v in summary.items() if k not in DATA_DEPENDENT_KEYS})
    if "run_id" in released:
        released["run_id"] = export_name(rec.id)
    (target / "summary.json").write_text(json.dumps(jsonable(released), indent=2))
    if telemetry:
        folder = target / "telemetry"
        folder.mkdir()
        (folder / "README.md").write_text(TELEMETRY_WARNING)
        (folder / "summary.json").write_text(json.dumps(jsonable(summary), indent=2))
        with open(folder / "events.jsonl", "w") as fh:
            for _, e in store.events(rec.id):
                fh.write(json.dumps(e.to_dict()) + "\n")
    reset_times(target)
    return target


# -- telemetry for other tools: csv, parquet, TensorBoard ----------------------------------------------

METRIC_FORMATS = {"csv": "pandas", "parquet": "pyarrow", "tensorboard": "tensorboardX"}
STEP_COLUMNS = (
    "step",
    "loss",
    "learning_rate",
    "batch_size",
    "epsilon",
    "tokens",
    "tokens_seen",
    "wall_time",
    "step_time",
    "tokens_per_second",
    "grad_norm_max",
    "clipped_fraction",
    "effective_noise_multiplier",
    "nonfinite",
    "audit_epsilon_lower_bound",
    "audit_interim",
    "grad_norm_hist",
)
EVAL_COLUMNS = ("step", "epsilon", "tokens_seen", "wall_time", "val_loss", "perplexity", "accuracy")
# from RunStarted: the privacy values the plan resolved (the dataset size comes from the summary: PUBLISHED_SIZES)
RESOLVED = (
    ("noise_multiplier", "sigma"),
    ("sample_rate", "q"),
    ("delta", "delta"),
    ("neighboring", "relation"),
    ("accountant", "accountant"),
    ("planned_steps", "planned_steps"),
    ("seeded_randomness", "seeded_randomness"),
)
FINAL = ("epsilon", "steps", "val_loss", "perplexity", "accuracy", "wall_time")
PUBLISHED_SIZES = ("dataset_size", "num_users", "dataset_size_published_as")  # from the summary, as published


def _check_format(fmt: str) -> str:
    import importlib.util

    if fmt not in METRIC_FORMATS:
        raise ExportError(f"--format must be one of adapter, {', '.join(METRIC_FORMATS)}. Found {fmt!r}.")
    package = METRIC_FORMATS[fmt]
    if importlib.util.find_spec(package) is None:
        raise ExportError(
            f"--format {fmt} needs the {package} package, which is not installed. Install it with "
            f"`pip install {package}` (or `make install`)."
        )
    return fmt


def run_tables(store: RunStore, run_id: str, *, label: str | None = None, sweep: str | None = None):
    """(steps rows, evals rows, the run's row): every step and evaluation of a run as plain dicts, and one row
    with its settings, the resolved privacy values (sigma, q, delta, relation) and its final numbers."""
    rec = store.get(run_id)
    ident = {"run_id": rec.id, "name": rec.name, "sweep": sweep, "label": label or rec.name or rec.id}
    steps, evals, started = [], [], None
    tokens_seen, eps_at = 0, {}
    for _, e in store.events(rec.id):
        if e.kind == "run_started":
            started = e
        elif e.kind == "step":
            tokens_seen += e.tokens
            eps_at[e.step] = (e.epsilon, tokens_seen)
            row = {c: getattr(e, c, None) for c in STEP_COLUMNS}
            row.update(
                tokens_seen=tokens_seen,
                wall_time=e.time - started.time if started else None,
                grad_norm_hist=json.dumps(e.grad_norm_hist),
            )
            steps.append({**ident, **row})
        elif e.kind == "eval":
            eps, seen = eps_at.get(e.step, (0.0 if e.step == 0 else None, 0 if e.step == 0 else None))
            evals.append(
                {
                    **ident,
                    "step": e.step,
                    "epsilon": eps,
                    "tokens_seen": seen,
                    "wall_time": e.time - started.time if started else None,
                    "val_loss": e.val_loss,
                    "perplexity": e.perplexity,
                    "accuracy": e.accuracy,
                }
            )
    summary = rec.summary or {}
    run_row: dict = {**ident, "status": rec.status, "reason": rec.reason}
    for key, column in RESOLVED:
        run_row[column] = getattr(started, key, None) if started is not None else summary.get(key)
    # the sizes as the run's summary publishes them (engine/report.published_sizes), never RunStarted's exact count,
    # which under add/remove reveals membership; none before the run ends
    for key in PUBLISHED_SIZES:
        run_row[key] = summary.get(key)
    last_eval = evals[-1] if evals else {}
    final = rec.final_epsilon  # an ended run's stored value (what every surface shows), else the last step's
    run_row["epsilon"] = final if final is not None else (steps[-1]["epsilon"] if steps else None)
    run_row["steps"] = steps[-1]["step"] if steps else summary.get("steps", 0)
    for key in ("val_loss", "perplexity", "accuracy"):
        run_row[key] = last_eval.get(key, summary.get(key))
    run_row["wall_time"] = summary.get("wall_time", steps[-1]["wall_time"] if steps else None)
    config = _portable(rec.config)
    for key, value in config.items():
        run_row[f"config.{key}"] = json.dumps(value) if isinstance(value, (dict, list)) else value
    return steps, evals, run_row


def export_metrics(store: RunStore, run_id: str, directory: str | Path, fmt: str) -> Path:
    """Write run ``run_id``'s steps and evaluations to ``directory/<run_id>/`` as csv, parquet or TensorBoard
    event files (scalars, gradient-norm histograms, the config as HParams), with the telemetry warning."""
    _check_format(fmt)
    rec = store.get(run_id)
    target = _fresh(Path(directory) / rec.id)
    if fmt == "tensorboard":
        _tensorboard(store, rec.id, target, label=rec.name or rec.id)
    else:
        steps, evals, row = run_tables(store, rec.id)
        _write_tables(target, fmt, steps, evals, [row])
    (target / "README.md").write_text(TELEMETRY_WARNING)
    return target


def export_sweep_metrics(store: RunStore, name: str, directory: str | Path, fmt: str) -> Path:
    """Every run of sweep ``name`` in one set of tables (runs, steps, evals) or one TensorBoard folder per run,
    under ``directory/<name>/``; SweepNotFound for an unknown sweep."""
    from workbench.store.runs import RunNotFound
    from workbench.store.sweeps import SweepStore

    _check_format(fmt)
    rec = SweepStore(store).get(name)
    members = []
    for m in rec.members:
        if m.run_id is None:
            continue
        try:
            store.get(m.run_id)
        except RunNotFound:
            continue
        members.append(m)
    if not members:
        raise ExportError(f"sweep {name} has no stored runs yet: `workbench sweep resume {name}` trains them.")
    target = _fresh(Path(directory) / name)
    if fmt == "tensorboard":
        for m in members:
            _tensorboard(store, m.run_id, target / m.label, label=m.label, sweep=name)
    else:
        all_steps, all_evals, rows = [], [], []
        for m in members:
            steps, evals, row = run_tables(store, m.run_id, label=m.label, sweep=name)
            all_steps += steps
            all_evals += evals
            rows.append(row)
        _write_tables(target, fmt, all_steps, all_evals, rows)
    (target / "README.md").write_text(TELEMETRY_WARNING)
    return target


def _fresh(target: Path) -> Path:
    if target.exists():
        raise ExportError(f"{target} already exists. Choose another directory or remove it.")
    target.mkdir(parents=True)
    return target


def _write_tables(target: Path, fmt: str, steps: list, evals: list, runs: list) -> None:
    import pandas as pd

    ident = ["run_id", "name", "sweep", "label"]
    frames = {
        "runs": pd.DataFrame(runs),
        "steps": pd.DataFrame(steps, columns=[*ident, *STEP_COLUMNS]),
        "evals": pd.DataFrame(evals, columns=[*ident, *EVAL_COLUMNS]),
    }
    for name, frame in frames.items():
        if fmt == "csv":
            frame.to_csv(target / f"{name}.csv", index=False)
        else:
            for column in frame.columns:  # parquet wants one type per column: mixed settings become text
                if frame[column].dtype == object and len({type(v) for v in frame[column].dropna()}) > 1:
                    frame[column] = frame[column].map(lambda v: None if v is None else str(v))
            frame.to_parquet(target / f"{name}.parquet", index=False)


def _hparam(value):
    if value is None:
        return "none"
    if isinstance(value, (bool, int, float, str)):
        return value
    return json.dumps(value, sort_keys=True)


def _tensorboard(store: RunStore, run_id: str, logdir: Path, *, label: str, sweep: str | None = None) -> None:
    """One run as TensorBoard event files (tensorboardX): scalars, the per-step gradient-norm histograms (in units
    of the clipping norm C) and the config with the resolved privacy values as HParams with the final metrics."""
    import math

    from tensorboardX import SummaryWriter
    from tensorboardX.summary import hparams

    from workbench.events import GRAD_NORM_BIN_EDGES

    steps, evals, row = run_tables(store, run_id, label=label, sweep=sweep)
    writer = SummaryWriter(logdir=str(logdir), flush_secs=3600)
    try:
        for _, e in store.events(run_id, kinds=("step", "eval")):
            if e.kind == "step":
                for tag, value in (
                    ("train/loss", e.loss),
                    ("train/learning_rate", e.learning_rate),
                    ("train/batch_size", e.batch_size),
                    ("train/clipped_fraction", e.clipped_fraction),
                    ("train/grad_norm_max", e.grad_norm_max),
                    ("train/tokens_per_second", e.tokens_per_second),
                    ("privacy/epsilon", e.epsilon),
                ):
                    if value is not None and math.isfinite(value):
                        writer.add_scalar(tag, value, e.step, walltime=e.time)
                counts = list(e.grad_norm_hist)
                if sum(counts):
                    top = max(GRAD_NORM_BIN_EDGES[-2] + 0.1, float(e.grad_norm_max or 0))
                    limits = [*GRAD_NORM_BIN_EDGES[1:-1], top]
                    mids = [(lo + hi) / 2 for lo, hi in zip([0.0, *limits[:-1]], limits)]
                    writer.add_histogram_raw(
                        "train/grad_norm_over_C",
                        min=0.0,
                        max=top,
                        num=sum(counts),
                        sum=sum(c * m for c, m in zip(counts, mids)),
                        sum_squares=sum(c * m * m for c, m in zip(counts, mids)),
                        bucket_limits=limits,
                        bucket_counts=counts,
                        global_step=e.step,
                        walltime=e.time,
                    )
            else:
                for tag, value in (("eval/val_loss", e.val_loss), ("eval/perplexity", e.perplexity)):
                    if value is not None and math.isfinite(value):
                        writer.add_scalar(tag, value, e.step, walltime=e.time)
                if e.accuracy is not None and math.isfinite(e.accuracy):
                    writer.add_scalar("eval/accuracy", e.accuracy, e.step, walltime=e.time)
        hparam_dict = {k.removeprefix("config."): _hparam(v) for k, v in row.items() if k.startswith("config.")}
        for column in ("sigma", "q", "delta", "relation", "accountant", "status"):
            hparam_dict[column] = _hparam(row.get(column))
        metrics = {}
        for key in ("epsilon", "val_loss", "accuracy", "perplexity"):
            value = row.get(key)
            if isinstance(value, (int, float)) and math.isfinite(value):
                metrics[f"hparam/{key}"] = float(value)
        exp, ssi, sei = hparams(hparam_dict, metrics)
        file_writer = writer._get_file_writer()
        for summary in (exp, ssi, sei):
            file_writer.add_summary(summary)
        final_step = row.get("steps") or 0
        for tag, value in metrics.items():
            writer.add_scalar(tag, value, final_step)
    finally:
        writer.close()
