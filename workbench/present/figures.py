"""Plotly figures for one run's live dashboard and for the privacy plan.

Every function is pure: events (or plain numbers) in, a ``plotly.graph_objects.Figure`` out; the
Gradio app and the Jupyter widgets show the same panels.  Traces carry numpy arrays (plotly
validates them far faster than lists) and at most ``MAX_POINTS`` points each.
"""

from __future__ import annotations

import math
import textwrap
from typing import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go

from workbench.events import GRAD_NORM_BIN_EDGES, EvalMetrics, StepMetrics
from workbench.present.diagnostics import (
    TELEMETRY_NOTE,
    fmt_ratio,
    log_bin_bounds,
    log_bin_labels,
    norm_title,
    signal_to_noise,
)
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
TELEMETRY_HEIGHT, TELEMETRY_TOP = 370, 96  # the panels of telemetry: their title has the note under it
NOISE_HEIGHT = 440


def base_layout(title: str, x_title: str, y_title: str, *, height: int = 320, **extra) -> dict:
    """A light, template-free layout (a template adds ~20 ms and ~10 kB per figure).

    ``template="none"``: without it plotly fills in its default template (6.5 kB of JSON in every
    figure, sent to the browser and copied there at every refresh); every colour and line style
    the panels use is set here or on the traces.
    """
    # ticklabeloverflow="allow": plotly's default for a linear axis ("hide past div") checks every
    # tick label against the div once per label drawn, each a forced browser layout (quadratic in
    # the labels); at every redraw of a live panel that was a fifth of the watching browser's time
    # (benchmarks/dashboard_cost.py).  The margins keep the labels inside the figure anyway.
    axis = dict(
        gridcolor="#e5e5e5", zerolinecolor="#cccccc", linecolor="#999999", showline=True, ticklabeloverflow="allow"
    )
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
        template="none",
        shapes=[],
        annotations=[],
    )
    layout.update(extra)
    return layout


def _figure(traces: list[dict], layout: dict) -> go.Figure:
    # One constructor call with plain dicts: a few ms, where add_trace / add_hline / update_*
    # each re-validate (add_hline alone costs ~15 ms), which matters at one refresh a second.
    return go.Figure({"data": traces, "layout": layout})


def _line(
    x, y, name: str, color: str, *, width: float = 2, dash: str | None = None, mode: str = "lines", **extra
) -> dict:
    """A scatter trace drawn as a line of ``color`` (``mode="lines+markers"``: with markers); ``extra`` keys on top."""
    line = dict(color=color, width=width) if dash is None else dict(color=color, dash=dash, width=width)
    return dict(type="scatter", x=x, y=y, mode=mode, name=name, line=line, **extra)


def _note(text: str, *, x: float = 0.5, y: float = 0.5, color: str = GREY, **kw) -> dict:
    return dict(text=text, x=x, y=y, xref="paper", yref="paper", showarrow=False, font=dict(color=color), **kw)


def _hline(layout: dict, y: float, text: str, color: str, *, right: bool = False) -> None:
    """A dotted horizontal line across the plot at ``y``, labelled at its left (or right) end."""
    layout["shapes"].append(
        dict(type="line", xref="paper", x0=0, x1=1, y0=y, y1=y, line=dict(color=color, dash="dot", width=2))
    )
    layout["annotations"].append(
        dict(
            text=text,
            x=1 if right else 0,
            y=y,
            xref="paper",
            yref="y",
            xanchor="right" if right else "left",
            yanchor="bottom",
            showarrow=False,
            font=dict(color=color),
        )
    )


def empty_figure(title: str, message: str, *, height: int = 320) -> go.Figure:
    """A placeholder panel that says why it is empty."""
    layout = base_layout(title, "", "", height=height, annotations=[_note(message)])
    layout["xaxis"]["visible"] = layout["yaxis"]["visible"] = False
    return _figure([], layout)


def loss_figure(steps: Sequence[StepMetrics], evals: Sequence[EvalMetrics] = (), *, title: str = "Loss") -> go.Figure:
    """Training loss per step (raw and smoothed) and validation loss at each evaluation."""
    x, y = finite([s.step for s in steps], [s.loss for s in steps])
    if len(x) == 0 and not evals:
        return empty_figure(title, "no steps yet")
    traces = []
    if len(x):
        dx, dy = downsample(x, y)
        traces.append(_line(dx, dy, "train (per step)", BLUE, width=1, opacity=0.35))
        sx, sy = downsample(x, ema(y))
        traces.append(_line(sx, sy, "train (smoothed)", BLUE, width=2.5))
    ex, ey = finite([e.step for e in evals], [e.val_loss for e in evals])
    if len(ex):
        ex, ey = downsample(ex, ey)
        traces.append(_line(ex, ey, "validation", ORANGE, mode="lines+markers", marker=dict(size=8)))
    return _figure(traces, base_layout(title, "step", "loss (per token)"))


def epsilon_figure(
    steps: Sequence[StepMetrics],
    planned: Sequence[tuple[int, float]] = (),
    target: float | None = None,
    *,
    accountant: str | None = None,
    delta: float | None = None,
) -> go.Figure:
    """Epsilon spent per step over the planned curve, with the target as a horizontal line, and, for an
    audited run, the audit's interim readings as it trains (dotted: not bounds) and its empirical lower bound at the
    final step (privacy/audit.py): it must stay below."""
    title = "Privacy spent ε"
    if accountant:
        title += f" ({accountant_label(accountant)}" + (f", δ = {delta:.0e})" if delta else ")")
    eps = [s.epsilon for s in steps]
    audited = [(s.step, s.audit_epsilon_lower_bound) for s in steps if s.audit_epsilon_lower_bound is not None]
    interim = [(s.step, s.audit_interim) for s in steps if s.audit_interim is not None]
    if eps and all(math.isinf(e) for e in eps) and not audited and not interim:
        return empty_figure(title, "non-private run (noise multiplier 0): ε = ∞")
    layout = base_layout(title, "step", "ε")
    layout["yaxis"]["rangemode"] = "tozero"
    traces = []
    if planned:
        px, py = downsample([p[0] for p in planned], [p[1] for p in planned])
        traces.append(_line(px, py, "planned", GREY, dash="dash"))
    x, y = finite([s.step for s in steps], eps)
    if len(x):
        x, y = downsample(x, y)
        traces.append(_line(x, y, "spent", GREEN, width=3))
    if interim:  # readings before the final step: not bounds (events.StepMetrics.audit_interim)
        traces.append(
            _line([a[0] for a in interim], [a[1] for a in interim], "audit: interim (not a bound)", PURPLE, dash="dot")
        )
    if audited or interim:
        if audited:
            ax, ay = [a[0] for a in audited], [a[1] for a in audited]
            traces.append(
                _line(ax, ay, "audit: empirical lower bound (final)", PURPLE, mode="markers", marker=dict(size=10))
            )
        if eps and all(math.isinf(e) for e in eps):
            layout["annotations"].append(_note("claimed ε = ∞ (non-private run)"))
    if target is not None:
        _hline(layout, target, f"target ε = {fmt_eps(target)}", RED)
    if not planned and not len(x):
        layout["annotations"].append(_note("no steps yet"))
    return _figure(traces, layout)


def _bin_labels() -> list[str]:
    edges = GRAD_NORM_BIN_EDGES
    return [f"{lo:g}–{hi:g}" if math.isfinite(hi) else f"> {lo:g}" for lo, hi in zip(edges[:-1], edges[1:])]


def _telemetry_title(title: str) -> dict:
    """The title with TELEMETRY_NOTE under it, wrapped to fit a half-width panel."""
    note = "<br>".join(textwrap.wrap(TELEMETRY_NOTE, 80))
    return dict(text=f"{title}<br><sup style='color:{GREY}'>{note}</sup>", x=0.01, xanchor="left", font=dict(size=15))


def _telemetry_layout(title: str, x_title: str, y_title: str, *, height: int = TELEMETRY_HEIGHT, **extra) -> dict:
    layout = base_layout(title, x_title, y_title, height=height, **extra)
    layout["title"] = _telemetry_title(title)
    layout["margin"] = dict(layout["margin"], t=TELEMETRY_TOP)
    return layout


def _log_ticks(low: float, high: float) -> dict:
    """Ticks of a log10 axis at the whole decades in [low, high], labelled as plain numbers (0.01, 1, 100)."""
    decades = list(range(math.ceil(low), math.floor(high) + 1))
    return dict(tickmode="array", tickvals=decades, ticktext=[fmt_ratio(10.0**k) for k in decades])


def _clip_line(layout: dict, x: float) -> None:
    layout["shapes"].append(
        dict(type="line", x0=x, x1=x, xref="x", y0=0, y1=1, yref="paper", line=dict(color=RED, width=2, dash="dash"))
    )
    layout["annotations"].append(
        dict(text="clip C", x=x, y=1, xref="x", yref="paper", xanchor="left", showarrow=False, font=dict(color=RED))
    )


def grad_norm_histogram(step: StepMetrics | None, clip_norm: float | None) -> go.Figure:
    """Per-example gradient norms at one step on a log axis in units of C (0.01 C to 100 C, with an underflow and
    an overflow bar), the clipping threshold, and the median, % clipped and largest norm in the title. Steps of runs
    stored before the log bins: the linear bins (0 to 3 C). Telemetry: the note says so."""
    title = "Per-example gradient norms"
    if step is None or not (sum(step.grad_norm_log_hist) or sum(step.grad_norm_hist)):
        return empty_figure(title, "no examples yet" if step is None else f"step {step.step}: empty batch")
    title = norm_title(
        step.step,
        median=step.grad_norm_median,
        clipped=step.clipped_fraction,
        max_norm=step.grad_norm_max,
        clip=clip_norm,
    )
    if not step.grad_norm_log_hist:
        return _linear_histogram(step, clip_norm, title)
    bounds = np.asarray(log_bin_bounds(), dtype=float)  # (bins, 2) in log10(norm / C)
    width = bounds[:, 1] - bounds[:, 0]
    unit = (
        f"norm / C, log scale   (C = {clip_norm:g};  outer bars: < 0.01 C, ≥ 100 C)" if clip_norm else "norm, log scale"
    )
    layout = _telemetry_layout(title, unit, "examples", hovermode="closest", bargap=0.05, showlegend=False)
    layout["xaxis"].update(range=[bounds[0, 0] - 0.05, bounds[-1, 1] + 0.05], **_log_ticks(bounds[0, 0], bounds[-1, 1]))
    if clip_norm:
        _clip_line(layout, 0.0)
    bars = dict(
        type="bar",
        x=bounds.mean(axis=1),
        y=np.asarray(step.grad_norm_log_hist, dtype=float),
        width=width * 0.95,
        marker=dict(color=[RED if lo >= -1e-9 else BLUE for lo in bounds[:, 0]]),
        customdata=log_bin_labels(),
        hovertemplate="%{customdata} C: %{y} examples<extra></extra>",
    )
    return _figure([bars], layout)


def _linear_histogram(step: StepMetrics, clip_norm: float | None, title: str) -> go.Figure:
    """A step stored before the log bins: its counts over GRAD_NORM_BIN_EDGES (0 to 3 C by 0.1 C, then > 3 C)."""
    edges = np.asarray(GRAD_NORM_BIN_EDGES[:-1], dtype=float)
    width = np.diff(np.append(edges, edges[-1] + 0.1))
    unit = f"norm / C   (C = {clip_norm:g};  last bar: > 3 C)" if clip_norm else "norm (units of C; last bar: > 3 C)"
    layout = _telemetry_layout(title, unit, "examples", hovermode="closest", bargap=0.05, showlegend=False)
    layout["xaxis"]["range"] = [0, 3.15]
    _clip_line(layout, 1.0)
    bars = dict(
        type="bar",
        x=edges + width / 2,
        y=np.asarray(step.grad_norm_hist, dtype=float),
        width=width * 0.95,
        marker=dict(color=[RED if lo >= 1.0 - 1e-9 else BLUE for lo in edges]),
        customdata=_bin_labels(),
        hovertemplate="%{customdata} C: %{y} examples<extra></extra>",
    )
    return _figure([bars], layout)


def grad_norm_heatmap(steps: Sequence[StepMetrics], *, max_columns: int = MAX_HEATMAP_COLUMNS) -> go.Figure:
    """How the gradient-norm distribution evolves: step × norm bin (log scale, units of C), colour = fraction of
    the batch; runs stored before the log bins on their linear bins. Telemetry: the note says so."""
    title = "Gradient-norm distribution over steps"
    log_bins = any(s.grad_norm_log_hist for s in steps)
    hists = [(s.step, s.grad_norm_log_hist if log_bins else s.grad_norm_hist) for s in steps]
    rows = [(n, h) for n, h in hists if h and sum(h)]
    if not rows:
        return empty_figure(title, "no steps yet")
    x = np.asarray([r[0] for r in rows], dtype=float)
    counts = np.asarray([r[1] for r in rows], dtype=float)  # (steps, bins)
    if len(x) > max_columns:  # sum adjacent steps into max_columns groups
        bounds = np.linspace(0, len(x), max_columns + 1).round().astype(int)
        counts = np.add.reduceat(counts, bounds[:-1], axis=0)
        x = x[bounds[1:] - 1]
    frac = counts / counts.sum(axis=1, keepdims=True)
    if log_bins:
        bins = np.asarray(log_bin_bounds(), dtype=float)
        y, labels, clip_at = bins.mean(axis=1), log_bin_labels(), 0.0
        layout = _telemetry_layout(title, "step", "norm / C (log scale)", hovermode="closest")
        layout["yaxis"].update(range=[bins[0, 0], bins[-1, 1]], **_log_ticks(bins[0, 0], bins[-1, 1]))
    else:
        edges = np.asarray(GRAD_NORM_BIN_EDGES[:-1], dtype=float)
        y, labels, clip_at = edges + np.diff(np.append(edges, edges[-1] + 0.1)) / 2, _bin_labels(), 1.0
        layout = _telemetry_layout(title, "step", "norm / C", hovermode="closest")
        layout["yaxis"]["range"] = [0, 3.1]
    _hline(layout, clip_at, "clip C", "white", right=True)
    heat = dict(
        type="heatmap",
        x=x,
        y=y,
        z=frac.T,
        customdata=np.repeat(np.asarray(labels, dtype=object)[:, None], len(x), axis=1),
        colorscale="Viridis",
        zmin=0,
        colorbar=dict(title=dict(text="fraction"), len=0.8, ticklabeloverflow="allow"),
        hovertemplate="step %{x}<br>norm %{customdata} C<br>%{z:.0%} of batch<extra></extra>",
    )
    return _figure([heat], layout)


def _or_none(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def noise_allocation_figure(step: StepMetrics | None, dims: Mapping[str, int] | None = None) -> go.Figure:
    """Per LoRA module: the signal-to-noise ratio ||S_l|| / (sqrt(d_l) sigma_l C_l) of the clipped sum against the
    expected norm of the noise added to it (top, log scale: a bar up is more signal than noise), and the noise std
    per coordinate sigma_l C_l, the noise allocation (bottom). ``dims``: d_l, RunStarted.module_dims (runs stored
    before have none: no SNR). The clean norms ||S_l|| are telemetry: the note says so."""
    title = "Signal to noise per LoRA module"
    if step is None or not (step.module_noise_std or step.module_grad_norm):
        return empty_figure(title, "no steps yet", height=NOISE_HEIGHT)
    sn = signal_to_noise(step, dims)
    names, short = sn["names"], short_module_names(sn["names"])
    snr = np.asarray([np.nan if v is None else v for v in sn["snr"]], dtype=float)
    noise = np.asarray([np.nan if v is None else v for v in sn["noise_std"]], dtype=float)
    shown = np.isfinite(snr) & (snr > 0)
    log_snr = np.where(shown, np.log10(np.where(shown, snr, 1.0)), np.nan)
    if shown.any():
        title += f", step {step.step}: median SNR {fmt_ratio(float(np.median(snr[shown])))}"
    else:
        title += f", step {step.step}"
    layout = _telemetry_layout(title, "", "SNR (log scale)", height=NOISE_HEIGHT, hovermode="closest", bargap=0.15)
    layout["yaxis"].update(domain=[0.5, 1.0])
    if shown.any():
        low, high = min(0.0, math.floor(np.nanmin(log_snr))), max(0.0, math.ceil(np.nanmax(log_snr)))
        low, high = (low, high) if high > low else (low - 1, high + 1)
        layout["yaxis"].update(range=[low - 0.05, high + 0.05], **_log_ticks(low, high))
    else:
        why = (
            "non-private run: no noise" if not np.nanmax(noise, initial=0) else "no module sizes (a run stored before)"
        )
        layout["annotations"].append(_note(f"SNR: {why}", y=0.75))
    layout["yaxis2"] = dict(
        layout["yaxis"], domain=[0.0, 0.4], title=dict(text="noise std per coordinate σ_l C_l"), anchor="x2"
    )
    for key in ("range", "tickmode", "tickvals", "ticktext"):
        layout["yaxis2"].pop(key, None)
    layout["xaxis"].update(anchor="y", showticklabels=False, matches="x2")
    layout["xaxis2"] = dict(layout["xaxis"], anchor="y2", showticklabels=True, tickangle=-45 if len(names) > 6 else 0)
    layout["xaxis2"].pop("matches")
    layout["margin"] = dict(layout["margin"], b=90)
    signal = [np.nan if v is None else v for v in sn["signal"]]
    expected = [np.nan if v is None else v for v in sn["noise_norm"]]
    traces = [
        dict(
            type="bar",
            x=short,
            y=log_snr,
            name="SNR = ‖S_l‖ / (√d_l σ_l C_l)",
            marker=dict(color=[GREEN if v >= 0 else ORANGE for v in np.nan_to_num(log_snr)]),
            customdata=[[n, *(_or_none(v) for v in values)] for n, *values in zip(names, signal, expected, snr)],
            hovertemplate="%{customdata[0]}<br>‖S_l‖ (clipped sum, before noise) %{customdata[1]:.3g}<br>"
            "expected noise norm √d_l σ_l C_l %{customdata[2]:.3g}<br>SNR %{customdata[3]:.3g}<extra></extra>",
        ),
        dict(
            type="bar",
            x=short,
            y=noise,
            name="noise std per coordinate σ_l C_l",
            marker=dict(color=PURPLE),
            customdata=names,
            hovertemplate="%{customdata}<br>noise std per coordinate %{y:.3g}<extra></extra>",
            xaxis="x2",
            yaxis="y2",
        ),
    ]
    if shown.any():
        layout["shapes"].append(
            dict(type="line", xref="x domain", x0=0, x1=1, yref="y", y0=0, y1=0, line=dict(color=GREY, dash="dot"))
        )
    return _figure(traces, layout)


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
    layout = base_layout(title, "step", "ε", height=380)
    layout["yaxis"]["rangemode"] = "tozero"
    order = {name: i for i, name in enumerate(ACCOUNTANT_COLORS)}
    # the selected accountant first (underneath, thick), so curves that coincide stay visible
    ranked = sorted(curves.items(), key=lambda kv: (kv[0] != selected, order.get(kv[0], len(order))))
    traces = []
    for name, points in ranked:
        if not points:
            continue
        x, y = finite([p[0] for p in points], [p[1] for p in points])
        x, y = downsample(x, y, MAX_POINTS)
        chosen = name == selected
        traces.append(
            _line(
                x,
                y,
                accountant_label(name) + ("  ← selected" if chosen else ""),
                ACCOUNTANT_COLORS.get(name, GREY),
                width=5 if chosen else 2,
                dash=ACCOUNTANT_DASH.get(name, "solid"),
                mode="lines+markers" if len(x) <= 30 else "lines",
                marker=dict(size=4 if chosen else 6),
                opacity=0.6 if chosen else 1.0,
                legendrank=order.get(name, len(order)),
            )
        )
    if target is not None:
        _hline(layout, target, f"target ε = {fmt_eps(target)}", RED)
    return _figure(traces, layout)
