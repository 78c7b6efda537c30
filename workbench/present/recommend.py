"""The batch-size recommendation drawn: the noise-batch ratio sigma / B against the expected batch size.

Pure presentation of ``planning.recommend.Recommendation`` (no gradio, no accounting): a plotly figure with
the recommended point marked, and the same reading as markdown (app) or HTML (widget).
"""

from __future__ import annotations

import html
import math

import plotly.graph_objects as go

from workbench.planning.recommend import Candidate, Recommendation
from workbench.present.figures import BLUE, GREY, ORANGE, RED, _figure, base_layout, empty_figure

RECOMMEND_TITLE = "Noise-batch ratio σ/B against batch size"


def _hover(c: Candidate) -> str:
    return f"B = {c.batch_size:,}, T = {c.steps:,}<br>σ = {c.noise_multiplier:.4g}, σ/B = {c.noise_batch_ratio:.3g}"


def _series(points: tuple[Candidate, ...], name: str, color: str, dash: str, min_steps: int) -> list[dict]:
    if not points:
        return []
    enough = [c for c in points if c.steps >= min_steps]
    few = [c for c in points if c.steps < min_steps]
    traces = []
    for part, label, col in ((enough, name, color), (few, f"{name}: fewer than {min_steps:,} steps", GREY)):
        if not part:
            continue
        traces.append(
            dict(
                type="scatter",
                x=[c.batch_size for c in part],
                y=[c.noise_batch_ratio for c in part],
                mode="lines+markers",
                name=label,
                line=dict(color=col, dash=dash, width=2),
                marker=dict(size=7),
                text=[_hover(c) for c in part],
                hovertemplate="%{text}<extra></extra>",
            )
        )
    return traces


def recommend_figure(rec: Recommendation | None, *, message: str = "press Recommend") -> go.Figure:
    """sigma / B for each candidate batch (log-log), at the fewest steps and with the whole budget, the
    recommended setting marked; an empty panel saying ``message`` when there is none."""
    if rec is None:
        return empty_figure(RECOMMEND_TITLE, message)
    layout = base_layout(RECOMMEND_TITLE, "expected batch size B", "σ / B (lower is better)", height=360)
    layout["xaxis"].update(type="log", tickvals=[c.batch_size for c in rec.candidates] or None)
    layout["yaxis"].update(type="log", dtick="D2")  # labels at 1, 2, 5 x 10^k only
    layout["hovermode"] = "closest"
    traces = _series(rec.at_min_steps, f"T = {rec.min_steps:,} steps (fewest)", BLUE, "solid", rec.min_steps)
    traces += _series(
        rec.whole_budget, f"T = budget / B ({rec.budget_examples:,} examples)", ORANGE, "dash", rec.min_steps
    )
    best = rec.best
    traces.append(
        dict(
            type="scatter",
            x=[best.batch_size],
            y=[best.noise_batch_ratio],
            mode="markers",
            name="recommended" if rec.complete else "best so far",
            marker=dict(symbol="star", size=16, color=RED, line=dict(color="white", width=1)),
            text=[_hover(best)],
            hovertemplate=("recommended" if rec.complete else "best so far") + "<br>%{text}<extra></extra>",
        )
    )
    layout["annotations"].append(
        dict(
            text=f"B = {best.batch_size:,}, T = {best.steps:,}",
            x=math.log10(best.batch_size),  # annotations on log axes take log10 of the value
            y=math.log10(best.noise_batch_ratio),
            xref="x",
            yref="y",
            xanchor="left",
            yanchor="bottom",
            showarrow=False,
            font=dict(color=RED),
        )
    )
    if not rec.complete:
        layout["annotations"].append(
            dict(
                text="computing… (not the recommendation yet)",
                x=1,
                y=1,
                xref="paper",
                yref="paper",
                showarrow=False,
                font=dict(color=GREY),
            )
        )
    return _figure(traces, layout)


def progress_line(rec: Recommendation) -> str:
    """What an intermediate result may say: that it is one, and the best setting among those calibrated so far
    (its reasons, e.g. "the budget is the limit", hold only once every candidate is calibrated)."""
    b = rec.best
    return (
        f"computing… {len(rec.candidates)} settings calibrated so far; the best of them: B = {b.batch_size:,}, "
        f"T = {b.steps:,} (σ/B = {b.noise_batch_ratio:.3g}). Not the recommendation yet."
    )


def recommend_markdown(rec: Recommendation) -> str:
    """The recommendation as markdown: the setting in bold, then the reasons, the learning rate, the caveat; while
    candidates are still being calibrated, only a marked progress line."""
    if not rec.complete:
        return f"⏳ _{progress_line(rec)}_"
    head, *rest = rec.sentences()
    return f"**{head}**" + "".join(f"  \n{line}" for line in rest if line)


def recommend_html(rec: Recommendation) -> str:
    """The same reading as HTML (the notebook widget)."""
    if not rec.complete:
        return f"<div style='font-size:12px;color:#666'>⏳ {html.escape(progress_line(rec))}</div>"
    head, *rest = rec.sentences()
    body = "".join(f"<div>{html.escape(line)}</div>" for line in rest)
    return f"<div style='font-size:12px'><b>{html.escape(head)}</b>{body}</div>"
