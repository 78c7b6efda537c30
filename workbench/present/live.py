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
from workbench.present.series import accountant_label, short_module_names

# The histogram's bins in units of C: the left edges, the last bar open-ended ("> 3 C").
BIN_EDGES = [float(e) for e in GRAD_NORM_BIN_EDGES[:-1]]


def _num(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def step_row(s: StepMetrics) -> dict[str, Any]:
    """One step: its scalars, its gradient-norm histogram (counts per BIN_EDGES bin, units of C)."""
    return {
        "step": s.step,
        "loss": _num(s.loss),
        "epsilon": _num(s.epsilon),
        "audit": _num(s.audit_epsilon_lower_bound),
        "batch": s.batch_size,
        "clipped": _num(s.clipped_fraction),
        "max": _num(s.grad_norm_max),
        "hist": list(s.grad_norm_hist),
        "tokens": s.tokens,
        "nonfinite": s.nonfinite,
        "time": s.time,
    }


def module_row(s: StepMetrics) -> dict[str, Any]:
    """Per LoRA module at one step: the noise std added and the norm of the clipped, summed gradient."""
    names = list(s.module_noise_std or s.module_grad_norm)
    return {
        "step": s.step,
        "names": names,
        "short": short_module_names(names),
        "noise": [_num(s.module_noise_std.get(n)) for n in names],
        "grad": [_num(s.module_grad_norm.get(n)) for n in names],
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
    }


def rows(events: Iterable[tuple[int, Event]]) -> dict[str, Any]:
    """The rows of ``(seq, event)`` pairs (as ``RunStore.events`` returns them), in order; ``modules``
    is the latest step's only (the panel shows one step), ``seq`` the last event's (or 0)."""
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
        elif isinstance(event, RunEnded):
            out["ended"] = {"status": event.status, "reason": event.reason}
    if latest is not None and (latest.module_noise_std or latest.module_grad_norm):
        out["modules"] = module_row(latest)
    return out
