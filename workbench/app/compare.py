"""The Compare tab: overlay two or more runs, their privacy-utility trade-off, and what differs; below, a
sweep's runs grouped by settings (seeds aggregated) against step, epsilon spent, tokens or time, the
privacy-utility frontier with its Pareto front, parallel coordinates and the group table."""

from __future__ import annotations

from typing import Any, Sequence

from workbench.app.common import error_text
from workbench.app.state import AppContext, Selection
from workbench.present import compare_figures, empty_figure, fmt_eps, privacy_utility_scatter, settings_diff_table


def run_choices(ctx: AppContext, user: str | None = None) -> list[tuple[str, str]]:
    """(label, run id) for every stored run ``user`` may see, newest first."""
    return [(f"{r.id}" + (f" · {r.name}" if r.name else "") + f" ({r.status})", r.id) for r in ctx.runs(user)]


def compare(ctx: AppContext, run_ids: Sequence[str] | None) -> tuple[Any, Any, Any, dict, str]:
    """(loss overlay, epsilon overlay, privacy-utility scatter, differing settings, message)."""
    run_ids = list(run_ids or [])
    if len(run_ids) < 2:
        msg = "Choose two or more runs to compare."
        blank = (
            empty_figure("Loss", msg),
            empty_figure("Privacy spent ε", msg),
            empty_figure("Privacy–utility trade-off", msg),
        )
        return (*blank, {"headers": ["setting"], "data": []}, msg)
    try:
        views = [ctx.views.get(rid) for rid in run_ids]
        records = {rid: ctx.store.get(rid) for rid in run_ids}
    except Exception as err:  # noqa: BLE001 - e.g. a run deleted meanwhile
        blank = (
            empty_figure("Loss", ""),
            empty_figure("Privacy spent ε", ""),
            empty_figure("Privacy–utility trade-off", ""),
        )
        return (*blank, {"headers": ["setting"], "data": []}, error_text(err))
    for view in views:  # label runs by name where they have one, keeping labels unique
        view.name = view.name or records[view.run_id].name
    loss, eps = compare_figures(views)
    labels = _unique_labels(views)
    table = settings_diff_table({label: records[v.run_id].config for label, v in zip(labels, views)})
    note = "" if table.rows else "These runs have the same settings."
    return loss, eps, privacy_utility_scatter(views), {"headers": table.headers, "data": table.rows}, note


def open_choices(ctx: AppContext, run_ids: Sequence[str] | None) -> list[tuple[str, str]]:
    """(label, run id) of the compared runs for the "Open a run" list beside the privacy–utility scatter: those
    plotted first (a final epsilon and an evaluation: "name · ε 4 · accuracy 0.61"), then the others."""
    plotted, others = [], []
    for rid in run_ids or []:
        try:
            view, rec = ctx.views.get(rid), ctx.store.get(rid)
        except Exception:  # noqa: BLE001 - a run deleted meanwhile
            continue
        name = view.name or rec.name or rid
        label = f"{name} ({rid})" if name != rid else rid
        ev, eps = view.last_eval, view.final_epsilon
        if ev is None or eps is None:
            others.append((f"{label} · not evaluated", rid))
            continue
        if ev.accuracy is not None and ev.accuracy == ev.accuracy:  # not NaN
            metric = f" · accuracy {ev.accuracy:.3g}"
        else:
            metric = f" · val loss {ev.val_loss:.3g}" if ev.val_loss is not None else ""
        plotted.append((f"{label} · ε {fmt_eps(eps)}{metric}", rid))
    return plotted + others


def open_run(ctx: AppContext, run_id: str | None, user: str | None = None) -> tuple[Selection | None, str]:
    """The Train tab's selection for ``run_id`` (not following newer runs), or None with the message."""
    if not run_id:
        return None, "Choose a run to open."
    try:
        ctx.check_run(user, run_id)
        ctx.store.get(run_id)
    except Exception as err:  # noqa: BLE001 - deleted meanwhile
        return None, error_text(err)
    return Selection(run_id=run_id, follow=False), ""


X_CHOICES = [("step", "step"), ("ε spent", "epsilon"), ("tokens seen", "tokens"), ("wall time", "time")]
BAND_CHOICES = [("± sd over seeds", "sd"), ("min–max over seeds", "minmax")]


SWEEP_PREFIX = "sweep:"


def expand(ctx: AppContext, ids: Sequence[str] | None, user: str | None = None) -> list[str]:
    """The picker's values as run ids: ``sweep:NAME`` becomes the sweep's stored runs (duplicates dropped). In a
    workshop, a run that is not ``user``'s is refused (RunNotYours), and a participant names runs only."""
    out: list[str] = []
    for value in ids or []:
        out += sweep_runs(ctx, value[len(SWEEP_PREFIX) :]) if value.startswith(SWEEP_PREFIX) else [value]
    out = list(dict.fromkeys(out))
    for rid in out:
        ctx.check_run(user, rid)
    return out


def sweep_choices(ctx: AppContext) -> list[tuple[str, str]]:
    """(label, name) for every stored sweep, newest first."""
    from workbench.store.sweeps import SweepStore

    sweeps = SweepStore(ctx.store)
    out = []
    for rec in sweeps.list():
        counts = sweeps.counts(rec)
        out.append((f"{rec.name} ({counts.get('finished', 0)}/{len(rec.members)} finished)", rec.name))
    return out


def sweep_runs(ctx: AppContext, name: str | None) -> list[str]:
    """The stored runs of sweep ``name`` (none for no name)."""
    from workbench.present.compare import resolve_runs

    if not name:
        return []
    try:
        return resolve_runs(ctx.store, [name])
    except Exception:  # noqa: BLE001 - a sweep with no runs yet, or deleted meanwhile
        return []


def group_choices(ctx: AppContext, run_ids: Sequence[str] | None) -> list[str]:
    """The settings that differ among the chosen runs: what the runs can be grouped by."""
    from workbench.present.compare import differing_keys

    try:
        return differing_keys(_views(ctx, run_ids or []))
    except Exception:  # noqa: BLE001
        return []


def _views(ctx: AppContext, run_ids: Sequence[str]):
    views = []
    for rid in run_ids:
        view, rec = ctx.views.get(rid), ctx.store.get(rid)
        view.name = view.name or rec.name
        view.config = view.config or dict(rec.config)
        views.append(view)
    return views


def compare_groups(
    ctx: AppContext,
    run_ids: Sequence[str] | None,
    group_by: Sequence[str] | None = None,
    x: str = "epsilon",
    band: str = "sd",
    smooth: bool = False,
    log_y: bool = False,
) -> tuple[Any, Any, Any, Any, dict, str]:
    """(grouped loss, grouped validation metric, frontier, parallel coordinates, group table, message): the
    chosen runs grouped by ``group_by`` (none: every differing setting but the seed), seeds aggregated."""
    from workbench.present.compare import group_panels

    run_ids = list(run_ids or [])
    titles = ("Loss by group", "Validation by group", "Privacy–utility frontier", "Parallel coordinates")
    empty_table = {"headers": ["group"], "data": []}
    if len(run_ids) < 2:
        msg = "Choose two or more runs (or a sweep) to group."
        return (*(empty_figure(t, msg) for t in titles), empty_table, msg)
    try:
        by = list(group_by) if group_by else None
        panels = group_panels(_views(ctx, run_ids), by, x, band=band, smooth=smooth, log_y=log_y)
    except Exception as err:  # noqa: BLE001 - e.g. a run deleted meanwhile, a setting not in these runs
        return (*(empty_figure(t, "") for t in titles), empty_table, error_text(err))
    return (*panels.figures.values(), {"headers": panels.table.headers, "data": panels.table.rows}, panels.note)


def selection_cost(ctx: AppContext, run_ids: Sequence[str] | None) -> str:
    """The plain line under the comparison: what choosing the best of these runs costs (the PLD composition
    of all of them, per dataset, from the privacy ledger), and that a private validation metric is part of it."""
    from workbench.present.ledger import selection_cost_text
    from workbench.store.ledger import Ledger

    run_ids = list(run_ids or [])
    if len(run_ids) < 2:
        return ""
    try:
        return selection_cost_text(Ledger(ctx.store).entries_for(run_ids), run_ids)
    except Exception as err:  # noqa: BLE001
        return error_text(err)


def _unique_labels(views) -> list[str]:
    labels = [v.label for v in views]
    return [v.run_id if labels.count(label) > 1 else label for v, label in zip(views, labels)]


def _plot_row(*names: str) -> list[Any]:
    """A row of plots side by side, with elem_ids compare-NAME."""
    import gradio as gr

    with gr.Row():
        return [gr.Plot(elem_id=f"compare-{name}", show_label=False) for name in names]


def build(ctx: AppContext, tab: Any, selection: Any, dashboard: Any) -> dict[str, Any]:
    """Lay out the Compare tab; its run list refreshes whenever the tab is opened. ``selection`` and ``dashboard``
    are the Train tab's (workbench/app/live.py): "Open in Train tab" shows a compared run there."""
    import gradio as gr

    from workbench.app.live import selection_value
    from workbench.app.workshop import takes_request, user_of

    with gr.Row():
        picker = gr.Dropdown(
            [], multiselect=True, label="Runs to compare (two or more), or a sweep", elem_id="compare-picker", scale=5
        )
        refresh = gr.Button("Refresh list", scale=1, size="sm")
    message = gr.Markdown("", elem_id="compare-message")
    cost = gr.Markdown("", elem_id="compare-selection-cost")
    loss, eps = _plot_row("loss", "epsilon")
    with gr.Row():
        with gr.Column(scale=1):
            scatter = gr.Plot(elem_id="compare-scatter", show_label=False)
            # gr.Plot has no click event with the point's data (Gradio 6: change only): a list of the runs instead
            with gr.Row():
                open_picker = gr.Dropdown(
                    [], label="Open a run (its dashboard in the Train tab)", elem_id="compare-open-run", scale=4
                )
                open_btn = gr.Button("Open in Train tab", size="sm", elem_id="compare-open", scale=1)
            open_message = gr.Markdown("", elem_id="compare-open-message")
        diff = gr.Dataframe(
            headers=["setting"], label="Settings that differ", interactive=False, elem_id="compare-diff", wrap=True
        )

    gr.Markdown(
        "### Groups: seeds aggregated, aligned by privacy spent\nChoose a sweep (or runs) above.",
        elem_id="compare-groups-title",
    )
    with gr.Row():
        group_by = gr.Dropdown(
            [],
            multiselect=True,
            label="Group by (empty: every setting that differs but the seed)",
            elem_id="compare-group-by",
            scale=3,
        )
        x_axis = gr.Radio(X_CHOICES, value="epsilon", label="x axis", elem_id="compare-x", scale=3)
        band = gr.Radio(BAND_CHOICES, value="sd", label="band", elem_id="compare-band", scale=2)
        with gr.Column(scale=1, min_width=120):
            smooth = gr.Checkbox(False, label="smooth the loss", elem_id="compare-smooth")
            log_y = gr.Checkbox(False, label="log y", elem_id="compare-log-y")
    group_message = gr.Markdown("", elem_id="compare-groups-message")
    group_loss, group_metric = _plot_row("group-loss", "group-metric")
    frontier, parcoords = _plot_row("frontier", "parcoords")
    group_table = gr.Dataframe(
        headers=["group"],
        label="Groups: settings, resolved privacy, final numbers (mean ± sd)",
        interactive=False,
        elem_id="compare-groups",
        wrap=True,
    )
    group_outputs = [group_loss, group_metric, frontier, parcoords, group_table, group_message]

    # Sweeps are entries of the run picker ("sweep:NAME" stands for its runs).
    @takes_request
    def choices(current, request=None):
        user = user_of(request)
        shared = ctx.workshop is None or ctx.workshop.is_instructor(user)  # sweeps: not a participant's
        options = [(f"sweep {label}", f"{SWEEP_PREFIX}{name}") for label, name in sweep_choices(ctx)] if shared else []
        options += run_choices(ctx, user)
        ids = {v for _, v in options}
        return gr.update(choices=options, value=[v for v in (current or []) if v in ids])

    @takes_request
    def regroup(ids, by, x, band_value, smooth_value, log_value, request=None):
        return compare_groups(
            ctx,
            expand(ctx, ids, user_of(request)),
            by,
            x or "epsilon",
            band_value or "sd",
            bool(smooth_value),
            bool(log_value),
        )

    @takes_request
    def refresh_open(ids, current, request=None):
        options = open_choices(ctx, expand(ctx, ids, user_of(request)))
        ids_shown = [v for _, v in options]
        return gr.update(choices=options, value=current if current in ids_shown else None)

    @takes_request
    def refresh_groups(ids, request=None):
        # choices only: setting the value here could undo a choice made while this event waited in the queue
        return gr.update(choices=group_choices(ctx, expand(ctx, ids, user_of(request))))

    @takes_request
    def compared(ids, request=None):
        return compare(ctx, expand(ctx, ids, user_of(request)))

    @takes_request
    def cost_of(ids, request=None):
        return selection_cost(ctx, expand(ctx, ids, user_of(request)))

    tab.select(choices, picker, picker, api_visibility="private", show_progress="hidden")
    refresh.click(choices, picker, picker, api_visibility="private")
    group_inputs = [picker, group_by, x_axis, band, smooth, log_y]
    # The group panels follow the picker through .then() after the overlay, not through listeners of their own on
    # the picker: with more listeners on its change, Gradio 6 fired the picker's change again and again while its
    # list was open.
    picker.change(
        compared,
        picker,
        [loss, eps, scatter, diff, message],
        api_name="compare",
        trigger_mode="always_last",
    ).then(refresh_groups, picker, group_by, api_visibility="private", show_progress="hidden").then(
        regroup, group_inputs, group_outputs, api_visibility="private", show_progress="hidden"
    ).then(refresh_open, [picker, open_picker], open_picker, api_visibility="private", show_progress="hidden")
    picker.change(
        cost_of,
        picker,
        cost,
        api_visibility="private",
        trigger_mode="always_last",
        show_progress="hidden",
    )
    for control in group_inputs[1:]:
        control.change(
            regroup,
            group_inputs,
            group_outputs,
            api_visibility="private",
            trigger_mode="always_last",
            show_progress="hidden",
        )

    @takes_request
    def on_open(run_id, request=None):
        chosen, text = open_run(ctx, run_id, user_of(request))
        if chosen is None:
            return gr.skip(), gr.skip(), text
        return chosen, selection_value(chosen, show=True), ""

    opened = open_btn.click(on_open, open_picker, [selection, dashboard, open_message], api_visibility="private")
    return {
        "picker": picker,
        "open_picker": open_picker,
        "opened": opened,
        "outputs": [loss, eps, scatter, diff, message],
        "cost": cost,
        "group_inputs": group_inputs,
        "group_outputs": group_outputs,
    }
