"""Progress of a run: fraction done, elapsed time, ETA and the epsilon spent so far."""

from __future__ import annotations

import math
from typing import Any

from workbench.events import RunStarted, StepMetrics
from workbench.present.series import fmt_duration, fmt_eps


def progress(
    run_started: RunStarted | None, last_step: StepMetrics | None, now: float, *, final_epsilon: float | None = None
) -> dict[str, Any]:
    """Where a run stands at time ``now`` (seconds since the epoch); ``final_epsilon``: an ended run's stored epsilon
    (``RunView.final_epsilon``), shown instead of the last step's.

    Returns ``step``, ``planned_steps``, ``fraction`` (0..1), ``elapsed`` and ``eta`` in seconds
    (``eta`` None until a step has been timed), ``epsilon`` (None before the first step, inf when
    non-private), ``target_epsilon``, and ``text``: one line for people.

    >>> from workbench.events import RunStarted
    >>> rs = RunStarted(run_id="r", config={}, dataset_size=100, sample_rate=0.1, noise_multiplier=1.0,
    ...                 delta=1e-5, planned_steps=10, accountant="pld", planned_epsilon=[], target_epsilon=8.0,
    ...                 modules=[], trainable_parameters=0, device="cpu", model_name="tiny", time=0.0)
    >>> progress(rs, None, now=5.0)["fraction"]
    0.0
    """
    if run_started is None:
        return dict(
            step=0,
            planned_steps=None,
            fraction=0.0,
            elapsed=0.0,
            eta=None,
            epsilon=None,
            target_epsilon=None,
            text="waiting to start",
        )
    planned = max(1, int(run_started.planned_steps))
    step = last_step.step if last_step is not None else 0
    elapsed = max(0.0, now - run_started.time)
    eta = None
    if last_step is not None and step > 0:
        per_step = max(1e-9, last_step.time - run_started.time) / step
        eta = max(0.0, (planned - step) * per_step - max(0.0, now - last_step.time))
    epsilon = final_epsilon if final_epsilon is not None else (last_step.epsilon if last_step is not None else None)
    fraction = min(1.0, step / planned)
    text = f"step {step} / {planned} ({fraction:.0%}) · elapsed {fmt_duration(elapsed)} · ETA {fmt_duration(eta)}"
    if epsilon is not None:
        target = run_started.target_epsilon
        text += f" · ε = {fmt_eps(epsilon)}" + (f" of {fmt_eps(target)}" if target is not None else "")
    return dict(
        step=step,
        planned_steps=planned,
        fraction=fraction,
        elapsed=elapsed,
        eta=eta,
        epsilon=None if epsilon is None or (isinstance(epsilon, float) and math.isnan(epsilon)) else epsilon,
        target_epsilon=run_started.target_epsilon,
        text=text,
    )
