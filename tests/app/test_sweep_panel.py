"""The Plan tab's Sweep panel (workbench/app/sweep_panel.py), the default names of the Train tab's runs, and opening
a compared run from the Compare tab: the callbacks called directly, with the tiny model where something trains."""

from __future__ import annotations

import time

import pytest
from factories import fake_run

gr = pytest.importorskip("gradio")

from conftest import app_values as values  # noqa: E402

from workbench.app import compare as compare_tab  # noqa: E402
from workbench.app import runs as runs_tab  # noqa: E402
from workbench.app import sweep_panel  # noqa: E402
from workbench.app import train as train_tab  # noqa: E402
from workbench.app.state import Selection  # noqa: E402
from workbench.present.sweeps import cost_line  # noqa: E402
from workbench.store.sweeps import SweepStore  # noqa: E402

NO_KNOB = ("", "")
SIGMA = dict(privacy_mode="sigma", noise_multiplier=1.0, max_steps=2)  # no calibration: fast
QUICK = {"generate_max_new_tokens": 0, "eval_max_examples": 16}  # the app's preset: a short evaluation, no generation


def test_the_panel_shows_the_grid_and_its_total_privacy_cost_before_anything_trains(ctx):
    from workbench.sweeps import planned_cost

    text, error = sweep_panel.preview(ctx, values(max_steps=3), [("target_epsilon", "4, 8"), NO_KNOB], 2)
    assert error == ""
    assert text.startswith("**4 runs** = target_epsilon (2 values) × 2 seeds: `eps4-s0`, `eps4-s1`, `eps8-s0`")
    req = sweep_panel.request(ctx, values(max_steps=3), [("target_epsilon", "4, 8"), NO_KNOB], 2)
    cost = planned_cost(req.base, req.members, sizes=sweep_panel._sizes)
    assert cost.runs == 4 and cost.per_run == 8.0 and 8.0 < cost.epsilon < 4 * 8.0
    assert cost_line(cost) in text and "PLD composition" in text
    # a noise sweep from the Plan tab's target mode: the runs are not capped by the target
    req = sweep_panel.request(ctx, values(max_steps=3), [("noise_multiplier", "0.5, 1"), ("lora_r", "4")], 1)
    assert req.base.target_epsilon is None and [label for label, _ in req.members] == ["sigma0.5-r4", "sigma1-r4"]
    assert ctx.store.list() == [] and SweepStore(ctx.store).list() == []  # a preview stores nothing


@pytest.mark.parametrize(
    "knobs, seeds, message",
    [
        ([("lora_r", "4, x"), NO_KNOB], 1, "lora_r='x'"),
        ([("learning_rate", ""), NO_KNOB], 1, "'learning_rate' has no values"),
        ([("bogus", "1, 2"), NO_KNOB], 1, "unknown config key 'bogus'"),
        ([("", "1, 2"), NO_KNOB], 1, "have no setting"),
        ([NO_KNOB, NO_KNOB], 1, "the grid is empty"),
        ([("lora_r", "4, 8"), NO_KNOB], 0, "seeds must be a whole number"),
        ([("learning_rate", "1,2,3,4,5,6,7"), ("lora_r", "1,2,3,4,5,6,7")], 1, "at most 48"),
        ([("batch_size", "8, 5000"), NO_KNOB], 1, "combination B5000"),
    ],
)
def test_bad_sweep_values_give_a_message_beside_the_panel_and_store_nothing(ctx, knobs, seeds, message):
    text, error = sweep_panel.preview(ctx, values(**SIGMA), knobs, seeds)
    assert text == "" and error.startswith("⚠️") and message in error and "Traceback" not in error
    error, text, line = sweep_panel.start(ctx, values(**SIGMA), knobs, seeds)
    assert error.startswith("⚠️") and message in error and text == line == ""
    assert ctx.store.list() == [] and SweepStore(ctx.store).list() == [] and ctx.sweep_jobs == {}


def test_a_sweep_started_from_the_panel_trains_in_the_background_and_shows_everywhere(ctx):
    ctx.defaults.update(QUICK)
    error, text, line = sweep_panel.start(ctx, values(**SIGMA), [("learning_rate", "0.001, 0.002"), NO_KNOB], 1, "lr")
    assert error == "" and text.startswith("**2 runs** = learning_rate (2 values): `lr0.001`, `lr0.002`")
    assert "**Privacy**: 2 runs" in text and "Started sweep **lr**: 2 runs" in line and "sweep lr: 0 of 2" in line
    job = ctx.sweep_jobs["lr"]
    assert job.wait(240) and job.error == ""
    assert sweep_panel.progress_text(ctx) == "sweep lr: 2 of 2 runs done (2 finished)"
    assert not sweep_panel.running(ctx)
    rec = SweepStore(ctx.store).get("lr")
    assert [m.label for m in rec.members] == ["lr0.001", "lr0.002"]
    runs = {r.id: r for r in ctx.store.list()}
    assert set(rec.run_ids) == set(runs) and {r.status for r in runs.values()} == {"finished"}
    assert {r.name for r in runs.values()} == {"lr0.001", "lr0.002"}
    assert [runs[rid].config["learning_rate"] for rid in rec.run_ids] == [0.001, 0.002]
    assert runs[rec.run_ids[0]].config["noise_multiplier"] == 1.0 and runs[rec.run_ids[0]].config["max_steps"] == 2
    assert set(rec.run_ids) <= set(ctx.sessions)  # each run was the app's Session: the Train tab's Stop stops it
    assert set(rec.run_ids) <= {row[0] for row in runs_tab.list_runs(ctx)["data"]}  # the Runs tab
    assert ("lr (2/2 finished)", "lr") in compare_tab.sweep_choices(ctx)  # the Compare tab's picker
    # a second sweep with that name: a message, nothing stored
    error, _, _ = sweep_panel.start(ctx, values(**SIGMA), [("learning_rate", "0.003"), NO_KNOB], 1, "lr")
    assert "a sweep named 'lr' exists" in error and len(ctx.store.list()) == 2


def test_stop_sweep_stops_the_current_run_and_starts_no_other(ctx):
    ctx.defaults.update(QUICK)
    error, _, _ = sweep_panel.start(ctx, values(**{**SIGMA, "max_steps": 500}), [("lora_r", "4, 8"), NO_KNOB], 1, "s")
    assert error == ""
    deadline = time.time() + 120
    while time.time() < deadline:
        run_ids = SweepStore(ctx.store).get("s").run_ids
        if run_ids and ctx.store.events(run_ids[0], kinds=("step",)):
            break
        time.sleep(0.1)
    assert "stopping" in sweep_panel.stop(ctx)
    job = ctx.sweep_jobs["s"]
    assert job.wait(120)
    rec = SweepStore(ctx.store).get("s")
    assert [SweepStore(ctx.store).status(m) for m in rec.members] == ["stopped", "pending"]
    assert sweep_panel.progress_text(ctx).endswith("stopped: `workbench sweep resume s` trains the rest")


def test_a_run_started_without_a_name_gets_a_readable_unique_one(ctx, monkeypatch):
    import workbench.session

    class FakeSession:  # records the config Start passes; trains nothing
        def __init__(self, config, store=None, **_):
            self.config, self.done, self.run_id = config, True, f"20250101-00000{len(ctx.sessions)}-aaaaaa"

        def start(self):
            ctx.store.create_run(self.run_id, config=self.config.to_dict(), name=self.config.name, status="finished")
            return self.run_id

    monkeypatch.setattr(workbench.session, "Session", FakeSession)
    changes = dict(max_steps=100, batch_size=64, learning_rate=0.005)
    names = []
    for _ in range(2):
        sel, msg = train_tab.start_run(ctx, Selection(), values(name="", **changes))
        assert msg.startswith("Started run"), msg
        names.append(ctx.sessions[sel.run_id].config.name)
    assert names == ["eps8-B64-T100-lr0.005", "eps8-B64-T100-lr0.005 (2)"]
    sel, _ = train_tab.start_run(ctx, Selection(), values(name=" mine ", **changes))  # a name typed is kept
    assert ctx.sessions[sel.run_id].config.name == "mine"


def test_the_compare_tab_opens_a_compared_run_in_the_train_tab(ctx):
    fake_run(ctx.store, "20250101-000000-aaaaaa", accuracy=0.6)
    fake_run(ctx.store, "20250101-000001-bbbbbb", accuracy=0.8, eps_per_step=0.3)
    ctx.store.create_run("20250101-000002-cccccc", config={}, status="queued")  # no events yet
    choices = compare_tab.open_choices(
        ctx, ["20250101-000000-aaaaaa", "20250101-000001-bbbbbb", "20250101-000002-cccccc"]
    )
    assert [rid for _, rid in choices] == ["20250101-000000-aaaaaa", "20250101-000001-bbbbbb", "20250101-000002-cccccc"]
    assert "ε 3" in choices[1][0] and "accuracy 0.8" in choices[1][0]
    chosen, message = compare_tab.open_run(ctx, "20250101-000001-bbbbbb")
    assert chosen == Selection(run_id="20250101-000001-bbbbbb", follow=False) and message == ""
    assert compare_tab.open_run(ctx, None) == (None, "Choose a run to open.")
    chosen, message = compare_tab.open_run(ctx, "20250101-000009-zzzzzz")
    assert chosen is None and message.startswith("⚠️")
