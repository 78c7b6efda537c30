"""The live rows of a run: what a watching page or notebook needs from each new event, as plain data.

One definition for every live view.  The app's stream (workbench/app/live.py) sends
``rows(events)`` for the events after the sequence number the page holds, and the page appends them
to its charts; the notebooks' Dashboard folds the same events (``RunView``) into present's figures.

    rows(store.events(run_id, after_seq=seq), earlier=steps_the_page_holds)
    # {"seq": 41, "started": {...} | None, "steps": [{"step": 1, "loss": ...}, ...],
    #  "evals": [{"step": 10, "val_loss": ...}], "modules": {...} | None, "ended": {...} | None,
    #  "smoothed": {"reset": bool, "points": [[step, loss], ...]} | None}

Numbers and ready-made titles only (no figures, no HTML): a step row is about 40 numbers, whatever the
chart library.  What the charts show beyond the raw numbers is computed here, by the functions the
notebooks' figures use, so the page only draws: the smoothed train loss (``present.series.ema``), the
histogram's title (``present.diagnostics.norm_title``) and the per-module panel's
(``present.diagnostics.snr_title``).  Non-finite floats become None (JSON has no NaN or infinity): a loss
of None is an empty Poisson batch, an epsilon of None a non-private run.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Sequence

from workbench.events import GRAD_NORM_BIN_EDGES, EvalMetrics, Event, RunEnded, RunStarted, StepMetrics
from workbench.present.diagnostics import (
    TELEMETRY_NOTE,
    log_bin_bounds,
    log_bin_labels,
    norm_title,
    signal_to_noise,
    snr_title,
)
from workbench.present.series import accountant_label, ema, ema_alpha, short_module_names

# The histogram's bins in units of C: the left edges, the last bar open-ended ("> 3 C"): runs stored before the
# log bins, whose rows carry "hist" (the page draws those with a linear axis).
BIN_EDGES = [float(e) for e in GRAD_NORM_BIN_EDGES[:-1]]
# The log bins (GRAD_NORM_LOG_BIN_EDGES) as [low, high] in log10(norm / C), under- and overflow bins included.
LOG_BINS = [[lo, hi] for lo, hi in log_bin_bounds()]
# The histogram's title at a step with no examples (an empty Poisson batch), and before any step.
NORM_TITLE = "Per-example gradient norms"


def _num(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def step_row(s: StepMetrics, *, clip: float | None = None) -> dict[str, Any]:
    """One step: its scalars and its gradient-norm histogram: ``loghist`` (counts per LOG_BINS bin, units of C)
    and ``median`` (norm / C), or, for a run stored before the log bins, ``hist`` (per BIN_EDGES bin); and the
    histogram's title (``norm_title``, with the run's clipping norm ``clip``; NORM_TITLE for an empty batch)."""
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
    examples = sum(row.get("loghist") or row["hist"])
    row["norm_title"] = (
        norm_title(s.step, median=row["median"], clipped=row["clipped"], max_norm=row["max"], clip=clip)
        if examples
        else NORM_TITLE
    )
    return row


def module_row(s: StepMetrics, dims: dict[str, int] | None = None) -> dict[str, Any]:
    """Per LoRA module at one step (present.diagnostics.signal_to_noise): the norm of the clipped sum before noise
    (``grad``), the expected norm of the noise added to it (``noise_norm``, sqrt(d_l) sigma_l C_l: ``dims`` are the
    d_l, RunStarted.module_dims), their ratio ``snr``, and the noise std per coordinate ``noise`` (the allocation).
    ``noise_norm`` and ``snr`` are None without ``dims`` (runs stored before) or noise. ``title``: the panel's
    (``snr_title``)."""
    sn = signal_to_noise(s, dims)
    return {
        "step": s.step,
        "title": snr_title(s.step, sn["snr"]),
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


def smoothed_loss(earlier: Sequence[StepMetrics], new: Sequence[StepMetrics]) -> dict[str, Any] | None:
    """The train loss smoothed as the figures smooth it (``present.series.ema`` over the run's finite losses, in
    order), for a page that holds the steps ``earlier`` and receives ``new``: ``{"reset": True, "points": [[step,
    value], ...]}`` for every step when the values it holds change too (ema's factor follows the number of losses,
    ``ema_alpha``: from 34 to 500 losses each new one changes it), else ``{"reset": False, "points": [...]}`` for
    the new steps only.  None when no new step has a finite loss (nothing changes)."""
    fresh = [(s.step, s.loss) for s in new if _num(s.loss) is not None]
    if not fresh:
        return None
    held = [(s.step, s.loss) for s in earlier if _num(s.loss) is not None]
    series = held + fresh
    values = ema([loss for _, loss in series])
    reset = not held or ema_alpha(len(held)) != ema_alpha(len(series))
    start = 0 if reset else len(held)
    return {"reset": reset, "points": [[step, float(v)] for (step, _), v in zip(series[start:], values[start:])]}


def rows(
    events: Iterable[tuple[int, Event]], *, started: RunStarted | None = None, earlier: Sequence[StepMetrics] = ()
) -> dict[str, Any]:
    """The rows of ``(seq, event)`` pairs (as ``RunStore.events`` returns them), in order; ``modules``
    is the latest step's only (the panel shows one step), ``seq`` the last event's (or 0). ``started``: the run's
    RunStarted when it is not among ``events`` (a page already holding the first rows), for C and the modules'
    sizes. ``earlier``: the steps the page already holds, in order (none: it starts from these events), for
    ``smoothed`` (``smoothed_loss``)."""
    out: dict[str, Any] = {
        "seq": 0,
        "started": None,
        "steps": [],
        "evals": [],
        "modules": None,
        "ended": None,
        "smoothed": None,
    }
    steps: list[StepMetrics] = []
    for seq, event in events:
        out["seq"] = seq
        if isinstance(event, StepMetrics):
            steps.append(event)
        elif isinstance(event, EvalMetrics):
            out["evals"].append(eval_row(event))
        elif isinstance(event, RunStarted):
            out["started"] = started_row(event)
            started = event
        elif isinstance(event, RunEnded):
            out["ended"] = {"status": event.status, "reason": event.reason}
    clip = started.config.get("max_grad_norm") if started is not None else None
    out["steps"] = [step_row(s, clip=float(clip) if clip is not None else None) for s in steps]
    out["smoothed"] = smoothed_loss(earlier, steps)
    latest = steps[-1] if steps else None
    if latest is not None and (latest.module_noise_std or latest.module_grad_norm):
        out["modules"] = module_row(latest, started.module_dims if started is not None else None)
    return out
