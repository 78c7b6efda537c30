"""The live rows of a run: what a watching page or notebook needs from each new event, as plain data.

One definition for every live view.  The app's stream (workbench/app/live.py) sends
``rows(events)`` for the events after the sequence number the page holds, and the page appends them
to its charts; the notebooks' Dashboard folds the same events (``RunView``) into present's figures.

    rows(store.events(run_id, after_seq=seq))
    # {"seq": 41, "started": {...} | None, "steps": [{"step": 1, "loss": ...}, ...],
    #  "evals": [{"step": 10, "val_loss": ...}], "modules": {...} | None, "ended": {...} | None}

Numbers only (no figures, no HTML): a step row is about 40 numbers, whatever the chart library.
Non-finite floats become None (JSON has no NaN or infinity): a loss of None is an empty Poisson
batch, an epsilon of None a non-private run.
"""

from __future__ import annotations

import math
from typing import Any, Iterable

from workbench.events import GRAD_NORM_BIN_EDGES, EvalMetrics, Event, RunEnded, RunStarted, StepMetrics
from workbench.present.diagnostics import TELEMETRY_NOTE, log_bin_bounds, log_bin_labels, signal_to_noise
from workbench.present.series import accountant_label, short_module_names

# The histogram's bins in units of C: the left edges, the last bar open-ended ("> 3 C"): runs stored before the
# log bins, whose rows carry "hist" (the page draws those with a linear axis).
BIN_EDGES = [float(e) for e in GRAD_NORM_BIN_EDGES[:-1]]
# The log bins (GRAD_NORM_LOG_BIN_EDGES) as [low, high] in log10(norm / C), under- and overflow bins included.
LOG_BINS = [[lo, hi] for lo, hi in log_bin_bounds()]


def _num(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def step_row(s: StepMetrics) -> dict[str, Any]:
    """One step: its scalars and its gradient-norm histogram: ``loghist`` (counts per LOG_BINS bin, units of C)
    and ``median`` (norm / C), or, for a run stored before the log bins, ``hist`` (per BIN_EDGES bin)."""
    row = {
        "step": s.step,
        "loss": _num(s.loss),
        "epsilon": _num(s.epsilon),
        "audit": _num(s.audit_epsilon_lower_bound),  # the bound: the final step only
        "audit_interim": _num(s.audit_interim),  # interim readings: not a bound
        "batch": s.batch_size,
        "clipped": _num(s.clipped_fraction),
        "max": _num(s.grad_norm_max),
        "median": _num(s.grad_norm_median),
        "tokens": s.tokens,
        "nonfinite": s.nonfinite,
        "time": s.time,
    }
    if s.grad_norm_log_hist:
        row["loghist"] = list(s.grad_norm_log_hist)
    else:
        row["hist"] = list(s.grad_norm_hist)
    return row


def module_row(s: StepMetrics, dims: dict[str, int] | None = None) -> dict[str, Any]:
    """Per LoRA module at one step (present.diagnostics.signal_to_noise): the norm of the clipped sum before noise
    (``grad``), the expected norm of the noise added to it (``noise_norm``, sqrt(d_l) sigma_l C_l: ``dims`` are the
    d_l, RunStarted.module_dims), their ratio ``snr``, and the noise std per coordinate ``noise`` (the allocation).
    ``noise_norm`` and ``snr`` are None without ``dims`` (runs stored before) or noise."""
    sn = signal_to_noise(s, dims)
    return {
        "step": s.step,
        "names": sn["names"],
        "short": short_module_names(sn["names"]),
        "noise": sn["noise_std"],
        "grad": sn["signal"],
        "noise_norm": sn["noise_norm"],
        "snr": sn["snr"],
    }


def eval_row(e: EvalMetrics) -> dict[str, Any]:
    return {
        "step": e.step,
        "val_loss": _num(e.val_loss),
        "accuracy": _num(e.accuracy),
        "generations": [{"prompt": g.get("prompt", ""), "output": g.get("output", "")} for g in e.generations],
    }


def started_row(s: RunStarted) -> dict[str, Any]:
    """What the charts need once: the planned epsilon curve, the target, C, and the epsilon panel's title."""
    title = f"Privacy spent ε ({accountant_label(s.accountant)}" + (f", δ = {s.delta:.0e})" if s.delta else ")")
    clip = s.config.get("max_grad_norm")
    return {
        "planned": [[int(step), _num(eps)] for step, eps in s.planned_epsilon],
        "target": _num(s.target_epsilon),
        "clip": float(clip) if clip is not None else None,
        "epsilon_title": title,
        "planned_steps": s.planned_steps,
        "bins": BIN_EDGES,
        "log_bins": LOG_BINS,
        "log_labels": log_bin_labels(),
        "telemetry_note": TELEMETRY_NOTE,
    }


def rows(events: Iterable[tuple[int, Event]], *, started: RunStarted | None = None) -> dict[str, Any]:
    """The rows of ``(seq, event)`` pairs (as ``RunStore.events`` returns them), in order; ``modules``
    is the latest step's only (the panel shows one step), ``seq`` the last event's (or 0). ``started``: the run's
    RunStarted when it is not among ``events`` (a page already holding the first rows), for the modules' sizes."""
    out: dict[str, Any] = {"seq": 0, "started": None, "steps": [], "evals": [], "modules": None, "ended": None}
    latest: StepMetrics | None = None
    for seq, event in events:
        out["seq"] = seq
        if isinstance(event, StepMetrics):
            out["steps"].append(step_row(event))
            latest = event
        elif isinstance(event, EvalMetrics):
            out["evals"].append(eval_row(event))
        elif isinstance(event, RunStarted):
            out["started"] = started_row(event)
            started = event
        elif isinstance(event, RunEnded):
            out["ended"] = {"status": event.status, "reason": event.reason}
    if latest is not None and (latest.module_noise_std or latest.module_grad_norm):
        out["modules"] = module_row(latest, started.module_dims if started is not None else None)
    return out
