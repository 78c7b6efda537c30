"""The Runs tab: every stored run; open one's dashboard, evaluate its adapter (a Stop skips the last evaluation),
export it as a zip, delete it (confirmed); the privacy ledger below (per dataset, every run that trained and the
composed ε).

(No ``from __future__ import annotations`` here: Gradio reads the ``gr.SelectData`` hint at run time.)
"""

import shutil
import tempfile
from pathlib import Path
from typing import Any

from workbench.app.common import error_text
from workbench.app.live import selection_value
from workbench.app.state import AppContext, Selection
from workbench.present import runs_table


def list_runs(ctx: AppContext, user: str | None = None) -> dict[str, Any]:
    """The runs table as Gradio's Dataframe value (headers + data). An ended run's epsilon is its summary's; a
    run without one (running, or killed) has its view brought up to date first (one read earlier may stop mid-run)."""
    records = ctx.runs(user)  # in a workshop: the participant's own (the instructor's: all)
    views = {rec.id: ctx.views.get(rec.id) for rec in records if rec.final_epsilon is None and rec.status != "queued"}
    table = runs_table(records, views={**ctx.views.cached(), **views})
    return {"headers": table.headers, "data": table.rows}


def ledger_view(ctx: AppContext, user: str | None = None) -> str:
    """The privacy ledger as HTML: per dataset, every run that trained on it, its ε and the composed total
    (store/ledger.py); deleted runs stay in it. A workshop participant sees the datasets they trained on, each with
    its total (every participant's runs on it compose) and their own runs, not the others'."""
    from workbench.present.ledger import ledger_html
    from workbench.store.ledger import Ledger

    try:
        datasets = Ledger(ctx.store).datasets()
        if ctx.workshop is not None and not ctx.workshop.is_instructor(user):
            return _own_ledger(datasets, {r.id for r in ctx.runs(user)})
        return ledger_html(datasets)
    except Exception as err:  # noqa: BLE001 - a ledger problem must not break the Runs tab
        return error_text(err)


def _own_ledger(datasets, mine: set[str]) -> str:
    import html

    from workbench.present.ledger import dataset_title, total_text

    parts = []
    for d in datasets:
        own = [e for e in d.entries if e.run_id in mine]
        if own:
            runs = ", ".join(html.escape(e.label) for e in own)
            parts.append(
                f"<p><b>{html.escape(dataset_title(d))}</b>: {html.escape(total_text(d))}. Your runs on it: {runs}. "
                "The total counts every participant's runs on these data (the Workshop tab's class view).</p>"
            )
    return "".join(parts) or "<p>None of your runs has trained yet.</p>"


def export_zip(ctx: AppContext, run_id: str | None, user: str | None = None) -> tuple[str | None, str]:
    """Export the run (adapter, privacy report, config; no telemetry) and zip it; (zip path, message)."""
    from workbench.store.export import export_run

    if not run_id:
        return None, "Choose a run first."
    try:
        ctx.check_run(user, run_id)
        folder = export_run(ctx.store, run_id, tempfile.mkdtemp(prefix="workbench-export-"))
        archive = shutil.make_archive(str(folder), "zip", root_dir=folder.parent, base_dir=folder.name)
        shutil.rmtree(folder, ignore_errors=True)
    except Exception as err:  # noqa: BLE001 - e.g. a run without an adapter
        return None, error_text(err)
    size = Path(archive).stat().st_size
    return archive, (
        f"Exported `{run_id}` ({size / 1024:.0f} kB): adapter, privacy report and config. The training "
        "telemetry is left out: it is computed from the raw data and not covered by DP "
        "(`workbench runs export --with-telemetry` includes it)."
    )


def evaluate_stored(ctx: AppContext, run_id: str | None, user: str | None = None) -> str:
    """Evaluate the chosen run's adapter on its validation split now and add it to the run's events
    (session.evaluate_run: what a Stop skipped); the message says what it measured, or why it cannot."""
    from workbench.session import evaluate_run

    if not run_id:
        return "Choose a run first."
    try:
        ctx.check_run(user, run_id)
        evaluation = evaluate_run(run_id, store=ctx.store)  # refused at once while a run trains on this device
    except Exception as err:  # noqa: BLE001 - e.g. a run without an adapter: a message, never a traceback
        return error_text(err)
    numbers = f"val_loss {evaluation.val_loss:.4f}"
    if evaluation.accuracy is not None:
        numbers = f"accuracy {evaluation.accuracy:.3f}, " + numbers
    return (
        f"Evaluated `{run_id}` after step {evaluation.step}: {numbers}. Validation telemetry from held-out examples, "
        "not covered by ε (it spends no privacy budget); its dashboard shows it with the run's other evaluations."
    )


def delete_run(ctx: AppContext, run_id: str | None, user: str | None = None) -> str:
    """Delete a run that is not active; the message says what happened."""
    if not run_id:
        return "Choose a run first."
    try:
        ctx.check_run(user, run_id)
    except Exception as err:  # noqa: BLE001 - in a workshop, another participant's run
        return error_text(err)
    session = ctx.sessions.get(run_id)
    if session is not None and not session.done:
        return f"⚠️ Run `{run_id}` is still active; stop it before deleting it."
    try:
        record = ctx.store.get(run_id)
        if record.status in ("running", "queued"):
            return f"⚠️ Run `{run_id}` is {record.status}; stop it before deleting it."
        ctx.store.delete(record.id)
    except Exception as err:  # noqa: BLE001
        return error_text(err)
    ctx.views.forget(run_id)
    ctx.sessions.pop(run_id, None)
    return f"Deleted run `{run_id}`."


def build(ctx: AppContext, tab: Any, selection: Any, dashboard: Any) -> dict[str, Any]:
    """Lay out the Runs tab; ``selection`` is the Train tab's state, ``dashboard`` its live dashboard
    (workbench/app/live.py): "Open dashboard" shows the chosen run there and brings the Train tab forward."""
    import gradio as gr

    from workbench.app.workshop import user_of

    table = gr.Dataframe(
        headers=["run", "name", "status", "model", "ε", "metric", "steps", "created"],
        interactive=False,
        label="Stored runs (click a row to choose it)",
        elem_id="runs-table",
        max_height=360,
    )
    with gr.Row():
        picker = gr.Dropdown([], label="Run", elem_id="runs-picker", scale=3)
        refresh = gr.Button("Refresh", size="sm", scale=1)
    with gr.Row():
        open_btn = gr.Button("Open dashboard", elem_id="open-run")
        evaluate_btn = gr.Button("Evaluate", elem_id="evaluate-run")
        export_btn = gr.Button("Export adapter + privacy report", elem_id="export-run")
        delete_btn = gr.Button("Delete…", variant="stop", elem_id="delete-run")
    with gr.Row(visible=False) as confirm_row:
        confirm_text = gr.Markdown("")
        confirm_btn = gr.Button("Yes, delete it", variant="stop", elem_id="confirm-delete")
        cancel_btn = gr.Button("Cancel", elem_id="cancel-delete")
    message = gr.Markdown("", elem_id="runs-message")
    download = gr.File(label="Export (zip)", interactive=False, elem_id="export-file", height=90)
    gr.Markdown(
        "### Privacy ledger\nEvery run that trained, by the data it trained on (a fingerprint of its records), "
        "and the ε of all of them composed (PLD). Deleting a run does not take it out; "
        "`workbench ledger --forget RUN_ID` does, and records why."
    )
    ledger = gr.HTML("", elem_id="runs-ledger")  # filled when the tab opens, like the runs table

    def reload(current, request: gr.Request = None):
        data = list_runs(ctx, user_of(request))
        ids = [row[0] for row in data["data"]]
        return data, gr.update(choices=ids, value=current if current in ids else (ids[0] if ids else None))

    def ledger_for(request: gr.Request = None):
        return ledger_view(ctx, user_of(request))

    tab.select(reload, picker, [table, picker], api_visibility="private", show_progress="hidden").then(
        ledger_for, None, ledger, api_visibility="private", show_progress="hidden"
    )
    refresh.click(reload, picker, [table, picker], api_name="list_runs").then(
        ledger_for, None, ledger, api_visibility="private", show_progress="hidden"
    )

    def row_chosen(evt: gr.SelectData):
        row = evt.row_value or []
        return row[0] if row else gr.skip()

    table.select(row_chosen, None, picker, api_visibility="private")

    def open_run(run_id, request: gr.Request = None):
        if not run_id:
            return gr.skip(), gr.skip(), "Choose a run first."
        try:
            ctx.check_run(user_of(request), run_id)
        except Exception as err:  # noqa: BLE001 - in a workshop, another participant's run
            return gr.skip(), gr.skip(), error_text(err)
        chosen = Selection(run_id=run_id, follow=False)
        return chosen, selection_value(chosen, show=True), ""

    opened = open_btn.click(open_run, picker, [selection, dashboard, message], api_visibility="private")

    def export(rid, request: gr.Request = None):
        return export_zip(ctx, rid, user_of(request))

    def evaluate(rid, request: gr.Request = None):
        return evaluate_stored(ctx, rid, user_of(request))

    export_btn.click(export, picker, [download, message], api_visibility="private")
    evaluate_btn.click(evaluate, picker, message, api_visibility="private").then(
        reload, picker, [table, picker], api_visibility="private", show_progress="hidden"
    )

    def ask(run_id, request: gr.Request = None):
        if not run_id:
            return gr.update(visible=False), "", "Choose a run first."
        try:
            ctx.check_run(user_of(request), run_id)
        except Exception as err:  # noqa: BLE001 - in a workshop, another participant's run
            return gr.update(visible=False), "", error_text(err)
        return gr.update(visible=True), f"Delete run **{run_id}** and its files permanently?", ""

    delete_btn.click(ask, picker, [confirm_row, confirm_text, message], api_visibility="private")
    cancel_btn.click(lambda: gr.update(visible=False), None, confirm_row, api_visibility="private")

    def confirmed(run_id, request: gr.Request = None):
        return (gr.update(visible=False), delete_run(ctx, run_id, user_of(request)), *reload(None, request))

    confirm_btn.click(confirmed, picker, [confirm_row, message, table, picker], api_visibility="private").then(
        ledger_for, None, ledger, api_visibility="private", show_progress="hidden"
    )
    return {"picker": picker, "table": table, "reload": reload, "opened": opened, "ledger": ledger, "refresh": refresh}
