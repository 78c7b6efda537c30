"""The Train tab: model and optimiser settings, Start / Stop, and the live DP dashboard.

The dashboard follows the run store, never the trainer.  The page's script (workbench/app/page.py)
holds one stream that the server writes to when the store's version token changes.  While the run
on show is running, each change brings ``live_update`` (the header and the live panels), which the
script draws itself (on a canvas: workbench/app/liveplot.py); otherwise it clicks the hidden
refresh button, and ``refresh`` reads only the events after the last one seen and sends only the
panels that changed.  (A ``gr.Timer`` would run a Gradio
event every second, which costs the browser about 0.15 CPU-s/s even when nothing is sent; see
page.py.)
"""

from __future__ import annotations

import html
import json
import threading
import time
from dataclasses import dataclass, replace
from typing import Any

from workbench import present
from workbench.app import forms
from workbench.app.common import badge, error_text
from workbench.app.page import REFRESH_ELEM_ID
from workbench.app.plan import PlanControls, ctx_base
from workbench.app.state import AppContext, Selection
from workbench.config import RunConfig
from workbench.engine.randomness import SEEDED_LABEL
from workbench.engine.report import relation_text
from workbench.present import RunView, accountant_label, fmt_eps, generations_table, progress
from workbench.store.runs import RunNotFound

POLL_SECONDS = 1.0  # default period of the page's store poll (build_app(poll_seconds=...))
PANELS = ("header", *present.PANELS, "generations")


# -- callbacks ------------------------------------------------------------------------------------


def start_run(ctx: AppContext, selection: Selection, values: dict[str, Any]) -> tuple[Selection, str]:
    """Validate everything, then start a Session on its background thread; (selection, message)."""
    from workbench.session import Session

    try:
        config = forms.config_from_values(values, base=ctx_base(ctx))
        forms.check_start(config)
    except Exception as err:  # noqa: BLE001 - bad input: a message beside Start, nothing started
        return selection, error_text(err)
    busy = [rid for rid, s in ctx.sessions.items() if not s.done]
    session = Session(config, store=ctx.store)
    run_id = session.start()
    ctx.sessions[run_id] = session
    message = f"Started run `{run_id}`."
    if busy:
        message = f"Run `{run_id}` is **queued**: it starts when run `{busy[-1]}` ends (one job per device)."
    return selection.select(run_id, follow=True), message


def stop_run(ctx: AppContext, selection: Selection) -> str:
    """Ask the selected run to stop; it takes effect within one step."""
    run_id = selection.run_id
    if run_id is None:
        return "No run selected."
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
    return f"Stopping run `{run_id}` after the current step…"


def refresh(ctx: AppContext, selection: Selection, *, now: float | None = None) -> tuple[Any, ...]:
    """One poll: (selection, *panels) with ``gr.skip()`` for every panel that has not changed."""
    import gradio as gr

    now = time.time() if now is None else now
    selection = _followed(ctx, selection)
    if selection.run_id is None:
        if selection.seq == 0:
            return (gr.skip(),) * (1 + len(PANELS))
        return (
            Selection(follow=selection.follow, seq=0),
            *_empty_panels("No run yet: set up the Plan and press Start."),
        )
    try:
        record = ctx.store.get(selection.run_id)
    except RunNotFound:
        return (Selection(follow=True, seq=0), *_empty_panels(f"Run {selection.run_id} was deleted."))
    view = ctx.views.get(record.id)
    header = _header(view, record, now)
    new_header = hash(header) != selection.header_hash
    new_steps = len(view.steps) != selection.n_steps
    new_evals = len(view.evals) != selection.n_evals
    panels = dashboard(view) if (new_steps or new_evals) else {}
    out = [replace(selection.sent(view), header_hash=hash(header)), header if new_header else gr.skip()]
    out.append(panels["loss"] if panels else gr.skip())
    out.append(panels["epsilon"] if new_steps else gr.skip())
    for name in ("grad_norms", "grad_norm_evolution", "noise_allocation"):
        out.append(panels[name] if new_steps else gr.skip())
    out.append(panels["generations"] if new_evals else gr.skip())
    return tuple(out)


# The live panels by element id, and the dashboard() entry each one draws.
LIVE_PANELS = {
    "loss-plot": "loss",
    "epsilon-plot": "epsilon",
    "hist-plot": "grad_norms",
    "heatmap-plot": "grad_norm_evolution",
    "noise-plot": "noise_allocation",
}


def live_update(ctx: AppContext, run_id: str, *, steps: int, evals: int, now: float | None = None) -> str | None:
    """The page's live path (page.py): the header and the changed live panels of a running run, as
    JSON text ``{"steps": n, "evals": m, "header": html, "panels": {elem_id: plotly figure}}`` (n, m:
    what the page shows after it; first, for page.py's stream), for a page whose header says
    it shows ``steps`` steps and ``evals`` evaluations of ``run_id``.  ``None`` when only a Gradio
    refresh (``refresh``) can bring the page up to date: the run is gone or no longer running (the
    page may follow another run), or it has new evaluations (the generations table is a Gradio
    component).  Between those moments, which is every step, the page updates itself from this
    and runs no Gradio event (see page.py for why that matters)."""
    from workbench.app.liveplot import plot_value

    try:
        record = ctx.store.get(run_id)
    except RunNotFound:
        return None
    if record.status != "running":
        return None
    view = ctx.views.get(record.id)
    if len(view.evals) != evals:
        return None
    header = _header(view, record, time.time() if now is None else now)
    panels = ""
    if len(view.steps) != steps:
        panels = _memoised(
            view,
            "live",
            lambda: ", ".join(
                f"{json.dumps(elem)}: {plot_value(dashboard(view)[name])}" for elem, name in LIVE_PANELS.items()
            ),
        )
    return (
        f'{{"steps": {len(view.steps)}, "evals": {len(view.evals)}, '
        f'"header": {json.dumps(header)}, "panels": {{{panels}}}}}'
    )


def _header(view: RunView, record, now: float) -> str:
    """The header of a run; a running run's progress as of its latest step, so the header (and the
    browser) changes only when the run does."""
    as_of = view.latest_step.time if view.latest_step is not None and record.status == "running" else now
    return header_html(view, record.status, record.reason, now=as_of)


def _followed(ctx: AppContext, selection: Selection) -> Selection:
    """The selection, switched to a newer active run when it follows and its own run has ended."""
    if selection.follow:
        newest = ctx.newest_active()
        if newest is not None and newest != selection.run_id and _ended_or_missing(ctx, selection.run_id):
            return selection.select(newest)
    return selection


def _ended_or_missing(ctx: AppContext, run_id: str | None) -> bool:
    if run_id is None:
        return True
    try:
        return ctx.store.get(run_id).status not in ("running", "queued")
    except RunNotFound:
        return True


_MEMO: dict[tuple[str, str], tuple[int, Any]] = {}  # (run, what) -> (last seq, value)
_MEMO_LOCK = threading.Lock()


def _memoised(view: RunView, what: str, build):
    """``build()``, once per (run, last event), so several browsers share the work; 16 entries."""
    key = (view.run_id, what)
    with _MEMO_LOCK:
        hit = _MEMO.get(key)
        if hit is not None and hit[0] == view.last_seq:
            return hit[1]
    value = build()
    with _MEMO_LOCK:
        _MEMO[key] = (view.last_seq, value)
        while len(_MEMO) > 16:
            _MEMO.pop(next(iter(_MEMO)))
    return value


def dashboard(view: RunView) -> dict[str, Any]:
    """Every panel of one run, memoised per (run, last event) so several browsers share the work."""
    return _memoised(view, "figures", lambda: _dashboard(view))


def _dashboard(view: RunView) -> dict[str, Any]:
    gens = generations_table(view.evals)
    return {**present.panels(view), "generations": {"headers": gens.headers, "data": gens.rows}}


def header_html(view: RunView, status: str, reason: str | None, *, now: float) -> str:
    """Run, status, a progress bar with ETA, and epsilon spent as a big number."""
    p = progress(view.started, view.latest_step, now)
    name = f" ({html.escape(view.name)})" if view.name else ""
    model = html.escape(str(view.config.get("model", ""))) if view.config else ""
    title = f'<div class="wb-title">Run <b>{html.escape(view.run_id)}</b>{name} {badge(status)}'
    if view.started is not None:
        s = view.started
        title += (
            f"<br><small>{model} on {html.escape(s.device)} · N = {s.dataset_size:,} · q = {s.sample_rate:.3g} · "
            f"σ = {s.noise_multiplier:.3g} · δ = {s.delta:.0e} · {accountant_label(s.accountant)} · "
            f"{relation_text(s.neighboring, s.privacy_unit)}</small>"
        )
        if s.seeded_randomness:
            title += f'<br><b class="wb-seeded" style="color:#b91c1c">⚠ {SEEDED_LABEL} (noise_seed is set)</b>'
    title += "</div>"
    eps = p["epsilon"]
    target = f"<small> of {fmt_eps(p['target_epsilon'])}</small>" if p["target_epsilon"] is not None else ""
    eps_html = f'<div class="wb-eps" id="wb-epsilon">ε = {fmt_eps(eps)}{target}</div>'
    if status == "queued":
        text = "queued: waits for the run on this device to finish"
    elif status == "running" and view.started is None:
        text = "preparing: loading the model and the data…"
    elif status == "running" or view.started is not None:
        text = p["text"] if status == "running" else f"step {p['step']} / {p['planned_steps']} ({p['fraction']:.0%})"
    else:
        text = ""
    bar = f'<div class="wb-bar"><div style="width:{100 * p["fraction"]:.1f}%"></div></div>'
    # what this header (and the panels sent with it) shows, for the page's live path (page.py)
    data = (
        f'data-run="{html.escape(view.run_id)}" data-status="{html.escape(status)}" '
        f'data-steps="{len(view.steps)}" data-evals="{len(view.evals)}"'
    )
    out = f'<div class="wb-header" {data}>{title}{eps_html}{bar}<div class="wb-progress" id="wb-progress">{text}</div>'
    if status in ("failed", "interrupted") and reason:
        out += f'<div class="wb-reason">{html.escape(reason)}</div>'
    return out + "</div>"


def _empty_panels(message: str) -> tuple[Any, ...]:
    from workbench.present import empty_figure

    header = f'<div class="wb-header"><div class="wb-title">{html.escape(message)}</div></div>'
    return (
        header,
        empty_figure("Loss", message),
        empty_figure("Privacy spent ε", message),
        empty_figure("Per-example gradient norms", message),
        empty_figure("Gradient-norm distribution over steps", message),
        empty_figure("Noise allocation per LoRA module", message, height=380),
        {"headers": ["step", "prompt", "output"], "data": []},
    )


# -- layout ---------------------------------------------------------------------------------------


@dataclass
class TrainControls:
    components: dict[str, Any]
    outputs: list[Any]
    refresh: Any  # (selection) -> (selection, *panels): chain it after anything that changes the selection


def build(ctx: AppContext, plan: PlanControls, selection: Any) -> TrainControls:
    """Lay out the Train tab and wire Start, Stop and the dashboard refresh; call inside ``gr.Tab``."""
    import gradio as gr
    import plotly.graph_objects as go

    from workbench.app.liveplot import live_plot, plot_value

    base = ctx_base(ctx)
    help_ = {k: h for k, _, h in RunConfig.help_table()}
    c: dict[str, Any] = {}
    with gr.Row(equal_height=False):
        with gr.Column(scale=1, min_width=280):
            c["model"] = gr.Dropdown(
                ["default", "tiny"],
                value=base.model,
                allow_custom_value=True,
                label="Model",
                info=help_["model"],
                elem_id="model",
            )
            c["name"] = gr.Textbox(base.name or "", label="Run name (optional)", elem_id="run-name")
            with gr.Accordion("LoRA and optimiser", open=False):
                with gr.Row():
                    c["lora_r"] = gr.Number(base.lora_r, label="LoRA r", precision=0, minimum=1)
                    c["lora_alpha"] = gr.Number(base.lora_alpha, label="LoRA alpha")
                    c["lora_dropout"] = gr.Number(base.lora_dropout, label="LoRA dropout", minimum=0)
                c["lora_target_modules"] = gr.Textbox(
                    base.lora_target_modules, label="LoRA target modules", info=help_["lora_target_modules"]
                )
                with gr.Row():
                    c["optimizer"] = gr.Dropdown(["adamw", "sgd"], value=base.optimizer, label="Optimizer")
                    c["learning_rate"] = gr.Number(base.learning_rate, label="Learning rate")
                with gr.Row():
                    c["physical_batch_size"] = gr.Number(
                        base.physical_batch_size,
                        label="Physical batch",
                        precision=0,
                        minimum=1,
                        info=help_["physical_batch_size"],
                    )
                    c["eval_every"] = gr.Number(
                        base.eval_every, label="Evaluate every (0 = auto)", precision=0, minimum=0
                    )
                    c["seed"] = gr.Number(base.seed, label="Seed", precision=0, info=help_["seed"])
            gr.Markdown("Data and privacy settings come from the **Plan** tab.")
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
            header = gr.HTML(elem_id="run-header")
            # live panels: one Plotly div each, updated in place (workbench/app/liveplot.py)
            with gr.Row():
                loss = live_plot("loss-plot", height=320)  # the figures' heights (workbench.present)
                eps = live_plot("epsilon-plot", height=320)
            with gr.Row():
                hist = live_plot("hist-plot", height=320)
                heat = live_plot("heatmap-plot", height=320)
            noise = live_plot("noise-plot", height=380)
            gens = gr.Dataframe(
                headers=["step", "prompt", "output"],
                label="Sample generations at each evaluation",
                wrap=True,
                interactive=False,
                elem_id="generations",
                max_height=320,
                column_widths=["9%", "51%", "40%"],
            )
    # clicked by the page's poller when the run store changed (hidden: workbench/app/page.py)
    refresh_btn = gr.Button("Refresh dashboard", elem_id=REFRESH_ELEM_ID, elem_classes="wb-hidden")
    outputs = [selection, header, loss, eps, hist, heat, noise, gens]

    def tick(sel):
        return tuple(plot_value(x) if isinstance(x, go.Figure) else x for x in refresh(ctx, sel))

    refresh_btn.click(
        tick,
        selection,
        outputs,
        api_visibility="private",
        show_progress="hidden",
        concurrency_limit=8,
        trigger_mode="always_last",
    )
    inputs = plan.inputs + [c[n] for n in forms.TRAIN_FIELDS]

    def on_start(sel, *values):
        names = forms.PLAN_FIELDS + forms.TRAIN_FIELDS
        return start_run(ctx, sel, dict(zip(names, values)))

    start.click(
        on_start, [selection] + inputs, [selection, message], api_visibility="private", concurrency_limit=1
    ).then(tick, selection, outputs, api_visibility="private", show_progress="hidden")
    stop.click(lambda sel: stop_run(ctx, sel), selection, message, api_visibility="private")
    return TrainControls(c, outputs, tick)
