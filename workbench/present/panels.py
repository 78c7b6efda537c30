"""The live panels of one run, and the status colours: one definition for the app and the widgets.

figures = panels(view)        # {"loss": Figure, "epsilon": ..., ...} in PANELS order
"""

from __future__ import annotations

from typing import Any

from workbench.present.figures import (
    epsilon_figure,
    grad_norm_heatmap,
    grad_norm_histogram,
    loss_figure,
    noise_allocation_figure,
)
from workbench.present.view import RunView

PANELS = ("loss", "epsilon", "grad_norms", "grad_norm_evolution", "noise_allocation")

# One colour per run status (the app's badge, the widgets' status line).
STATUS_COLORS = {
    "created": "#7f7f7f",
    "queued": "#8c564b",
    "running": "#1f77b4",
    "finished": "#2ca02c",
    "stopped": "#ff7f0e",
    "failed": "#d62728",
    "interrupted": "#7f7f7f",
}


def panels(view: RunView) -> dict[str, Any]:
    """Every live panel of ``view``, keyed by ``PANELS``."""
    started = view.started
    return {
        "loss": loss_figure(view.steps, view.evals),
        "epsilon": epsilon_figure(
            view.steps,
            started.planned_epsilon if started else (),
            view.target_epsilon,
            accountant=started.accountant if started else None,
            delta=started.delta if started else None,
        ),
        "grad_norms": grad_norm_histogram(view.latest_step, view.clip_norm),
        "grad_norm_evolution": grad_norm_heatmap(view.steps),
        "noise_allocation": noise_allocation_figure(view.latest_step, started.module_dims if started else None),
    }
