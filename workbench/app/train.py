"""The Train tab: model and optimiser settings, Start / Stop, and the live DP dashboard.

The dashboard follows the run store, never the trainer: it is one component (workbench/app/live.py)
whose value says which run to show; the page streams that run's rows and draws them itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from workbench.app import forms
from workbench.app.common import error_text
from workbench.app.controls import control, field_controls, field_spec
from workbench.app.live import dashboard, followed, selection_value
from workbench.app.plan import PlanControls
from workbench.app.state import AppContext, Selection
from workbench.config import RunConfig
from workbench.store.names import unique_name
from workbench.store.runs import RunNotFound

POLL_SECONDS = 1.0  # default period of the stream's store poll (build_app(poll_seconds=...))


# -- callbacks ------------------------------------------------------------------------------------


def start_run(
    ctx: AppContext, selection: Selection, values: dict[str, Any], user: str | None = None
) -> tuple[Selection, str]:
    """Validate everything, then start a Session on its background thread (in a workshop: hand it to the fair
    queue as ``user``'s run); (selection, message)."""
    from workbench.session import Session

    try:
        config = forms.config_from_values(values, base=forms.ctx_base(ctx))
        for source in (config.data, config.validation_data):  # in a workshop: demo, a dataset name or own uploads
            ctx.check_data(user, source)
        forms.check_start(config)
        # a readable name from what differs from the preset; a typed name too is made unique in the store, so
        # Compare's legend never reads one name against the same name
        name = config.name or default_name(ctx, config)
        config = config.with_overrides({"name": unique_name(name, (r.name for r in ctx.store.list()))})
        if config.nproc > 1:  # more processes than GPUs, no backend: the message now, not a failed run
            from workbench.engine import distributed

            distributed.check_launch(config, config.nproc)
    except Exception as err:  # noqa: BLE001 - bad input: a message beside Start, nothing started
        return selection, error_text(err)
    if ctx.workshop is not None:
        return _submit(ctx, selection, config, user)
    busy = [rid for rid, s in ctx.sessions.items() if not s.done]
    session = Session(config, store=ctx.store)
    run_id = session.start()
    ctx.sessions[run_id] = session
    message = f"Started run `{run_id}`."
    if busy:
        message = f"Run `{run_id}` is **queued**: it starts when run `{busy[-1]}` ends (one job per device)."
    return selection.select(run_id, follow=True), message


def _submit(ctx: AppContext, selection: Selection, config: RunConfig, user: str | None) -> tuple[Selection, str]:
    """A workshop's Start: the run joins the fair queue (running/queue.py) as ``user``'s; the message says its
    place and estimate, or why the queue refused it (the per-participant limit)."""
    from workbench.running.queue import wait_text

    try:
        run_id = ctx.workshop.queue.submit(config, owner=user or "anonymous")
    except Exception as err:  # noqa: BLE001 - over the queue limit: a message, nothing stored
        return selection, error_text(err)
    ctx.sessions[run_id] = ctx.workshop.queue.session(run_id)
    place = ctx.workshop.queue.position(run_id)
    if place is None or place.status == "running":
        return selection.select(run_id, follow=True), f"Started run `{run_id}`."
    paused = " The instructor has paused the queue." if ctx.workshop.queue.paused else ""
    where = wait_text(place.position, place.wait_s)
    return selection.select(run_id, follow=True), f"Run `{run_id}` is **queued**: {where}.{paused}"


def started_message(ctx: AppContext, run_id: str | None, *, poll: float = 1.0, timeout: float = 24 * 3600):
    """Once a queued run leaves the queue, the message under Start says so ("Run ... is queued" stayed on screen
    for minutes after the run had started); yields nothing for a run that was not queued. The session is read
    in this process: no store query, nothing sent while the run waits."""
    import time

    session = ctx.sessions.get(run_id) if run_id else None
    if session is None or session.status != "queued":
        return
    end = time.monotonic() + timeout
    while session.status == "queued" and not session.done and time.monotonic() < end:
        time.sleep(poll)
    if session.status == "running" or session.done:
        yield f"Started run `{run_id}` (it was queued) at {time.strftime('%H:%M:%S')}: {session.status}."


def default_name(ctx: AppContext, config: RunConfig) -> str:
    """``eps8-B64-T100-lr0.005``: the run's privacy level and the settings that differ from the app's preset
    (store/names.py, the notation of sweep runs), with " (2)", " (3)", ... when a stored run has that name."""
    from workbench.store.names import default_run_name, unique_name

    return unique_name(default_run_name(config, forms.ctx_base(ctx)), (r.name for r in ctx.store.list()))


def stop_run(ctx: AppContext, selection: Selection, user: str | None = None) -> str:
    """Ask the run on show to stop (the selected one, or the newer run the page followed to); it takes
    effect within one step."""
    run_id = followed(ctx, selection.run_id, selection.follow, user)
    if run_id is None:
        return "No run selected."
    try:
        ctx.check_run(user, run_id)  # in a workshop: the participant's own run (the instructor's: any)
    except RunNotFound as err:
        return error_text(err)
    session = ctx.sessions.get(run_id)
    if session is None:
        try:
            status = ctx.store.get(run_id).status
        except RunNotFound as err:
            return error_text(err)
        if status in ("running", "queued"):
            return (
                f"⚠️ Run `{run_id}` was started by another process (e.g. `workbench train`); this app cannot stop "
                "it. Stop it there (Ctrl-C in its terminal)."
            )
        return f"Run `{run_id}` is not running ({status})."
    if session.done:
        return f"Run `{run_id}` has already ended ({session.status})."
    session.stop()
    return (
        f"Stopping run `{run_id}`: the step under way is discarded and the last evaluation skipped (Evaluate in Runs)…"
    )


# -- layout ---------------------------------------------------------------------------------------


@dataclass
class TrainControls:
    components: dict[str, Any]
    dashboard: Any  # its value (live.selection_value) says which run the dashboard shows


def build(ctx: AppContext, plan: PlanControls, selection: Any) -> TrainControls:
    """Lay out the Train tab and wire Start and Stop; call inside ``gr.Tab``. The field-backed controls come from
    the config's fields (controls.py); the ones listed in controls.HAND_MADE are made here."""
    import gradio as gr

    base = forms.ctx_base(ctx)
    c: dict[str, Any] = {}
    with gr.Row(equal_height=False):
        with gr.Column(scale=1, min_width=280):
            c["model"] = gr.Dropdown(
                list(forms.BUILTIN_MODELS),
                value=base.model,
                allow_custom_value=True,
                label="Model",
                info=field_spec("model").help,
                elem_id="model",
            )
            c["name"] = gr.Textbox(  # not prefilled from the config: every run would share its name
                "",
                label="Run name (optional)",
                placeholder="empty: from the settings, e.g. eps8-B64-T100",
                elem_id="run-name",
            )
            with gr.Accordion("LoRA and optimiser", open=False):
                for row in forms.TRAIN_ROWS:
                    with gr.Row():
                        c |= field_controls(row, base)
            gr.Markdown("Data and privacy settings come from the **Plan** tab.")
            c["nproc"] = control("nproc", base)  # unbounded (controls.UNBOUNDED): a bad count's message beside Start
            c["audit"] = gr.Checkbox(
                base.audit != "none",
                label="Audit this run (gradient canaries)",
                info="An empirical ε lower bound beside the claimed ε; the canaries perturb "
                "the adapter, so an audited run is for checking, not release.",
                elem_id="audit",
            )
            with gr.Row():
                start = gr.Button("Start", variant="primary", elem_id="start")
                stop = gr.Button("Stop", variant="stop", elem_id="stop")
            message = gr.Markdown("", elem_classes="wb-error", elem_id="train-message")
        with gr.Column(scale=4):
            live = dashboard()  # header, live charts and generations: workbench/app/live.py
    _wire(ctx, {**plan.components, **c}, selection, live, start, stop, message)
    return TrainControls(c, live)


def _wire(ctx: AppContext, form: dict[str, Any], selection: Any, live: Any, start: Any, stop: Any, message: Any):
    """Start (with the Plan and Train tabs' controls by name), the message once a queued run starts, and Stop."""
    import gradio as gr

    started = gr.State(None)  # the run the last Start queued, if it was queued

    def wait_started(run_id):
        said = False
        for said_now in started_message(ctx, run_id):
            said = True
            yield said_now
        if not said:  # not queued: the message stays
            yield gr.skip()

    from workbench.app.workshop import takes_request, user_of

    @takes_request
    def on_start(sel, request=None, **values):
        new, message = start_run(ctx, sel, values, user_of(request))
        return new, (gr.skip() if new is sel else selection_value(new)), message, new.run_id if new is not sel else None

    start.click(
        on_start,
        selection,
        [selection, live, message, started],
        inputs_kwargs=form,
        api_visibility="private",
        concurrency_limit=1,
    ).then(  # waits in a thread of its own (no limit shared with Start) and answers once, when the run starts
        wait_started,
        started,
        message,
        api_visibility="private",
        concurrency_limit=None,
        show_progress="hidden",
    )

    @takes_request
    def on_stop(sel, request=None):
        return stop_run(ctx, sel, user_of(request))

    stop.click(on_stop, selection, message, api_visibility="private")
