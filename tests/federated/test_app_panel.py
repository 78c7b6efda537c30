"""The app's Federated panel (workbench/app/federated.py): builds, and a bad setting is one line, nothing stored."""

import pytest

pytest.importorskip("gradio")

from conftest import app_values  # noqa: E402

from workbench.app import federated  # noqa: E402
from workbench.app.state import AppContext  # noqa: E402
from workbench.store.runs import RunStore  # noqa: E402


def test_the_panel_builds_and_wires():
    import gradio as gr

    ctx = AppContext(store=RunStore())
    with gr.Blocks():
        panel = federated.build(ctx)
        box = gr.Number(16, label="batch")
        federated.wire(ctx, panel, {"batch_size": box})
    assert {"clients", "rounds", "clients_per_round", "partition", "privacy_level", "ffa"} <= set(panel)


def test_a_bad_setting_is_one_line_and_stores_nothing():
    ctx = AppContext(store=RunStore())
    job = federated.start(
        ctx, app_values(), clients=3, rounds=2, clients_per_round=5, partition="by-user", privacy_level="client"
    )
    job.thread.join(timeout=30)
    assert job.summary is None and "--clients-per-round 5 must be between 1" in job.text()
    assert ctx.store.list() == []


def test_the_app_has_a_federated_tab_except_in_workshop_mode():
    import gradio as gr

    ctx = AppContext(store=RunStore())
    with gr.Blocks(), gr.Tabs():
        panel = federated.mount(ctx, {"batch_size": gr.Number(16, label="batch")})
    assert panel is not None and panel["start"] is not None
    ctx.workshop = object()  # workshop mode: runs go through its queue and owner rules, which this tab bypasses
    with gr.Blocks(), gr.Tabs():
        assert federated.mount(ctx, {}) is None


def test_the_built_app_mounts_the_federated_tab():
    from workbench.app import build_app

    app = build_app(store=RunStore())
    tabs = [b for b in app.blocks.values() if type(b).__name__ == "Tab"]
    assert "Federated" in [t.label for t in tabs]
