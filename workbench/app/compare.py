"""The Compare tab: overlay two or more runs, their privacy-utility trade-off, and what differs."""

from __future__ import annotations

from typing import Any, Sequence

from workbench.app.common import error_text
from workbench.app.state import AppContext
from workbench.present import compare_figures, empty_figure, privacy_utility_scatter, settings_diff_table


def run_choices(ctx: AppContext) -> list[tuple[str, str]]:
    """(label, run id) for every stored run, newest first."""
    return [(f"{r.id}" + (f" · {r.name}" if r.name else "") + f" ({r.status})", r.id) for r in ctx.runs()]


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


def build(ctx: AppContext, tab: Any) -> dict[str, Any]:
    """Lay out the Compare tab; its run list refreshes whenever the tab is opened."""
    import gradio as gr

    with gr.Row():
        picker = gr.Dropdown(
            [], multiselect=True, label="Runs to compare (two or more)", elem_id="compare-picker", scale=5
        )
        refresh = gr.Button("Refresh list", scale=1, size="sm")
    message = gr.Markdown("", elem_id="compare-message")
    cost = gr.Markdown("", elem_id="compare-selection-cost")
    with gr.Row():
        loss = gr.Plot(elem_id="compare-loss", show_label=False)
        eps = gr.Plot(elem_id="compare-epsilon", show_label=False)
    with gr.Row():
        scatter = gr.Plot(elem_id="compare-scatter", show_label=False)
        diff = gr.Dataframe(
            headers=["setting"], label="Settings that differ", interactive=False, elem_id="compare-diff", wrap=True
        )

    def choices(current):
        options = run_choices(ctx)
        ids = {v for _, v in options}
        return gr.update(choices=options, value=[v for v in (current or []) if v in ids])

    tab.select(choices, picker, picker, api_visibility="private", show_progress="hidden")
    refresh.click(choices, picker, picker, api_visibility="private")
    picker.change(
        lambda ids: compare(ctx, ids),
        picker,
        [loss, eps, scatter, diff, message],
        api_name="compare",
        trigger_mode="always_last",
    )
    picker.change(
        lambda ids: selection_cost(ctx, ids),
        picker,
        cost,
        api_visibility="private",
        trigger_mode="always_last",
        show_progress="hidden",
    )
    return {"picker": picker, "outputs": [loss, eps, scatter, diff, message], "cost": cost}
