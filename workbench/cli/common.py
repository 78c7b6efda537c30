"""What every command shares: messages instead of tracebacks, config loading, JSON and list output, the run
store, and the progress line."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Callable, NoReturn, Optional

import typer

from workbench.config import ConfigError, RunConfig
from workbench.events import jsonable


def _print_json(value: Any) -> None:
    typer.echo(json.dumps(jsonable(value), indent=2))


def _print_list(
    items: list,
    as_json: bool,
    *,
    to_json: Callable[[Any], Any],
    empty: str,
    each: Callable[[Any], None],
    header: str = "",
) -> None:
    """What a listing command prints: ``items`` as one JSON list; ``empty`` (saying what to do) when there are
    none; or ``header`` (if any) and each item, printed by ``each``."""
    if as_json:
        _print_json([to_json(item) for item in items])
    elif not items:
        typer.echo(empty)
    else:
        if header:
            typer.echo(header)
        for item in items:
            each(item)


def _fail(message: str, code: int = 2) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _load_config(path: Optional[Path], overrides: list[str]) -> RunConfig:
    """The config file (or the defaults) with ``--set`` overrides; a bad one exits 2 with its message."""
    try:
        return (RunConfig.from_file(path) if path else RunConfig()).with_overrides(overrides)
    except ConfigError as err:
        _fail(str(err))


def _quiet_libraries() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1") if os.environ.get("WORKBENCH_ONLINE") != "1" else None
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    for name in ("transformers", "peft", "huggingface_hub"):
        logging.getLogger(name).setLevel(logging.ERROR)
    # dp_accounting's RDP logs "_compute_log_a_frac failed to converge" through absl for each order it drops
    # (dozens per curve); the order is excluded and the bound stays valid, so it is noise to a user
    logging.getLogger("absl").setLevel(logging.ERROR)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:
        pass


# -- train -----------------------------------------------------------------------------------------


class _Progress:
    """A tqdm bar on stderr showing loss and epsilon; a subscriber like any other."""

    def __init__(self) -> None:
        self.bar = None

    def __call__(self, event) -> None:
        from tqdm import tqdm

        kind = event.kind
        if kind == "run_started":
            self.bar = tqdm(total=event.planned_steps, desc="DP-LoRA", unit="step", file=sys.stderr, dynamic_ncols=True)
            typer.echo(
                f"run {event.run_id}: N={event.dataset_size} q={event.sample_rate:.4g} sigma={event.noise_multiplier:.4g} "
                f"delta={event.delta:.2g} steps={event.planned_steps} accountant={event.accountant} "
                f"neighbouring={event.neighboring} device={event.device}",
                err=True,
            )
            from workbench.present.diagnostics import prefix_cache_text

            cache = prefix_cache_text(event.prefix_cache, lora_layers=event.config.get("lora_layers"))
            if cache:
                typer.echo(cache, err=True)
            if event.checks:
                from workbench.privacy.checks import Finding, format_findings

                typer.echo(
                    format_findings([Finding(**c) for c in event.checks if c.get("severity") != "info"]), err=True
                )
        elif kind == "step" and self.bar is not None:
            if event.notices:
                from workbench.privacy.checks import Finding, format_findings

                self.bar.write(format_findings([Finding(**n) for n in event.notices]), file=sys.stderr)
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{event.loss:.3f}", eps=f"{event.epsilon:.3g}", batch=event.batch_size)
        elif kind == "eval" and self.bar is not None:
            acc = "" if event.accuracy is None else f" accuracy={event.accuracy:.3f}"
            at = "untuned model (step 0)" if event.step == 0 else f"step {event.step}"
            self.bar.write(f"{at}: val_loss={event.val_loss:.4f}{acc}", file=sys.stderr)
        elif kind == "run_ended" and self.bar is not None:
            self.bar.close()


def _store():
    from workbench.store.runs import RunStore

    return RunStore()


def _telemetry_note(fmt: str) -> None:
    typer.echo(
        f"warning: the {fmt} export holds training telemetry computed from the raw data (losses, gradient norms, "
        "validation metrics); it is NOT covered by the differential-privacy guarantee. Do not publish it.",
        err=True,
    )
