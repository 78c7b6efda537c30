"""Pure presentation: events and run records -> plotly figures, tables and numbers.

Shared by the Gradio app (``workbench.app``) and the Jupyter widgets, so both show the same
panels.  Nothing here imports gradio or touches the trainer.

    view = RunView.from_events(run_id, store.events(run_id))   # or view.add(event) as they come
    loss_figure(view.steps, view.evals)
    epsilon_figure(view.steps, view.started.planned_epsilon, view.target_epsilon)
    grad_norm_histogram(view.latest_step, view.clip_norm)
"""

from workbench.present.compare import (
    Table,
    compare_figures,
    generations_table,
    privacy_utility_scatter,
    runs_table,
    settings_diff_table,
)
from workbench.present.diagnostics import TELEMETRY_NOTE, baseline_text, signal_to_noise
from workbench.present.figures import (
    base_layout,
    empty_figure,
    epsilon_figure,
    grad_norm_heatmap,
    grad_norm_histogram,
    loss_figure,
    noise_allocation_figure,
    plan_figure,
)
from workbench.present.panels import PANELS, STATUS_COLORS, panels
from workbench.present.progress import progress
from workbench.present.series import (
    MAX_POINTS,
    accountant_label,
    downsample,
    ema,
    fmt_duration,
    fmt_eps,
    is_approximation,
    short_module_names,
)
from workbench.present.view import RunView

__all__ = [
    "RunView",
    "Table",
    "MAX_POINTS",
    "downsample",
    "ema",
    "accountant_label",
    "is_approximation",
    "fmt_eps",
    "fmt_duration",
    "short_module_names",
    "base_layout",
    "empty_figure",
    "loss_figure",
    "epsilon_figure",
    "grad_norm_histogram",
    "grad_norm_heatmap",
    "noise_allocation_figure",
    "plan_figure",
    "compare_figures",
    "privacy_utility_scatter",
    "settings_diff_table",
    "runs_table",
    "generations_table",
    "progress",
    "PANELS",
    "TELEMETRY_NOTE",
    "baseline_text",
    "signal_to_noise",
    "STATUS_COLORS",
    "panels",
]
