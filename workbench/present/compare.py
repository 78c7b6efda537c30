"""Several runs side by side: overlaid curves, the privacy-utility trade-off, differing settings.

DP-aware comparison (sweeps): runs grouped by settings with their seeds aggregated (mean and a band: sd
or min-max), curves against step, epsilon spent, tokens seen or wall time (each run interpolated onto
one common grid over the range all runs of the group reach, so runs with different sigma and q
compare at equal privacy spent), the privacy-utility frontier with error bars and its Pareto front,
a parallel-coordinates view over the swept settings, and a table of each group's settings, resolved
privacy values (sigma, q, delta, relation), statuses and final numbers.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Mapping, NamedTuple, Sequence

import numpy as np
import plotly.graph_objects as go

from workbench.errors import UserError
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

    ``records`` are ``RunRecord``s (or anything with id, name, status, config, summary, created, final_epsilon);
    an ended run's epsilon is the one its summary stores (``RunRecord.final_epsilon``), never a view's, which may
    have been read mid-run; a run without one (running, or killed) shows its last step's, marked "so far".
    The metric comes from the run's summary, or from its live ``views`` entry while running.
    """
    import time

    rows = []
    for rec in records:
        summary = rec.summary or {}
        view = (views or {}).get(rec.id)
        eps, so_far = rec.final_epsilon, False
        if eps is None and view is not None and view.latest_step is not None:
            eps, so_far = view.latest_step.epsilon, True
        metric = ""
        if summary.get("accuracy") is not None:
            metric = f"accuracy {summary['accuracy']:.3f}"
        elif summary.get("val_loss") is not None:
            metric = f"val_loss {summary['val_loss']:.3f}"
        elif view is not None and view.metric() is not None:
            name, value = view.metric()
            metric = f"{name} {value:.3f}"
        eps_text = (fmt_eps(_as_float(eps)) + (" so far" if so_far else "")) if eps is not None else "–"
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


# -- DP-aware comparison: groups of seeds, aligned curves, frontier, parallel coordinates -------------

SEED_KEYS = frozenset({"seed"})
X_AXES = {"step": "step", "epsilon": "ε spent", "tokens": "tokens seen", "time": "wall time (s)"}
METRICS = {
    "loss": "train loss (per token)",
    "val_loss": "validation loss",
    "accuracy": "accuracy",
    "perplexity": "perplexity",
    "epsilon": "ε spent",
}
BANDS = ("sd", "minmax", "none")


class CompareError(UserError, ValueError):
    """A comparison that cannot be made as asked (an unknown run or sweep, an unknown axis); one message."""


def resolve_runs(store, items: Sequence[str]) -> list[str]:
    """Run ids for ``items``: each a sweep name (its runs, in order) or a run id (or unique prefix)."""
    from workbench.store.runs import RunNotFound
    from workbench.store.sweeps import SweepStore

    sweeps = SweepStore(store)
    out: list[str] = []
    for item in items:
        if sweeps.exists(item):
            ids = [rid for rid in sweeps.get(item).run_ids if _exists(store, rid)]
            if not ids:
                raise CompareError(f"sweep {item} has no stored runs yet: `workbench sweep resume {item}` trains them.")
            out += ids
            continue
        try:
            out.append(store.get(item).id)
        except RunNotFound:
            raise CompareError(
                f"{item!r} is neither a stored run nor a sweep. `workbench runs list` and `workbench sweep list` "
                "show them."
            ) from None
    if not out:
        raise CompareError("name at least one run or sweep to compare.")
    return list(dict.fromkeys(out))


def _exists(store, run_id: str) -> bool:
    from workbench.store.runs import RunNotFound

    try:
        store.get(run_id)
        return True
    except RunNotFound:
        return False


def load_views(store, run_ids: Sequence[str]) -> list[RunView]:
    """Each run's view read from ``store``, named by its record and with its stored config when it never started."""
    views = []
    for rid in run_ids:
        rec = store.get(rid)
        view = RunView.from_events(rec.id, store.events(rec.id), name=rec.name)
        view.config = view.config or dict(rec.config)
        views.append(view)
    return views


def differing_keys(views: Sequence[RunView], *, ignore: frozenset[str] = IGNORED_KEYS) -> list[str]:
    """The config keys whose values differ between ``views``, in config order."""
    keys: list[str] = []
    for v in views:
        keys += [k for k in v.config if k not in keys and k not in ignore]
    return [k for k in keys if len({json.dumps(v.config.get(k), sort_keys=True) for v in views}) > 1]


@dataclass
class Group:
    """Runs with the same settings (``by`` keys), their seeds aggregated; runs that did not finish (stopped,
    failed, still running) form a group of their own, ``ended`` naming their status: a run cut short is not
    another seed of a finished one."""

    label: str
    settings: dict[str, Any]
    runs: list[RunView] = field(default_factory=list)
    ended: str | None = None  # None: finished runs; else the status its runs share


def unfinished_note(groups: Sequence[Group]) -> str:
    """A sentence when some groups hold runs that did not finish, '' otherwise."""
    apart = [g.label for g in groups if g.ended]
    if not apart:
        return ""
    return (
        f"ℹ Runs that did not finish are grouped apart ({', '.join(apart)}), never averaged with finished runs "
        "of the same settings as if they were seeds."
    )


def group_runs(views: Sequence[RunView], by: Sequence[str] | None = None) -> list[Group]:
    """Group ``views`` by the values of ``by`` (default: every differing setting but the seed), first-seen order.

    Unknown keys raise CompareError; a group is labelled by its settings (``eps4-C0.1``)."""
    from workbench.store.names import run_label

    keys = list(by) if by is not None else [k for k in differing_keys(views) if k not in SEED_KEYS]
    known = {k for v in views for k in v.config}
    unknown = [k for k in keys if k not in known]
    if unknown and views:
        raise CompareError(f"cannot group by {', '.join(map(repr, unknown))}: not a setting of these runs.")
    groups: dict[str, Group] = {}
    for v in views:
        settings = {k: v.config.get(k) for k in keys}
        ended = None if v.status == "finished" else v.status
        ident = json.dumps([settings, ended], sort_keys=True, default=str)
        if ident not in groups:
            label = run_label(settings, keys) if keys else "all runs"
            groups[ident] = Group(label + (f" ({ended})" if ended else ""), settings, ended=ended)
        groups[ident].runs.append(v)
    out = list(groups.values())
    labels = [g.label for g in out]
    for i, g in enumerate(out):  # two settings that print alike (rare): keep labels unique
        if labels.count(g.label) > 1:
            g.label = f"{g.label} ({i + 1})"
    return out


def _x_values(view: RunView, x: str) -> dict[int, float]:
    """step -> x value for every step of ``view`` (and step 0 -> 0)."""
    if x not in X_AXES:
        raise CompareError(f"the x axis must be one of {', '.join(X_AXES)}. Found {x!r}.")
    out: dict[int, float] = {0: 0.0}
    seen = 0
    t0 = view.started.time if view.started is not None else (view.steps[0].time if view.steps else 0.0)
    for s in view.steps:
        seen += s.tokens
        out[s.step] = {"step": float(s.step), "epsilon": s.epsilon, "tokens": float(seen), "time": s.time - t0}[x]
    return out


def run_curve(
    view: RunView, metric: str = "loss", x: str = "step", *, smooth: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """(xs, ys) of one run: ``metric`` (loss, epsilon from the steps; val_loss, accuracy, perplexity from the
    evaluations) against ``x``; non-finite points (an empty batch's loss, a non-private run's ε) dropped."""
    if metric not in METRICS:
        raise CompareError(f"the metric must be one of {', '.join(METRICS)}. Found {metric!r}.")
    xmap = _x_values(view, x)
    if metric in ("loss", "epsilon"):
        pairs = [(xmap.get(s.step, math.nan), getattr(s, metric)) for s in view.steps]
    else:
        pairs = [(xmap.get(e.step, math.nan), getattr(e, metric)) for e in view.evals]
    pairs = [(a, math.nan if b is None else float(b)) for a, b in pairs]
    xs = np.array([a for a, _ in pairs], dtype=float)
    ys = np.array([b for _, b in pairs], dtype=float)
    keep = np.isfinite(xs) & np.isfinite(ys)
    xs, ys = xs[keep], ys[keep]
    if smooth and len(ys) > 2:
        ys = ema(ys)
    return xs, ys


def _collapse(xs: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted by x, equal xs merged to their mean y (np.interp needs increasing xs)."""
    order = np.argsort(xs, kind="stable")
    xs, ys = xs[order], ys[order]
    ux, inverse = np.unique(xs, return_inverse=True)
    if len(ux) == len(xs):
        return xs, ys
    sums = np.bincount(inverse, weights=ys)
    return ux, sums / np.bincount(inverse)


def align_curves(
    curves: Sequence[tuple[np.ndarray, np.ndarray]], *, points: int = 100
) -> tuple[np.ndarray, np.ndarray]:
    """(grid, values): every curve linearly interpolated onto one grid over the x range all of them reach
    (from the largest first x to the smallest last x); one row per curve. Empty curves are skipped; curves
    with no common range give an empty grid.

    >>> g, v = align_curves([(np.array([0., 2.]), np.array([0., 2.])), (np.array([1., 3.]), np.array([10., 30.]))],
    ...                     points=3)
    >>> g.tolist(), v.tolist()
    ([1.0, 1.5, 2.0], [[1.0, 1.5, 2.0], [10.0, 15.0, 20.0]])
    """
    usable = [_collapse(np.asarray(x, float), np.asarray(y, float)) for x, y in curves if len(x)]
    if not usable:
        return np.array([]), np.zeros((0, 0))
    lo = max(x[0] for x, _ in usable)
    hi = min(x[-1] for x, _ in usable)
    if hi < lo:
        return np.array([]), np.zeros((len(usable), 0))
    if hi == lo:
        grid = np.array([lo])
    elif len(usable) == 1:
        grid = usable[0][0]
    else:
        n = min(points, max(len(x) for x, _ in usable))
        grid = np.linspace(lo, hi, max(2, n))
    return grid, np.vstack([np.interp(grid, x, y) for x, y in usable])


@dataclass
class Band:
    """A group's curve: the mean over its runs and a band (lo, hi) on a common x grid."""

    x: np.ndarray
    mean: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    runs: int


def spread(values: np.ndarray, band: str = "sd", axis: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean, lo, hi) over ``axis``: mean ± the sample standard deviation (ddof 1; 0 for one run), or min and max."""
    if band not in BANDS:
        raise CompareError(f"the band must be one of {', '.join(BANDS)}. Found {band!r}.")
    values = np.asarray(values, dtype=float)
    mean = values.mean(axis=axis)
    if band == "minmax":
        return mean, values.min(axis=axis), values.max(axis=axis)
    sd = values.std(axis=axis, ddof=1) if values.shape[axis] > 1 else np.zeros_like(mean)
    if band == "none":
        sd = np.zeros_like(mean)
    return mean, mean - sd, mean + sd


def group_band(
    group: Group, metric: str = "loss", x: str = "step", *, band: str = "sd", smooth: bool = False
) -> Band | None:
    """The group's runs aligned on one x grid, with their mean and band; None when no run has points."""
    curves = [run_curve(v, metric, x, smooth=smooth) for v in group.runs]
    curves = [c for c in curves if len(c[0])]
    if not curves:
        return None
    grid, values = align_curves(curves)
    if not len(grid):
        return None
    mean, lo, hi = spread(values, band)
    return Band(grid, mean, lo, hi, len(curves))


def _rgba(hex_color: str, alpha: float) -> str:
    r, g, b = (int(hex_color[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha})"


def grouped_figure(
    groups: Sequence[Group],
    metric: str = "loss",
    x: str = "step",
    *,
    band: str = "sd",
    smooth: bool = False,
    log_x: bool = False,
    log_y: bool = False,
) -> go.Figure:
    """Each group's mean curve of ``metric`` against ``x`` with its band (sd or min-max over its seeds)."""
    title = f"{METRICS.get(metric, metric)} by {X_AXES.get(x, x)}"
    if not groups:
        return empty_figure(title, "choose runs to compare")
    band_name = {"sd": "± sd", "minmax": "min–max", "none": ""}.get(band, "")
    fig = go.Figure(
        layout=base_layout(
            f"{title} (mean {band_name} over seeds)".replace("( ", "("), X_AXES[x], METRICS[metric], hovermode="closest"
        )
    )
    drawn = 0
    for i, g in enumerate(groups):
        b = group_band(g, metric, x, band=band, smooth=smooth)
        if b is None:
            continue
        drawn += 1
        color = PALETTE[i % len(PALETTE)]
        if b.runs > 1 and band != "none":
            fig.add_scatter(
                x=np.concatenate([b.x, b.x[::-1]]),
                y=np.concatenate([b.hi, b.lo[::-1]]),
                fill="toself",
                fillcolor=_rgba(color, 0.18),
                line=dict(width=0),
                hoverinfo="skip",
                showlegend=False,
                legendgroup=g.label,
                name=f"{g.label} band",
            )
        fig.add_scatter(
            x=b.x,
            y=b.mean,
            mode="lines" if len(b.x) > 1 else "markers",
            name=f"{g.label} (n={b.runs})",
            legendgroup=g.label,
            line=dict(color=color, width=2),
            marker=dict(color=color),
        )
    if not drawn:
        note = "no run has points on this axis, or the runs of a group share no range of it" + (
            " (non-private runs have no finite ε; group by the privacy settings to align by ε)"
            if x == "epsilon"
            else ""
        )
        return empty_figure(title, note)
    if log_x:
        fig.update_xaxes(type="log")
    if log_y:
        fig.update_yaxes(type="log")
    return fig


def frontier_metric(views: Sequence[RunView]) -> str:
    """accuracy when every evaluated run has it, else val_loss."""
    evaluated = [v.last_eval for v in views if v.last_eval is not None]
    ok = evaluated and all(e.accuracy is not None and not math.isnan(e.accuracy) for e in evaluated)
    return "accuracy" if ok else "val_loss"


@dataclass
class FrontierPoint:
    """A group's final ε and metric over its evaluated runs: mean, sd, min, max; whether on the Pareto front."""

    group: str
    runs: int
    epsilon: float
    epsilon_sd: float
    epsilon_min: float
    epsilon_max: float
    metric: float
    metric_sd: float
    metric_min: float
    metric_max: float
    statuses: dict[str, int]
    pareto: bool = False

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def pareto_front(points: Sequence[tuple[float, float]], *, maximize: bool) -> list[bool]:
    """Which (ε, metric) points no other point beats: less or equal ε and a better-or-equal metric, one strictly.

    >>> pareto_front([(1, 0.5), (2, 0.7), (3, 0.6), (2, 0.7)], maximize=True)
    [True, True, False, True]
    """
    out = []
    for i, (e, m) in enumerate(points):
        m_ = m if maximize else -m
        dominated = False
        for j, (e2, m2) in enumerate(points):
            m2_ = m2 if maximize else -m2
            if j != i and e2 <= e and m2_ >= m_ and (e2 < e or m2_ > m_):
                dominated = True
                break
        out.append(not (dominated or math.isnan(e) or math.isnan(m)))
    return out


def frontier_points(groups: Sequence[Group], metric: str | None = None) -> list[FrontierPoint]:
    """Each group's final ε and final ``metric`` (default: ``frontier_metric``) over its evaluated runs, with
    the Pareto front (less ε, better metric) marked."""
    metric = metric or frontier_metric([v for g in groups for v in g.runs])
    points = []
    for g in groups:
        rated = [(v.final_epsilon, getattr(v.last_eval, metric, None)) for v in g.runs if v.last_eval is not None]
        rated = [(float(e), float(m)) for e, m in rated if e is not None and m is not None and not math.isnan(m)]
        if not rated:
            continue
        eps = np.array([e for e, _ in rated])
        met = np.array([m for _, m in rated])
        statuses: dict[str, int] = {}
        for v in g.runs:
            statuses[v.status] = statuses.get(v.status, 0) + 1
        em, _, _ = spread(eps) if np.all(np.isfinite(eps)) else (np.array(math.inf), None, None)
        mm, mlo, _ = spread(met)
        points.append(
            FrontierPoint(
                g.label,
                len(rated),
                float(em),
                float(eps.std(ddof=1)) if len(eps) > 1 and np.all(np.isfinite(eps)) else 0.0,
                float(eps.min()),
                float(eps.max()),
                float(mm),
                float(mm - mlo),
                float(met.min()),
                float(met.max()),
                statuses,
            )
        )
    flags = pareto_front([(p.epsilon, p.metric) for p in points], maximize=metric == "accuracy")
    for p, flag in zip(points, flags):
        p.pareto = flag
    return points


def frontier_figure(groups: Sequence[Group], metric: str | None = None, *, band: str = "sd") -> go.Figure:
    """Final ε against the final metric per group, error bars over seeds (sd, or min-max), the Pareto front drawn.

    Non-private groups (ε = ∞) sit at the right edge, marked '∞'; a group with unfinished runs says so."""
    title = "Privacy–utility frontier"
    metric = metric or frontier_metric([v for g in groups for v in g.runs])
    points = frontier_points(groups, metric)
    if not points:
        return empty_figure(title, "no evaluated runs among those chosen")
    finite_eps = [p.epsilon for p in points if math.isfinite(p.epsilon)]
    inf_x = (max(finite_eps) * 1.25 if finite_eps else 1.0) or 1.0
    name = "accuracy" if metric == "accuracy" else "validation loss"
    fig = go.Figure(
        layout=base_layout(
            f"{title}: final ε vs {name} (error bars: {'min–max' if band == 'minmax' else 'sd'} over seeds)",
            "final ε (right edge: non-private ∞)",
            name,
            hovermode="closest",
        )
    )
    xs = [p.epsilon if math.isfinite(p.epsilon) else inf_x for p in points]
    if band == "minmax":
        ex_plus = [p.epsilon_max - p.epsilon if math.isfinite(p.epsilon) else 0 for p in points]
        ex_minus = [p.epsilon - p.epsilon_min if math.isfinite(p.epsilon) else 0 for p in points]
        ey_plus = [p.metric_max - p.metric for p in points]
        ey_minus = [p.metric - p.metric_min for p in points]
    else:
        ex_plus = ex_minus = [p.epsilon_sd for p in points]
        ey_plus = ey_minus = [p.metric_sd for p in points]
    labels = []
    for p in points:
        unfinished = {k: n for k, n in p.statuses.items() if k != "finished"}
        extra = (" (" + ", ".join(f"{n} {k}" for k, n in unfinished.items()) + ")") if unfinished else ""
        labels.append(p.group + ("" if math.isfinite(p.epsilon) else " (ε=∞)") + extra)
    fig.add_scatter(
        x=xs,
        y=[p.metric for p in points],
        mode="markers+text",
        text=labels,
        textposition="top center",
        cliponaxis=False,
        name="groups",
        customdata=[[p.group, p.runs] for p in points],
        error_x=dict(type="data", symmetric=False, array=ex_plus, arrayminus=ex_minus, thickness=1),
        error_y=dict(type="data", symmetric=False, array=ey_plus, arrayminus=ey_minus, thickness=1),
        marker=dict(
            size=12,
            color=[PALETTE[i % len(PALETTE)] for i in range(len(points))],
            symbol=["circle" if math.isfinite(p.epsilon) else "diamond" for p in points],
            line=dict(width=[2 if p.pareto else 0 for p in points], color="black"),
        ),
        hovertemplate="%{customdata[0]} (%{customdata[1]} runs)<br>ε = %{x:.4g}<br>"
        + name
        + " = %{y:.4g}<extra></extra>",
    )
    front = sorted((x, p.metric) for x, p in zip(xs, points) if p.pareto)
    if front:
        fig.add_scatter(
            x=[f[0] for f in front],
            y=[f[1] for f in front],
            mode="lines",
            line=dict(color="black", dash="dot", width=1.5, shape="hv"),
            name="Pareto front",
            hoverinfo="skip",
        )
    fig.update_xaxes(rangemode="tozero")
    return fig


PARCOORDS_MIN_RUNS = 3


def parcoords_figure(
    views: Sequence[RunView], keys: Sequence[str] | None = None, metric: str | None = None
) -> go.Figure:
    """Parallel coordinates over the swept settings (default: every setting that differs, the seed included),
    the final ε and the final metric; one line per run, coloured by the metric."""
    title = "Settings → final ε and metric (one line per run)"
    keys = list(keys) if keys is not None else differing_keys(views)
    metric = metric or frontier_metric(views)
    rows = [v for v in views if v.last_eval is not None]
    if not rows:
        return empty_figure(title, "no evaluated runs among those chosen")
    if len(rows) < PARCOORDS_MIN_RUNS:  # two lines across empty axes read as a broken chart
        return empty_figure(
            title,
            f"{len(rows)} evaluated run{'s' if len(rows) > 1 else ''}: parallel coordinates need "
            f"{PARCOORDS_MIN_RUNS} or more (the table and the frontier show these)",
        )
    dims = []
    for key in keys:
        values = [v.config.get(key) for v in rows]
        if all(isinstance(val, (int, float)) and not isinstance(val, bool) for val in values):
            dims.append(dict(label=key, values=[float(val) for val in values]))
        else:
            texts = [json.dumps(val) if isinstance(val, (dict, list)) else str(val) for val in values]
            cats = list(dict.fromkeys(texts))
            dims.append(
                dict(label=key, values=[cats.index(t) for t in texts], tickvals=list(range(len(cats))), ticktext=cats)
            )
    eps = [v.final_epsilon if v.final_epsilon is not None else math.nan for v in rows]
    finite_eps = [e for e in eps if math.isfinite(e)]
    cap = (max(finite_eps) * 1.25 if finite_eps else 1.0) or 1.0
    dims.append(dict(label="final ε", values=[e if math.isfinite(e) else cap for e in eps]))
    met = [float(getattr(v.last_eval, metric) if getattr(v.last_eval, metric) is not None else math.nan) for v in rows]
    dims.append(dict(label=metric, values=met))
    fig = go.Figure(
        go.Parcoords(
            dimensions=dims,
            line=dict(color=met, colorscale="Viridis", showscale=True, reversescale=metric != "accuracy"),
        ),
        layout=dict(
            title=dict(text=title, x=0.01, font=dict(size=15)),
            height=360,
            margin=dict(l=60, r=60, t=70, b=30),
            template="none",
        ),
    )
    return fig


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        if math.isinf(value):
            return "∞"
        return f"{value:.4g}"
    return str(value)


def _stat(values: Sequence[float]) -> str:
    vals = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not vals:
        return "–"
    if any(math.isinf(v) for v in vals):
        return "∞"
    if len(vals) == 1:
        return f"{vals[0]:.4g}"
    return f"{np.mean(vals):.4g} ± {np.std(vals, ddof=1):.2g}"


def _joined(values: Sequence[Any]) -> str:
    return " / ".join(dict.fromkeys(_fmt(v) for v in values))


def group_table(views: Sequence[RunView], by: Sequence[str] | None = None) -> Table:
    """One row per group: its settings, runs, the resolved σ, q, δ and relation, statuses, and the final ε,
    validation loss, accuracy and steps (mean ± sd over its seeds)."""
    groups = group_runs(views, by)
    keys = list(groups[0].settings) if groups else []
    headers = ["group", *keys, "runs", "σ", "q", "δ", "relation", "status", "ε", "val_loss", "accuracy", "steps"]
    rows = []
    for g in groups:
        started = [v.started for v in g.runs if v.started is not None]
        statuses: dict[str, int] = {}
        for v in g.runs:
            statuses[v.status] = statuses.get(v.status, 0) + 1
        rows.append(
            [
                g.label,
                *[_cell(g.settings[k]) for k in keys],
                len(g.runs),
                _joined([s.noise_multiplier for s in started]),
                _joined([s.sample_rate for s in started]),
                _joined([s.delta for s in started]),
                _joined([s.neighboring for s in started]),
                ", ".join(f"{n} {k}" for k, n in statuses.items()),
                _stat([v.final_epsilon for v in g.runs]),
                _stat([v.last_eval.val_loss for v in g.runs if v.last_eval is not None]),
                _stat([v.last_eval.accuracy for v in g.runs if v.last_eval is not None]),
                _stat([v.latest_step.step for v in g.runs if v.latest_step is not None]),
            ]
        )
    return Table(headers, rows)


class GroupPanels(NamedTuple):
    """The group panels (the app's Compare tab and the notebook widget): figures by panel, groups and table."""

    figures: dict[str, go.Figure]  # group_loss, group_metric, frontier, parcoords (in this order)
    groups: list[Group]
    table: Table
    note: str = ""  # unfinished_note: runs that did not finish are grouped apart


def group_panels(
    views: Sequence[RunView],
    by: Sequence[str] | None = None,
    x: str = "epsilon",
    *,
    band: str = "sd",
    smooth: bool = False,
    log_y: bool = False,
) -> GroupPanels:
    """``views`` grouped by ``by`` (None: every setting that differs but the seed), seeds aggregated: the loss
    and the validation metric by group against ``x``, the privacy-utility frontier, the parallel coordinates
    and the group table."""
    groups = group_runs(views, by)
    metric = frontier_metric(views)
    figures = {
        "group_loss": grouped_figure(groups, "loss", x, band=band, smooth=smooth, log_y=log_y),
        "group_metric": grouped_figure(groups, metric, x, band=band, log_y=log_y),
        "frontier": frontier_figure(groups, metric, band=band),
        "parcoords": parcoords_figure(views),
    }
    return GroupPanels(figures, groups, group_table(views, by), unfinished_note(groups))


def comparison_report(
    views: Sequence[RunView], *, by: Sequence[str] | None = None, x: str = "epsilon", band: str = "sd", points: int = 50
) -> dict[str, Any]:
    """Everything ``workbench compare --json`` prints: runs, groups with their aligned loss / validation curves
    (at most ``points`` points), the frontier with its Pareto flags, and the table."""
    if x not in X_AXES:
        raise CompareError(f"--x must be one of {', '.join(X_AXES)}. Found {x!r}.")
    if band not in BANDS:
        raise CompareError(f"--band must be one of {', '.join(BANDS)}. Found {band!r}.")
    groups = group_runs(views, by)
    metric = frontier_metric(views)
    group_of = {v.run_id: g.label for g in groups for v in g.runs}
    out_groups = []
    for g in groups:
        curves = {}
        for name in ("loss", "val_loss", metric, "epsilon"):
            b = group_band(g, name, x, band=band)
            if b is not None and not (name == "epsilon" and x == "epsilon"):
                idx = np.unique(np.linspace(0, len(b.x) - 1, min(points, len(b.x))).round().astype(int))
                curves[name] = {k: getattr(b, k)[idx].tolist() for k in ("x", "mean", "lo", "hi")} | {"runs": b.runs}
        out_groups.append(
            {"group": g.label, "settings": g.settings, "run_ids": [v.run_id for v in g.runs], "curves": curves}
        )
    table = group_table(views, by)
    return {
        "x": x,
        "band": band,
        "metric": metric,
        "runs": [
            {
                "run_id": v.run_id,
                "name": v.label,
                "group": group_of[v.run_id],
                "status": v.status,
                "epsilon": v.final_epsilon,
                "val_loss": v.last_eval.val_loss if v.last_eval else None,
                "accuracy": v.last_eval.accuracy if v.last_eval else None,
                "sigma": v.started.noise_multiplier if v.started else None,
                "q": v.started.sample_rate if v.started else None,
                "delta": v.started.delta if v.started else None,
                "relation": v.started.neighboring if v.started else None,
            }
            for v in views
        ],
        "groups": out_groups,
        "frontier": [p.to_dict() for p in frontier_points(groups, metric)],
        "table": {"headers": table.headers, "rows": table.rows},
    }


__all__ = [
    "Table",
    "compare_figures",
    "privacy_utility_scatter",
    "settings_diff_table",
    "runs_table",
    "generations_table",
    "CompareError",
    "Group",
    "unfinished_note",
    "Band",
    "FrontierPoint",
    "X_AXES",
    "METRICS",
    "resolve_runs",
    "load_views",
    "differing_keys",
    "group_runs",
    "run_curve",
    "align_curves",
    "spread",
    "group_band",
    "grouped_figure",
    "frontier_metric",
    "frontier_points",
    "pareto_front",
    "frontier_figure",
    "parcoords_figure",
    "group_table",
    "GroupPanels",
    "group_panels",
    "comparison_report",
]
