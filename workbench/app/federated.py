"""The app's Federated tab (``mount``, in the app's tabs; not in workshop mode, where runs go through the
workshop's fair queue and owner rules, which a federated run does not): K clients, R rounds, M per round, the layout, the privacy level and FFA-LoRA, and "Start federated run".

The run is the one ``workbench federate`` runs (workbench/federated: Flower's simulation engine), on a background
thread of the app's process, with the Plan and Train tabs' current settings as its config
(``forms.config_from_values``, as Start). It is stored like any run, so the Runs tab, Compare and the live
dashboard (the rounds as its steps) show it. The tab's table shows each client after the latest round (the
``ClientMetrics`` event each round emits, read back from the store, so a finished run shows the same table), updated
by a ``gr.Timer`` that ticks only while the tab's run trains; telemetry columns are marked (federated/table.py).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any

from workbench.app import forms
from workbench.app.common import error_text
from workbench.app.state import AppContext
from workbench.config import RunConfig
from workbench.events import Event
from workbench.federated.table import COLUMNS, TELEMETRY_CAPTION, stored_table

log = logging.getLogger("workbench.app")

LEVELS = [("client: a whole clinic (DP-FedAvg)", "client"), ("record: each clinic's DP-SGD", "record")]
LEVELS.append(("subject: a person across clinics (privacy unit user)", "subject"))


@dataclass
class FederatedJob:
    """One federated run on a background thread: its options (FederatedOptions' fields, from the panel), then its
    summary or its error message."""

    config: RunConfig
    settings: dict[str, Any]
    summary: dict | None = None
    error: str | None = None
    run_id: str | None = None  # from the run's RunStarted (the event bus), for the table
    thread: threading.Thread | None = field(default=None, repr=False)

    def on_event(self, event: Event) -> None:
        """A subscriber of the run's events: the run's id once it is stored."""
        if event.kind == "run_started":
            self.run_id = event.run_id

    @property
    def done(self) -> bool:
        return self.summary is not None or self.error is not None

    def start(self, ctx: AppContext) -> None:
        def run() -> None:
            from workbench.federated import FederatedOptions, federate

            try:  # bad options: one message in the panel (FederatedOptions checks them), nothing stored
                options = FederatedOptions(**self.settings)
                self.summary = federate(self.config, options, store=ctx.store, subscribers=(self.on_event,))
            except Exception as err:  # noqa: BLE001 - shown in the panel, never a traceback
                self.error = error_text(err)

        self.thread = threading.Thread(target=run, name="workbench-federated", daemon=True)
        self.thread.start()

    def text(self) -> str:
        """The panel's status line."""
        if self.error is not None:
            return f"**Federated run not started:** {self.error}"
        if self.summary is None:
            s = self.settings
            return f"Federated run under way: {s['clients']} clients, {s['rounds']} rounds (the Runs tab follows it)."
        s = self.summary
        eps = s.get("epsilon")
        return (
            f"Federated run {s['run_id']}: {s['status']} ({s['reason']}); {s['privacy_level']}-level epsilon {eps:.3g}."
            if isinstance(eps, float)
            else f"Federated run {s['run_id']}: {s['status']} ({s['reason']})."
        )


EMPTY_TABLE = {"headers": [h for _, h in COLUMNS], "data": []}


def update(ctx: AppContext, job: FederatedJob | None) -> tuple[str, dict, bool]:
    """The tab's live state for ``job``: its status line, the per-client table after the run's latest round (from
    the store: live or finished, the same rows; empty before the first round) as a Dataframe value, and whether
    the tab should keep polling (the run is still under way)."""
    if job is None:
        return "", EMPTY_TABLE, False
    shown = stored_table(ctx.store, job.run_id) if job.run_id is not None else None
    value = EMPTY_TABLE if shown is None else {"headers": shown[0], "data": shown[1]}
    return job.text(), value, not job.done


def start(ctx: AppContext, values: dict[str, Any], **settings: Any) -> FederatedJob:
    """A job for the controls' ``values`` (Plan and Train) and the panel's ``settings``, started."""
    job = FederatedJob(forms.config_from_values(values, base=forms.ctx_base(ctx)), settings)
    job.start(ctx)
    return job


def mount(ctx: AppContext, components: dict[str, Any]) -> dict[str, Any] | None:
    """The Federated tab, inside the app's ``gr.Tabs``, its Start reading ``components`` (the Plan and Train
    controls, by field name); None in workshop mode (module docstring)."""
    if ctx.workshop is not None:
        return None
    import gradio as gr

    with gr.Tab("Federated", id="federated"):
        panel = build(ctx, open=True)
    wire(ctx, panel, components)
    return panel


def build(ctx: AppContext, *, open: bool = False) -> dict[str, Any]:
    """The panel's controls, in the Blocks being built (an Accordion); returns them by name for ``wire``."""
    import gradio as gr

    with gr.Accordion("Federated (Flower): several data holders, one adapter", open=open):
        with gr.Row():
            clients = gr.Number(10, label="clients K", precision=0, minimum=1)
            rounds = gr.Number(20, label="rounds R", precision=0, minimum=1)
            per_round = gr.Number(4, label="clients per round M (each sampled at M/K)", precision=0, minimum=1)
        with gr.Row():
            partition = gr.Textbox("by-user", label="layout: by-user, by-column:NAME or dirichlet:ALPHA")
            level = gr.Dropdown(LEVELS, value="client", label="privacy level")
            ffa = gr.Checkbox(False, label="FFA-LoRA (A frozen, only B trained)")
        start_button = gr.Button("Start federated run")
        status = gr.Markdown()
        table = gr.Dataframe(value=EMPTY_TABLE, label="Clients after the latest round", interactive=False, wrap=True)
        gr.Markdown(TELEMETRY_CAPTION)
        timer = gr.Timer(2.0, active=False)  # ticks only while the tab's run trains
        job = gr.State(None)
    return dict(
        clients=clients,
        rounds=rounds,
        clients_per_round=per_round,
        partition=partition,
        privacy_level=level,
        ffa=ffa,
        start=start_button,
        status=status,
        table=table,
        timer=timer,
        job=job,
    )


def wire(ctx: AppContext, panel: dict[str, Any], components: dict[str, Any]) -> None:
    """Start reads the Plan and Train controls (``components``, by field name) and the panel's."""
    names = list(components)
    knobs = ["clients", "rounds", "clients_per_round", "partition", "privacy_level", "ffa"]

    import gradio as gr

    def on_start(*args: Any):
        values = dict(zip(names, args[: len(names)]))
        settings = dict(zip(knobs, args[len(names) :]))
        for key in ("clients", "rounds", "clients_per_round"):
            settings[key] = int(settings[key] or 0)
        try:
            job = start(ctx, values, **settings)
        except Exception as err:  # noqa: BLE001 - a bad setting is one line in the panel
            return None, f"**Federated run not started:** {error_text(err)}", EMPTY_TABLE, gr.Timer(active=False)
        job.thread.join(timeout=2.0)  # bad settings fail at once, before anything is stored
        text, table, running = update(ctx, job)
        return job, text, table, gr.Timer(active=running)

    def on_tick(job: FederatedJob | None):
        text, table, running = update(ctx, job)
        return text, table, gr.Timer(active=running)

    panel["start"].click(
        on_start,
        [*components.values(), *(panel[k] for k in knobs)],
        [panel["job"], panel["status"], panel["table"], panel["timer"]],
        concurrency_limit=1,
        api_visibility="private",
    )  # never on the API: it trains (tests/app/test_app.py::test_api_exposes_no_training_or_deletion)
    panel["timer"].tick(
        on_tick,
        panel["job"],
        [panel["status"], panel["table"], panel["timer"]],
        api_visibility="private",
        show_progress="hidden",
    )
