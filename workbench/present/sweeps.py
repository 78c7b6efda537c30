"""A sweep in words: its planned privacy cost and the progress line after each run (``workbench.sweeps``'
``SweepCost`` and ``Progress``), for the CLI, the app's Sweep panel and the notebooks."""

from __future__ import annotations

import math

from workbench.present.series import fmt_duration, fmt_eps


def cost_line(cost) -> str:
    """``SweepCost`` in one line: each run's epsilon and (where they compose) all of them together."""
    runs = f"{cost.runs} run" + ("s" if cost.runs != 1 else "")
    if cost.epsilon is None:
        return f"{runs}, each ε ≤ {fmt_eps(cost.per_run)}; no total: {cost.note}."
    if math.isinf(cost.epsilon):
        return f"{runs}: the total privacy cost is ε = ∞ (a run is non-private: noise 0 or a noise seed)."
    text = (
        f"{runs}, each ε ≤ {fmt_eps(cost.per_run)}; all of them together (releasing them, or choosing the best "
        f"by a private validation metric): **ε = {fmt_eps(cost.epsilon)}** at δ = {cost.delta:.2g} "
        f"(PLD composition, {cost.neighboring})."
    )
    return text + (f" Note: {cost.note}." if cost.note else "")


def progress_line(p) -> str:
    """``Progress`` after one run of a sweep: done of total, the run's status, epsilon and metrics, time left."""
    s = p.summary
    eps = s.get("epsilon")
    metrics = " ".join(f"{k}={s[k]:.4g}" for k in ("val_loss", "accuracy") if isinstance(s.get(k), (int, float)))
    eta = f" | about {fmt_duration(p.remaining_seconds)} left" if p.remaining_seconds else ""
    eps_text = fmt_eps(float(eps)) if eps is not None else "–"
    return (
        f"sweep {p.sweep} [{p.done}/{p.total}] {p.label}: {p.status} "
        f"eps={eps_text} {metrics} ({fmt_duration(p.seconds)}){eta}"
    ).replace("  ", " ")
