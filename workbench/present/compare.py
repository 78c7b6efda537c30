"""Several runs side by side: overlaid curves, the privacy-utility trade-off, differing settings."""

from __future__ import annotations

import json
import math
from typing import Any, Mapping, NamedTuple, Sequence

import plotly.graph_objects as go

from workbench.present.figures import base_layout, empty_figure
from workbench.present.series import downsample, ema, finite, fmt_eps
from workbench.present.view import RunView

PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")
# Keys that differ between any two runs and say nothing about the method.
IGNORED_KEYS = frozenset({"name", "output_dir"})


class Table(NamedTuple):
    """Column headers and rows of plain values (str / float / int / None)."""

    headers: list[str]
    rows: list[list[Any]]


def compare_figures(runs: Sequence[RunView]) -> tuple[go.Figure, go.Figure]:
    """(loss, epsilon): each run's smoothed training loss and validation loss, and its epsilon spent."""
    if not runs:
        return empty_figure("Loss", "choose runs to compare"), empty_figure("Privacy spent ε", "choose runs to compare")
    loss = go.Figure(layout=base_layout("Loss (smoothed train: solid, validation: dashed)", "step", "loss (per token)"))
    eps = go.Figure(layout=base_layout("Privacy spent ε", "step", "ε"))
    for i, run in enumerate(runs):
        color = PALETTE[i % len(PALETTE)]
        x, y = finite([s.step for s in run.steps], [s.loss for s in run.steps])
        if len(x):
            x, y = downsample(x, ema(y))
            loss.add_scatter(
                x=x, y=y, mode="lines", name=run.label, legendgroup=run.run_id, line=dict(color=color, width=2)
            )
        ex, ey = finite([e.step for e in run.evals], [e.val_loss for e in run.evals])
        if len(ex):
            ex, ey = downsample(ex, ey)
            loss.add_scatter(
                x=ex,
                y=ey,
                mode="lines+markers",
                name=f"{run.label} (val)",
                legendgroup=run.run_id,
                line=dict(color=color, dash="dash"),
                showlegend=False,
            )
        x, y = finite([s.step for s in run.steps], [s.epsilon for s in run.steps])
        if len(x):
            x, y = downsample(x, y)
            eps.add_scatter(x=x, y=y, mode="lines", name=run.label, line=dict(color=color, width=2))
        elif run.steps:
            eps.add_scatter(x=[], y=[], mode="lines", name=f"{run.label} (non-private, ε = ∞)", line=dict(color=color))
    eps.update_yaxes(rangemode="tozero")
    return loss, eps


def privacy_utility_scatter(runs: Sequence[RunView]) -> go.Figure:
    """Final epsilon against the validation metric: accuracy when every run has it, else val loss.

    Non-private runs (ε = ∞) sit at the right edge, marked '∞'.
    """
    title = "Privacy–utility trade-off"
    rated = [(r, r.final_epsilon, r.last_eval) for r in runs if r.last_eval is not None and r.final_epsilon is not None]
    if not rated:
        return empty_figure(title, "no evaluated runs among those chosen")
    use_acc = all(ev.accuracy is not None and not math.isnan(ev.accuracy) for _, _, ev in rated)
    metric = "accuracy" if use_acc else "validation loss"
    finite_eps = [e for _, e, _ in rated if math.isfinite(e)]
    inf_x = (max(finite_eps) * 1.25 if finite_eps else 1.0) or 1.0
    fig = go.Figure(
        layout=base_layout(
            f"{title}: final ε vs {metric}",
            "final ε (right edge: non-private ∞)",
            metric,
            hovermode="closest",
            showlegend=False,
        )
    )
    for i, (run, e, ev) in enumerate(rated):
        y = ev.accuracy if use_acc else ev.val_loss
        x = e if math.isfinite(e) else inf_x
        fig.add_scatter(
            x=[x],
            y=[y],
            mode="markers+text",
            text=[run.label + ("" if math.isfinite(e) else " (ε=∞)")],
            cliponaxis=False,
            textposition="top center",
            marker=dict(size=14, color=PALETTE[i % len(PALETTE)], symbol="circle" if math.isfinite(e) else "diamond"),
            hovertemplate=f"{run.label}<br>ε = {fmt_eps(e)}<br>{metric} = %{{y:.4g}}<extra></extra>",
        )
    fig.update_xaxes(rangemode="tozero")
    return fig


def _cell(value: Any) -> Any:
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True)
    return value


def settings_diff_table(configs: Mapping[str, Mapping[str, Any]], *, ignore: frozenset[str] = IGNORED_KEYS) -> Table:
    """The settings that differ between runs: one row per key, one column per run label.

    >>> settings_diff_table({"a": {"lr": 1, "r": 8}, "b": {"lr": 2, "r": 8}})
    Table(headers=['setting', 'a', 'b'], rows=[['lr', 1, 2]])
    """
    labels = list(configs)
    keys: list[str] = []
    for cfg in configs.values():
        keys += [k for k in cfg if k not in keys and k not in ignore]
    rows = []
    for key in keys:
        values = [_cell(configs[label].get(key)) for label in labels]
        if any(v != values[0] for v in values[1:]):
            rows.append([key, *values])
    return Table(["setting", *labels], rows)


def runs_table(records: Sequence[Any], *, views: Mapping[str, RunView] | None = None) -> Table:
    """Every stored run: id, name, status, model, epsilon, metric, steps, created.

    ``records`` are ``RunRecord``s (or anything with id, name, status, config, summary, created);
    epsilon and metric come from the run's summary, or from its live ``views`` entry while running.
    """
    import time

    rows = []
    for rec in records:
        summary = rec.summary or {}
        view = (views or {}).get(rec.id)
        eps = summary.get("epsilon")
        if view is not None and view.final_epsilon is not None:
            eps = view.final_epsilon
        metric = ""
        if summary.get("accuracy") is not None:
            metric = f"accuracy {summary['accuracy']:.3f}"
        elif summary.get("val_loss") is not None:
            metric = f"val_loss {summary['val_loss']:.3f}"
        elif view is not None and view.metric() is not None:
            name, value = view.metric()
            metric = f"{name} {value:.3f}"
        eps_text = fmt_eps(_as_float(eps)) if eps is not None else "–"
        steps = summary.get("steps", len(view.steps) if view is not None else None)
        created = time.strftime("%Y-%m-%d %H:%M", time.localtime(rec.created))
        rows.append(
            [
                rec.id,
                rec.name or "",
                rec.status,
                rec.config.get("model", ""),
                eps_text,
                metric,
                steps if steps is not None else "",
                created,
            ]
        )
    return Table(["run", "name", "status", "model", "ε", "metric", "steps", "created"], rows)


def _as_float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def generations_table(evals: Sequence[Any], *, limit: int = 20) -> Table:
    """Sample generations at each evaluation, newest first: step, prompt, output."""
    rows = []
    for ev in reversed(evals):
        for g in ev.generations:
            rows.append([ev.step, g.get("prompt", ""), g.get("output", "")])
            if len(rows) >= limit:
                return Table(["step", "prompt", "output"], rows)
    return Table(["step", "prompt", "output"], rows)


__all__ = [
    "Table",
    "compare_figures",
    "privacy_utility_scatter",
    "settings_diff_table",
    "runs_table",
    "generations_table",
]
