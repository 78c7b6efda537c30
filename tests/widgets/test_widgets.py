"""The notebook widgets in plain Python: build them, feed events, press buttons, check the figures.

No browser and no kernel: ipywidgets and plotly FigureWidgets work without a frontend, so every
assertion reads the widget's own state (trace data, layout, button flags) after the handlers ran.
Most tests feed synthetic events (fast, deterministic); one trains the tiny model for real.
"""

from __future__ import annotations

import math
import threading
import time

import numpy as np
import pytest

pytest.importorskip("ipywidgets")
pytest.importorskip("anywidget")  # plotly's FigureWidget needs it

import plotly.graph_objects as go  # noqa: E402
from factories import TINY_RUN

from workbench.config import RunConfig  # noqa: E402
from workbench.events import GRAD_NORM_BIN_EDGES, EvalMetrics, RunEnded, RunStarted, StepMetrics  # noqa: E402
from workbench.session import Session  # noqa: E402
from workbench.store.runs import RunStore  # noqa: E402
from workbench.widgets import Dashboard, PlanSettings, PrivacyPlanner, compare  # noqa: E402
from workbench.widgets._live import Refresher, sync_figure  # noqa: E402

MODULES = ["base_model.model.model.layers.0.self_attn.q_proj", "base_model.model.model.layers.0.self_attn.v_proj"]
BINS = len(GRAD_NORM_BIN_EDGES) - 1


# -- synthetic events ------------------------------------------------------------------------------


def started(run_id: str, *, steps: int = 10, clip: float = 1.0, sigma: float = 1.0, **config) -> RunStarted:
    cfg = RunConfig(model="tiny", max_steps=steps, noise_multiplier=sigma, max_grad_norm=clip, **config).to_dict()
    return RunStarted(
        run_id=run_id,
        config=cfg,
        dataset_size=1000,
        sample_rate=0.032,
        noise_multiplier=sigma,
        delta=1e-5,
        planned_steps=steps,
        accountant="pld",
        planned_epsilon=[(t, 0.2 * t) for t in range(1, steps + 1)],
        target_epsilon=None,
        modules=MODULES,
        trainable_parameters=1024,
        device="cpu",
        model_name="tiny",
    )


def step(run_id: str, t: int, *, loss: float | None = None, sigma: float = 1.0) -> StepMetrics:
    hist = [0] * BINS
    hist[t % 10] = 20  # below C
    hist[15] = 12  # some examples above C (bin 1.5 C)
    return StepMetrics(
        run_id=run_id,
        step=t,
        loss=loss if loss is not None else 3.0 / t,
        learning_rate=1e-3,
        batch_size=32,
        epsilon=0.2 * t if sigma > 0 else math.inf,
        grad_norm_hist=hist,
        grad_norm_max=1.5,
        clipped_fraction=12 / 32,
        module_grad_norm={m: 0.5 * t for m in MODULES},
        module_noise_std={m: sigma for m in MODULES},
        step_time=0.01,
        tokens_per_second=1000.0,
        tokens=10,
    )


def evaluation(run_id: str, t: int, *, accuracy: float = 0.5) -> EvalMetrics:
    return EvalMetrics(
        run_id=run_id,
        step=t,
        val_loss=2.0 / t,
        perplexity=math.exp(2.0 / t),
        accuracy=accuracy,
        generations=[{"prompt": "My bill is wrong", "output": "Department: Billing"}],
    )


def ended(run_id: str, *, status: str = "finished", steps: int = 10) -> RunEnded:
    return RunEnded(
        run_id=run_id,
        status=status,
        reason=f"completed {steps} planned steps",
        summary={"epsilon": 0.2 * steps, "steps": steps},
    )


def stored_run(
    store: RunStore,
    run_id: str,
    *,
    steps: int = 10,
    finished: bool = True,
    name: str | None = None,
    sigma: float = 1.0,
    accuracy: float = 0.5,
    **config,
) -> str:
    ev = started(run_id, steps=steps, sigma=sigma, **config)
    store.create_run(run_id, config=ev.config, name=name, status="running")
    store.append(ev)
    for t in range(1, steps + 1):
        store.append(step(run_id, t, sigma=sigma))
    if finished:
        store.append(evaluation(run_id, steps, accuracy=accuracy))
        store.append(ended(run_id, steps=steps))
    return run_id


def xs(fig: go.FigureWidget, name: str) -> np.ndarray:
    trace = next(t for t in fig.data if t.name == name)
    return np.asarray(trace.x, dtype=float)


def wait_for(condition, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.02)


@pytest.fixture
def store(tmp_path) -> RunStore:
    return RunStore(tmp_path / "home")


# -- figure plumbing ---------------------------------------------------------------------------------


def test_sync_figure_updates_in_place_and_replaces_when_the_shape_changes():
    widget = go.FigureWidget(go.Figure(go.Scatter(x=[1, 2], y=[1, 2], name="a")))
    trace = widget.data[0]
    sync_figure(widget, go.Figure(go.Scatter(x=[1, 2, 3], y=[1, 2, 4], name="a"), layout=dict(title="new")))
    assert widget.data[0] is trace, "same trace kinds: updated in place, no trace churn"
    assert list(widget.data[0].x) == [1, 2, 3] and widget.layout.title.text == "new"
    sync_figure(widget, go.Figure([go.Bar(x=[1], y=[2]), go.Scatter(x=[0], y=[0])]))
    assert [t.type for t in widget.data] == ["bar", "scatter"]
    sync_figure(widget, go.Figure(layout=dict(annotations=[dict(text="empty")])))
    assert len(widget.data) == 0 and widget.layout.annotations[0].text == "empty"
    assert widget.layout.title.text is None, "layout keys the new figure lacks are cleared"


def test_refresher_batches_pokes_and_ends_with_a_final_refresh():
    calls, done = [], threading.Event()
    r = Refresher(lambda: calls.append(time.monotonic()), interval=0.1, finished=done.is_set)
    for _ in range(50):  # a burst of events within one interval
        r.poke()
        time.sleep(0.002)
    time.sleep(0.3)
    assert 1 <= len(calls) <= 3, f"50 pokes in 0.1 s should give one or two redraws, got {len(calls)}"
    done.set()
    r.poke()
    r.join(2)
    assert not r.alive
    gaps = np.diff(calls[:-1])  # the last call is the final look after `finished`, right after the one before
    assert (gaps >= 0.09).all(), "never more than one redraw per interval while running"


# -- Dashboard ---------------------------------------------------------------------------------------


def test_dashboard_of_a_stored_run_shows_every_panel(store):
    run = stored_run(store, "20260101-000000-aaaaaa", steps=12, name="demo run")
    dash = Dashboard(run_id=run[:-2], store=store)  # a unique prefix is enough
    assert dash.run_id == run
    f = dash.figures
    assert xs(f["loss"], "train (per step)").max() == 12
    assert xs(f["loss"], "validation").tolist() == [12]
    assert xs(f["epsilon"], "spent").max() == 12 and xs(f["epsilon"], "planned").max() == 12
    bars = f["grad_norms"].data[0]
    assert sum(bars.y) == 32 and "step 12" in f["grad_norms"].layout.title.text
    assert any(s.x0 == 1.0 for s in f["grad_norms"].layout.shapes), "the clip line at C"
    heat = f["grad_norm_evolution"].data[0]
    assert heat.type == "heatmap" and np.asarray(heat.z).shape == (BINS, 12)
    noise = f["noise_allocation"].data
    assert [t.name for t in noise] == ["SNR = ‖S_l‖ / (√d_l σ_l C_l)", "noise std per coordinate σ_l C_l"]
    assert list(noise[1].x) == ["layers.0.q_proj", "layers.0.v_proj"]
    assert dash.progress_bar.value == 1.0 and "finished" in dash.status.value
    assert "Department: Billing" in dash.generations.value
    assert "demo run" in dash.title.value
    assert not dash.start_button.disabled and dash.stop_button.disabled
    assert dash._refresher is None, "a finished run needs no refresher thread"


def test_dashboard_follows_a_run_that_another_process_writes(store):
    run = stored_run(store, "20260101-000000-bbbbbb", steps=3, finished=False)
    dash = Dashboard(run_id=run, store=store, interval=0.05)
    assert xs(dash.figures["loss"], "train (per step)").max() == 3
    assert dash.running and dash.stop_button.disabled, "a run of another process cannot be stopped from here"
    for t in range(4, 9):
        store.append(step(run, t))
    wait_for(lambda: xs(dash.figures["loss"], "train (per step)").max() == 8)
    store.append(ended(run, steps=8))
    dash._refresher.join(5)
    assert not dash._refresher.alive and "finished" in dash.status.value


def _fake_train(steps: int, pause: float = 0.0):
    """A stand-in for Session._train: emits a run's events, honours stop requests."""

    def train(self: Session) -> None:
        self._emit(started(self.run_id, steps=steps))
        for t in range(1, steps + 1):
            if self._stop.is_set():
                self._end("stopped", f"stopped by request after step {t - 1}", {"steps": t - 1})
                return
            self._emit(step(self.run_id, t))
            time.sleep(pause)
        self._emit(evaluation(self.run_id, steps))
        self._end("finished", f"completed {steps} planned steps", {"steps": steps})

    return train


def test_start_button_trains_on_a_background_thread_with_batched_redraws(store, monkeypatch):
    monkeypatch.setattr(Session, "_train", _fake_train(steps=60, pause=0.005))
    dash = Dashboard(model="tiny", max_steps=60, noise_multiplier=1.0, store=store, interval=0.1)
    assert dash.run_id is None and not dash.start_button.disabled and dash.stop_button.disabled
    assert dash.figures["loss"].layout.annotations[0].text == "no steps yet"
    redraws = []
    original = dash.refresh
    dash.refresh = lambda: redraws.append(original()) or redraws[-1]
    dash.start_button.click()
    assert dash.run_id is not None and dash.session.run_id == dash.run_id
    summary = dash.wait(20)
    assert summary["status"] == "finished"
    dash._refresher.join(5)
    assert xs(dash.figures["loss"], "train (per step)").max() == 60
    assert xs(dash.figures["epsilon"], "spent").max() == 60
    assert sum(redraws) < 30, f"60 steps in ~0.3 s must not redraw on every event ({sum(redraws)} redraws)"
    assert "finished" in dash.status.value and dash.stop_button.disabled and not dash.start_button.disabled
    assert store.get(dash.run_id).status == "finished", "the run store subscribed as usual"


def test_stop_button_stops_the_run(store, monkeypatch):
    monkeypatch.setattr(Session, "_train", _fake_train(steps=10_000, pause=0.01))
    dash = Dashboard(model="tiny", max_steps=10_000, noise_multiplier=1.0, store=store, interval=0.05)
    dash.start()
    wait_for(lambda: dash.view.latest_step is not None and not dash.stop_button.disabled)
    assert dash.start_button.disabled, "no second run while one trains"
    dash.stop_button.click()
    dash.wait(10)
    assert dash.session.status == "stopped" and "stopped" in dash.status.value
    assert dash.view.latest_step.step < 10_000
    assert not dash.start_button.disabled
    first = dash.run_id
    dash.start_button.click()  # Start again: a fresh run with the same settings
    assert dash.run_id != first
    dash.stop()
    dash.wait(10)


def test_dashboard_attaches_to_a_session_started_elsewhere(store, monkeypatch):
    monkeypatch.setattr(Session, "_train", _fake_train(steps=5))
    session = Session(RunConfig(model="tiny", max_steps=5, noise_multiplier=1.0), store=store)
    session.start()
    session.wait(10)
    dash = Dashboard(session=session)  # events emitted before attaching are read from session.events
    assert xs(dash.figures["loss"], "train (per step)").max() == 5
    assert "finished" in dash.status.value


def test_dashboard_rejects_ambiguous_sources(store):
    with pytest.raises(ValueError, match="not several"):
        Dashboard(model="tiny", run_id="x", store=store)
    with pytest.raises(KeyError, match="no run with id"):
        Dashboard(run_id="does-not-exist", store=store)


def test_dashboard_trains_the_tiny_model_for_real(store):
    """The whole path: Start -> Session thread -> engine events -> panels (a few seconds on a CPU)."""
    settings = dict(TINY_RUN, max_steps=3, batch_size=8, noise_multiplier=1.0, generate_max_new_tokens=4)
    dash = Dashboard(**settings, store=store, interval=0.1)
    dash.start_button.click()
    summary = dash.wait(300)
    assert summary["status"] == "finished", summary
    assert xs(dash.figures["loss"], "train (per step)").max() == 3
    assert xs(dash.figures["epsilon"], "spent").max() == 3
    assert sum(dash.figures["grad_norms"].data[0].y) > 0
    assert len(dash.figures["noise_allocation"].data[0].x) == len(dash.view.started.modules)


# -- PrivacyPlanner ----------------------------------------------------------------------------------


def test_planner_draws_a_curve_per_accountant_and_follows_the_sliders():
    from workbench import privacy

    planner = PrivacyPlanner(accountants=("rdp", "edgeworth"), background=False, steps=500)
    fig = planner.figure
    assert {t.name for t in fig.data} == {"RDP", "Edgeworth (approximation)"}
    eps_rdp = planner.result.epsilon["rdp"]
    assert eps_rdp == pytest.approx(
        privacy.epsilon(noise_multiplier=1.0, sample_rate=32 / 10_000, steps=500, delta=1e-5, accountant="rdp"),
        rel=1e-9,
    )
    before = np.asarray(fig.data[0].y).max()
    planner.noise_multiplier.value = 2.0  # the observer recomputes and redraws
    assert np.asarray(fig.data[0].y).max() < before, "more noise, less epsilon"
    planner.steps.value = 1000
    assert np.asarray(fig.data[0].x).max() == 1000
    planner.max_grad_norm.value = 10**0.5
    assert f"{2.0 * 10**0.5:.4g}" in planner.example_level.value, "noise std sigma*C on the sum"


def test_planner_target_mode_reports_the_noise_each_accountant_needs():
    from workbench import privacy

    planner = PrivacyPlanner(
        PlanSettings(
            mode="target ε → noise", target_epsilon=4.0, accountants=("pld", "rdp"), steps=200, batch_size=128
        ),
        background=False,
    )
    r = planner.result
    expected = privacy.calibrate(target_epsilon=4.0, sample_rate=128 / 10_000, steps=200, delta=1e-5, accountant="pld")
    assert r.sigma_needed["pld"] == pytest.approx(expected)
    assert r.sigma_needed["rdp"] >= r.sigma_needed["pld"], "the looser accountant needs more noise"
    assert r.noise_multiplier == r.sigma_needed["pld"], "the curves use the selected accountant's noise"
    assert r.epsilon["pld"] <= 4.0 * (1 + 1e-9), "calibrated noise never overshoots the target"
    assert any(s.y0 == pytest.approx(4.0) for s in planner.figure.layout.shapes), "the target line"
    assert f"{expected:.4g}" in planner.example_level.value


def test_planner_background_worker_draws_only_the_newest_settings():
    planner = PrivacyPlanner(accountants=("rdp",), steps=100)
    for sigma in (0.8, 1.2, 1.6, 2.4):
        planner.noise_multiplier.value = sigma  # each schedules; stale ones are dropped
    result = planner.wait(30)
    assert result.settings.noise_multiplier == 2.4 and result.noise_multiplier == 2.4
    assert "computing" not in planner.status.value


def test_planner_reports_bad_settings_as_a_message():
    planner = PrivacyPlanner(PlanSettings(accountants=("rdp",), dataset_size=1000, batch_size=64), background=False)
    assert "not below 1/N" not in planner.status.value
    planner.delta.value = 1e-3
    assert "not below 1/N" in planner.status.value
    planner.mode.value = "target ε → noise"
    assert planner.noise_multiplier.layout.display == "none"
    assert planner.target_epsilon.layout.display is None and planner.steps.layout.display is None


# -- compare -----------------------------------------------------------------------------------------


def test_compare_overlays_runs_and_lists_the_settings_that_differ(store):
    a = stored_run(store, "20260101-000000-cccccc", steps=6, name="C=0.5", sigma=1.0, accuracy=0.4)
    b = stored_run(store, "20260101-000000-dddddd", steps=8, name="C=2", sigma=2.0, accuracy=0.7, learning_rate=1e-2)
    cmp = compare([a, b], store=store)
    assert {t.name for t in cmp.figures["loss"].data} >= {"C=0.5", "C=2"}
    assert [t.name for t in cmp.figures["epsilon"].data] == ["C=0.5", "C=2"]
    scatter = cmp.figures["privacy_utility"].data
    assert sorted(float(t.y[0]) for t in scatter) == [0.4, 0.7]
    keys = {row[0] for row in cmp.table.rows}
    assert {"noise_multiplier", "learning_rate", "max_steps"} <= keys
    assert "learning_rate" in cmp.settings.value
    store.append(step(a, 7))  # refresh picks up new events
    cmp.refresh()
    assert xs(cmp.figures["epsilon"], "C=0.5").max() == 7


def test_compare_needs_runs(store):
    with pytest.raises(ValueError, match="at least one run"):
        compare([], store=store)
