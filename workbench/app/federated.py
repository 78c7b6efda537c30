"""The app's Federated tab (``mount``, in the app's tabs; not in workshop mode, where runs go through the
workshop's fair queue and owner rules, which a federated run does not): K clients, R rounds, M per round, the layout, the privacy level and FFA-LoRA, and "Start federated run".

The run is the one ``workbench federate`` runs (workbench/federated: Flower's simulation engine), on a background
thread of the app's process, with the Plan and Train tabs' current settings as its config
(``forms.config_from_values``, as Start). It is stored like any run, so the Runs tab, Compare and the live
dashboard (the rounds as its steps) show it; its per-client table is in its summary.
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

log = logging.getLogger("workbench.app")

LEVELS = [("client: a whole clinic (DP-FedAvg)", "client"), ("record: each clinic's DP-SGD", "record")]
LEVELS.append(("subject: a person across clinics (privacy unit user)", "subject"))


@dataclass
class FederatedJob:
    """One federated run on a background thread: its settings, then its summary or its error message."""

    config: RunConfig
    settings: dict[str, Any]
    summary: dict | None = None
    error: str | None = None
    thread: threading.Thread | None = field(default=None, repr=False)

    def start(self, ctx: AppContext) -> None:
        def run() -> None:
            from workbench.federated import federate

            try:
                self.summary = federate(self.config, store=ctx.store, **self.settings)
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
            f"Federated run {s['run_id']}: {s['status']} ({s['reason']}); {s['privacy_level']}-level epsilon "
            f"{eps:.3g}. Its per-client table is in the Runs tab's summary."
            if isinstance(eps, float)
            else f"Federated run {s['run_id']}: {s['status']} ({s['reason']})."
        )


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
    return dict(
        clients=clients,
        rounds=rounds,
        clients_per_round=per_round,
        partition=partition,
        privacy_level=level,
        ffa=ffa,
        start=start_button,
        status=status,
    )


def wire(ctx: AppContext, panel: dict[str, Any], components: dict[str, Any]) -> None:
    """Start reads the Plan and Train controls (``components``, by field name) and the panel's."""
    names = list(components)
    knobs = ["clients", "rounds", "clients_per_round", "partition", "privacy_level", "ffa"]

    def on_start(*args: Any) -> str:
        values = dict(zip(names, args[: len(names)]))
        settings = dict(zip(knobs, args[len(names) :]))
        for key in ("clients", "rounds", "clients_per_round"):
            settings[key] = int(settings[key] or 0)
        try:
            job = start(ctx, values, **settings)
        except Exception as err:  # noqa: BLE001 - a bad setting is one line in the panel
            return f"**Federated run not started:** {error_text(err)}"
        job.thread.join(timeout=2.0)  # bad settings fail at once, before anything is stored
        return job.text()

    panel["start"].click(
        on_start,
        [*components.values(), *(panel[k] for k in knobs)],
        panel["status"],
        concurrency_limit=1,
        api_visibility="private",
    )  # never on the API: it trains (tests/app/test_app.py::test_api_exposes_no_training_or_deletion)
