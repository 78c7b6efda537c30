"""Plotly figures for one run's live dashboard and for the privacy plan.

Every function is pure: events (or plain numbers) in, a ``plotly.graph_objects.Figure`` out; the
Gradio app and the Jupyter widgets show the same panels.  Traces carry numpy arrays (plotly
validates them far faster than lists) and at most ``MAX_POINTS`` points each.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go

from workbench.events import GRAD_NORM_BIN_EDGES, EvalMetrics, StepMetrics
from workbench.present.series import (
    MAX_POINTS,
    accountant_label,
    downsample,
    ema,
    finite,
    fmt_eps,
    short_module_names,
)

BLUE, ORANGE, GREEN, RED, GREY, PURPLE = "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#7f7f7f", "#9467bd"
ACCOUNTANT_COLORS = {"rdp": ORANGE, "prv": GREEN, "pld": BLUE, "edgeworth": PURPLE}  # also the legend order
ACCOUNTANT_DASH = {"rdp": "solid", "prv": "dash", "pld": "solid", "edgeworth": "dot"}
MAX_HEATMAP_COLUMNS = 400


def base_layout(title: str, x_title: str, y_title: str, *, height: int = 320, **extra) -> dict:
    """A light, template-free layout (a template adds ~20 ms and ~10 kB per figure)."""
    axis = dict(gridcolor="#e5e5e5", zerolinecolor="#cccccc", linecolor="#999999", showline=True)
    layout = dict(
        title=dict(text=title, x=0.01, xanchor="left", font=dict(size=15)),
        xaxis=dict(title=dict(text=x_title), **axis),
        yaxis=dict(title=dict(text=y_title), **axis),
        height=height,
        margin=dict(l=60, r=20, t=48, b=48),
        paper_bgcolor="white",
        plot_bgcolor="white",
        font=dict(size=12),
        legend=dict(orientation="h", x=1, xanchor="right", y=1.02, yanchor="bottom", bgcolor="rgba(0,0,0,0)"),
        hovermode="x unified",
    )
    layout.update(extra)
    return layout


def empty_figure(title: str, message: str, *, height: int = 320) -> go.Figure:
    """A placeholder panel that says why it is empty."""
    fig = go.Figure(layout=base_layout(title, "", "", height=height))
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    fig.add_annotation(text=message, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper", font=dict(color=GREY))
    return fig


def _hline(fig: go.Figure, y: float, text: str, color: str, *, position: str = "top left") -> None:
    fig.add_hline(y=y, line=dict(color=color, dash="dot", width=2), annotation_text=text,
                  annotation_position=position, annotation_font_color=color)


def loss_figure(steps: Sequence[StepMetrics], evals: Sequence[EvalMetrics] = (), *, title: str = "Loss") -> go.Figure:
    """Training loss per step (raw and smoothed) and validation loss at each evaluation."""
    x, y = finite([s.step for s in steps], [s.loss for s in steps])
    if len(x) == 0 and not evals:
        return empty_figure(title, "no steps yet")
    fig = go.Figure(layout=base_layout(title, "step", "loss (per token)"))
    if len(x):
        dx, dy = downsample(x, y)
        fig.add_scatter(x=dx, y=dy, mode="lines", name="train (per step)", line=dict(color=BLUE, width=1), opacity=0.35)
        sx, sy = downsample(x, ema(y))
        fig.add_scatter(x=sx, y=sy, mode="lines", name="train (smoothed)", line=dict(color=BLUE, width=2.5))
    ex, ey = finite([e.step for e in evals], [e.val_loss for e in evals])
    if len(ex):
        ex, ey = downsample(ex, ey)
        fig.add_scatter(x=ex, y=ey, mode="lines+markers", name="validation", line=dict(color=ORANGE, width=2),
                        marker=dict(size=8))
    return fig


def epsilon_figure(
    steps: Sequence[StepMetrics],
    planned: Sequence[tuple[int, float]] = (),
    target: float | None = None,
    *,
    accountant: str | None = None,
    delta: float | None = None,
) -> go.Figure:
    """Epsilon spent per step over the planned curve, with the target as a horizontal line."""
    title = "Privacy spent ε"
    if accountant:
        title += f" ({accountant_label(accountant)}" + (f", δ = {delta:.0e})" if delta else ")")
    eps = [s.epsilon for s in steps]
    if eps and all(math.isinf(e) for e in eps):
        return empty_figure(title, "non-private run (noise multiplier 0): ε = ∞")
    fig = go.Figure(layout=base_layout(title, "step", "ε"))
    if planned:
        px, py = downsample([p[0] for p in planned], [p[1] for p in planned])
        fig.add_scatter(x=px, y=py, mode="lines", name="planned", line=dict(color=GREY, dash="dash", width=2))
    x, y = finite([s.step for s in steps], eps)
    if len(x):
        x, y = downsample(x, y)
        fig.add_scatter(x=x, y=y, mode="lines", name="spent", line=dict(color=GREEN, width=3))
    if target is not None:
        _hline(fig, target, f"target ε = {fmt_eps(target)}", RED)
    if not planned and not len(x):
        fig.add_annotation(text="no steps yet", showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper")
    fig.update_yaxes(rangemode="tozero")
    return fig


def _bin_labels() -> list[str]:
    edges = GRAD_NORM_BIN_EDGES
    return [f"{lo:g}–{hi:g}" if math.isfinite(hi) else f"> {lo:g}" for lo, hi in zip(edges[:-1], edges[1:])]


def grad_norm_histogram(step: StepMetrics | None, clip_norm: float | None) -> go.Figure:
    """Per-example gradient norms at one step (units of C) with the clipping threshold and % clipped."""
    title = "Per-example gradient norms"
    if step is None or not sum(step.grad_norm_hist):
        return empty_figure(title, "no examples yet" if step is None else f"step {step.step}: empty batch")
    edges = np.asarray(GRAD_NORM_BIN_EDGES[:-1], dtype=float)
    width = np.diff(np.append(edges, edges[-1] + 0.1))
    centers = edges + width / 2
    counts = np.asarray(step.grad_norm_hist, dtype=float)
    colors = [RED if lo >= 1.0 - 1e-9 else BLUE for lo in edges]
    title = f"{title}, step {step.step}: {step.clipped_fraction:.0%} clipped"
    unit = f"norm / C   (C = {clip_norm:g};  last bar: > 3 C)" if clip_norm else "norm (units of C; last bar: > 3 C)"
    fig = go.Figure(layout=base_layout(title, unit, "examples", hovermode="closest", bargap=0.05, showlegend=False))
    fig.add_bar(x=centers, y=counts, width=width * 0.95, marker_color=colors, customdata=_bin_labels(),
                hovertemplate="%{customdata} C: %{y} examples<extra></extra>")
    fig.add_vline(x=1.0, line=dict(color=RED, width=2, dash="dash"), annotation_text="clip C",
                  annotation_position="top right", annotation_font_color=RED)
    if math.isfinite(step.grad_norm_max) and clip_norm:
        fig.add_annotation(text=f"max norm {step.grad_norm_max / clip_norm:.2g} C", x=1, y=1, xref="paper",
                           yref="paper", xanchor="right", showarrow=False, font=dict(color=GREY))
    fig.update_xaxes(range=[0, 3.15])
    return fig


def grad_norm_heatmap(steps: Sequence[StepMetrics], *, max_columns: int = MAX_HEATMAP_COLUMNS) -> go.Figure:
    """How the gradient-norm distribution evolves: step × norm bin, colour = fraction of the batch."""
    title = "Gradient-norm distribution over steps"
    rows = [(s.step, s.grad_norm_hist) for s in steps if sum(s.grad_norm_hist)]
    if not rows:
        return empty_figure(title, "no steps yet")
    x = np.asarray([r[0] for r in rows], dtype=float)
    counts = np.asarray([r[1] for r in rows], dtype=float)  # (steps, bins)
    if len(x) > max_columns:  # sum adjacent steps into max_columns groups
        groups = np.array_split(np.arange(len(x)), max_columns)
        x = np.asarray([x[g[-1]] for g in groups])
        counts = np.stack([counts[g].sum(axis=0) for g in groups])
    frac = counts / counts.sum(axis=1, keepdims=True)
    edges = np.asarray(GRAD_NORM_BIN_EDGES[:-1], dtype=float)
    y = edges + np.diff(np.append(edges, edges[-1] + 0.1)) / 2
    fig = go.Figure(layout=base_layout(title, "step", "norm / C", hovermode="closest"))
    fig.add_heatmap(x=x, y=y, z=frac.T, colorscale="Viridis", zmin=0, colorbar=dict(title=dict(text="fraction"), len=0.8),
                    hovertemplate="step %{x}<br>norm %{y:.2f} C<br>%{z:.0%} of batch<extra></extra>")
    _hline(fig, 1.0, "clip C", "white", position="top right")
    fig.update_yaxes(range=[0, 3.1])
    return fig


def noise_allocation_figure(step: StepMetrics | None) -> go.Figure:
    """Per LoRA module: the noise std added (top) and the clipped, summed gradient norm (bottom)."""
    title = "Noise allocation per LoRA module"
    if step is None or not (step.module_noise_std or step.module_grad_norm):
        return empty_figure(title, "no steps yet", height=380)
    names = list(step.module_noise_std or step.module_grad_norm)
    short = short_module_names(names)
    noise = np.asarray([step.module_noise_std.get(n, np.nan) for n in names], dtype=float)
    grad = np.asarray([step.module_grad_norm.get(n, np.nan) for n in names], dtype=float)
    layout = base_layout(f"{title}, step {step.step}", "", "noise std", height=380, hovermode="closest", bargap=0.15)
    layout["yaxis"].update(domain=[0.55, 1.0])
    layout["yaxis2"] = dict(layout["yaxis"], domain=[0.0, 0.45], title=dict(text="gradient norm"), anchor="x2")
    layout["xaxis"].update(anchor="y", showticklabels=False, matches="x2")
    layout["xaxis2"] = dict(layout["xaxis"], anchor="y2", showticklabels=True, tickangle=-45 if len(names) > 6 else 0)
    layout["xaxis2"].pop("matches")
    layout["margin"] = dict(l=60, r=20, t=48, b=90)
    fig = go.Figure(layout=layout)
    fig.add_bar(x=short, y=noise, name="noise std", marker_color=PURPLE, customdata=names,
                hovertemplate="%{customdata}<br>noise std %{y:.3g}<extra></extra>")
    fig.add_bar(x=short, y=grad, name="gradient norm (clipped, summed)", marker_color=BLUE, xaxis="x2", yaxis="y2",
                customdata=names, hovertemplate="%{customdata}<br>grad norm %{y:.3g}<extra></extra>")
    return fig


def plan_figure(
    curves: Mapping[str, Sequence[tuple[int, float]]],
    target: float | None = None,
    *,
    noise_multiplier: float | None = None,
    selected: str | None = None,
) -> go.Figure:
    """Epsilon against steps for each accountant (same noise), the target as a line."""
    title = "ε against steps" + (f" at noise multiplier σ = {noise_multiplier:.3g}" if noise_multiplier else "")
    if not curves:
        return empty_figure(title, "no curve: fix the settings on the left")
    fig = go.Figure(layout=base_layout(title, "step", "ε", height=380))
    order = {name: i for i, name in enumerate(ACCOUNTANT_COLORS)}
    # the selected accountant first (underneath, thick), so curves that coincide stay visible
    ranked = sorted(curves.items(), key=lambda kv: (kv[0] != selected, order.get(kv[0], len(order))))
    for name, points in ranked:
        if not points:
            continue
        x, y = finite([p[0] for p in points], [p[1] for p in points])
        x, y = downsample(x, y, MAX_POINTS)
        chosen = name == selected
        label = accountant_label(name) + ("  ← selected" if chosen else "")
        fig.add_scatter(x=x, y=y, mode="lines+markers" if len(x) <= 30 else "lines", name=label,
                        line=dict(color=ACCOUNTANT_COLORS.get(name, GREY), width=5 if chosen else 2,
                                  dash=ACCOUNTANT_DASH.get(name, "solid")),
                        marker=dict(size=4 if chosen else 6), opacity=0.6 if chosen else 1.0,
                        legendrank=order.get(name, len(order)))
    if target is not None:
        _hline(fig, target, f"target ε = {fmt_eps(target)}", RED)
    fig.update_yaxes(rangemode="tozero")
    return fig
