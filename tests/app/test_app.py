"""The app's server-side callbacks, called directly and over HTTP (no browser).

Runs are written to a temporary run store as the engine would write them (synthetic events),
except for the few tests that train the tiny model for a handful of steps.
"""

from __future__ import annotations

import time
import zipfile
from pathlib import Path

import pytest
from factories import MODULES, NBINS, evaluation, fake_run, free_port, started, step  # noqa: E402,F401

from workbench.store.runs import RunStore


def trace_points(fig) -> int:
    return max(len(t.x) for t in fig.data if t.x is not None)


# -- app: callbacks called directly ---------------------------------------------------------------

gr = pytest.importorskip("gradio")

from conftest import PLAN_VALUES as PLAN_DEFAULTS  # noqa: E402  (shared factories)
from conftest import app_values as values  # noqa: E402

from workbench.app import forms  # noqa: E402
from workbench.app import plan as plan_tab  # noqa: E402
from workbench.app import runs as runs_tab  # noqa: E402
from workbench.app import train as train_tab  # noqa: E402
from workbench.app.state import Selection  # noqa: E402


def is_skip(x) -> bool:
    return isinstance(x, dict) and x.get("__type__") == "update" and len(x) == 1


def test_config_from_values_maps_controls_to_runconfig():
    cfg = forms.config_from_values(
        values(
            length_mode="epochs",
            epochs=2.5,
            privacy_mode="sigma",
            noise_multiplier=0.7,
            delta=1e-6,
            accountant="rdp",
            lora_r=4.0,
            name="  my run ",
        )
    )
    assert (cfg.epochs, cfg.max_steps, cfg.noise_multiplier, cfg.target_epsilon) == (2.5, None, 0.7, None)
    assert (cfg.delta, cfg.accountant, cfg.lora_r, cfg.name, cfg.data, cfg.model) == (
        1e-6,
        "rdp",
        4,
        "my run",
        "demo",
        "tiny",
    )
    assert forms.config_from_values(values(data_mode="path", data_path=" /x.jsonl ")).data == "/x.jsonl"


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(delta=1.5), "delta"),
        (dict(target_epsilon=-1.0), "target_epsilon"),
        (dict(batch_size=5000), "fewer than batch_size=5000"),
        (dict(model="/no/such/model"), "no such file or folder"),
        (dict(data_mode="path", data_path="/no/such.jsonl"), "no such file"),
        (dict(data_mode="upload"), "no file uploaded"),
        (dict(max_steps=None), "steps is empty"),
        (dict(delta=0.01), "not below 1/N"),
    ],
)
def test_bad_input_gives_a_message_and_starts_nothing(ctx, changes, message):
    sel, text = train_tab.start_run(ctx, Selection(), values(**changes))
    assert message in text and text.startswith("⚠️") and "Traceback" not in text
    assert sel == Selection() and ctx.store.list() == [] and ctx.sessions == {}


def test_broken_file_gives_a_message(ctx, tmp_path):
    bad = tmp_path / "broken.jsonl"
    bad.write_text('{"prompt": "a", "response": "b"}\n{not json\n')
    data_md, _, _, _ = plan_tab.update_plan(ctx, values(data_mode="path", data_path=str(bad)))
    assert data_md.startswith("⚠️") and "broken.jsonl" in data_md
    _, text = train_tab.start_run(ctx, Selection(), values(data_mode="path", data_path=str(bad)))
    assert "broken.jsonl" in text and ctx.store.list() == []


def test_plan_update_draws_three_accountants_and_the_noise_needed(ctx):
    from workbench import privacy

    t = time.perf_counter()
    # add/remove: RDP and PRV analyse it too, so all three are drawn (replace-one is PLD's alone, below)
    data_md, fig, summary, error = plan_tab.update_plan(
        ctx, values(max_steps=200, accountant="pld", neighboring="add_remove", public_size=True)
    )
    elapsed = time.perf_counter() - t
    assert error == "" and "N = " in data_md and "q = 16/" in data_md
    traces = {trace.name.split()[0]: trace for trace in fig.data}
    assert set(traces) == {"RDP", "PRV", "PLD"}
    n = forms.dataset_info("demo").n_train  # the "size is public" box declares this count
    sigma = privacy.calibrate(
        target_epsilon=8.0,
        sample_rate=16 / n,
        steps=200,
        delta=forms.RunConfig().default_delta(dataset_size=n),
        accountant="pld",
    )
    assert f"σ = {sigma:.4g}" in summary
    assert traces["PLD"].y[-1] == pytest.approx(8.0, rel=0.02)  # PLD reaches the target at the last step
    assert traces["PLD"].x[-1] == 200 and traces["RDP"].y[-1] > traces["PLD"].y[-1]  # RDP is the looser bound
    assert "added or removed" in summary and "Privacy check" in summary
    print(f"plan update: {elapsed:.2f} s")
    _, fig, summary, error = plan_tab.update_plan(ctx, values(max_steps=200, accountant="pld"))  # auto: replace one
    assert error == "" and {trace.name.split()[0] for trace in fig.data} == {"PLD"} and "replaced by another" in summary
    sigma_one = privacy.calibrate(
        target_epsilon=8.0,
        sample_rate=16 / n,
        steps=200,
        neighboring="replace_one",
        delta=forms.RunConfig().default_delta(dataset_size=n),
    )
    assert f"σ = {sigma_one:.4g}" in summary and sigma_one > sigma


def test_edgeworth_is_marked_as_approximation_in_the_plan(ctx):
    *_, error = plan_tab.update_plan(ctx, values(accountant="edgeworth"))
    assert "public_dataset_size" in error  # Edgeworth's comparison is add/remove: it needs a public size
    _, fig, summary, _ = plan_tab.update_plan(ctx, values(accountant="edgeworth", public_size=True))
    assert "Edgeworth (approximation)" in summary
    assert any("Edgeworth (approximation)" in t.name for t in fig.data)


def test_upload_is_moved_into_the_app_folder_and_size_limited(ctx, tmp_path, monkeypatch):
    monkeypatch.setattr(plan_tab.tempfile, "gettempdir", lambda: str(tmp_path))
    src = tmp_path / "gradio" / "abc" / "my data.jsonl"
    src.parent.mkdir(parents=True)
    src.write_text('{"prompt": "hi", "response": "there"}\n' * 40)
    stored, msg = plan_tab.store_upload(ctx, str(src))
    assert Path(stored).parent == ctx.uploads_dir and Path(stored).read_text().count("\n") == 40
    assert not src.exists() and "Stored" in msg  # Gradio's served copy is gone
    ctx.max_upload_mb = 0
    src.parent.mkdir(parents=True, exist_ok=True)
    src.write_text("x" * 100)
    stored, msg = plan_tab.store_upload(ctx, str(src))
    assert stored is None and "limit is 0 MB" in msg and not src.exists()


def test_stop_of_another_process_run_says_so(ctx):
    fake_run(ctx.store, "20250101-000000-aaaaaa", finished=False)
    msg = train_tab.stop_run(ctx, Selection(run_id="20250101-000000-aaaaaa"))
    assert "another process" in msg and "cannot stop" in msg


def test_runs_table_delete_and_export_messages(ctx):
    fake_run(ctx.store, "20250101-000000-aaaaaa", accuracy=0.75)
    fake_run(ctx.store, "20250101-000001-bbbbbb", finished=False)
    table = runs_tab.list_runs(ctx)
    assert [r[0] for r in table["data"]] == ["20250101-000001-bbbbbb", "20250101-000000-aaaaaa"]
    assert table["data"][1][2:6] == ["finished", "tiny", "1", "accuracy 0.750"]
    assert "stop it before deleting" in runs_tab.delete_run(ctx, "20250101-000001-bbbbbb")
    path, msg = runs_tab.export_zip(ctx, "20250101-000000-aaaaaa")  # synthetic run: no adapter on disk
    assert path is None and "no saved adapter" in msg
    assert "Deleted" in runs_tab.delete_run(ctx, "20250101-000000-aaaaaa")
    assert [r.id for r in ctx.store.list()] == ["20250101-000001-bbbbbb"]


def test_compare_overlays_runs_and_lists_differences(ctx):
    from workbench.app import compare as compare_tab

    fake_run(ctx.store, "20250101-000000-aaaaaa", accuracy=0.6, config={"learning_rate": 0.001})
    fake_run(ctx.store, "20250101-000001-bbbbbb", accuracy=0.8, eps_per_step=0.3, config={"learning_rate": 0.01})
    loss, eps, scatter, diff, msg = compare_tab.compare(ctx, ["20250101-000000-aaaaaa", "20250101-000001-bbbbbb"])
    assert len(eps.data) == 2 and eps.data[1].y[-1] == pytest.approx(3.0)
    assert [t.x[0] for t in scatter.data] == pytest.approx([1.0, 3.0])
    assert diff["data"] == [["learning_rate", 0.001, 0.01]] and msg == ""
    assert "two or more" in compare_tab.compare(ctx, ["20250101-000000-aaaaaa"])[-1]


# -- app: real runs on the tiny model -------------------------------------------------------------


def test_start_trains_stop_stops_and_export_zips(ctx, tmp_path):
    sel, msg = train_tab.start_run(ctx, Selection(), values(max_steps=2))
    assert msg.startswith("Started run") and sel.run_id in ctx.sessions
    ctx.sessions[sel.run_id].wait(120)
    rec = ctx.store.get(sel.run_id)
    assert rec.status == "finished", rec.reason
    path, msg = runs_tab.export_zip(ctx, sel.run_id)
    names = zipfile.ZipFile(path).namelist()
    assert any(n.endswith("summary.json") for n in names) and any("/adapter/" in n for n in names), names
    # a long run, stopped: it ends 'stopped' within a step or two
    sel2, _ = train_tab.start_run(ctx, sel, values(max_steps=500))
    session = ctx.sessions[sel2.run_id]
    deadline = time.time() + 60
    while not ctx.store.events(sel2.run_id, kinds=("step",)) and time.time() < deadline:
        time.sleep(0.1)
    assert "Stopping" in train_tab.stop_run(ctx, sel2)
    session.wait(60)
    assert ctx.store.get(sel2.run_id).status == "stopped"
    assert len(ctx.store.events(sel2.run_id, kinds=("step",))) < 500


def test_second_start_is_queued(ctx):
    sel, _ = train_tab.start_run(ctx, Selection(), values(max_steps=200))
    sel2, msg = train_tab.start_run(ctx, sel, values(max_steps=2))
    try:
        assert "queued" in msg
        assert ctx.store.get(sel2.run_id).status == "queued"
    finally:
        for s in ctx.sessions.values():
            s.stop()
        for s in ctx.sessions.values():
            s.wait(60)


# -- app: over HTTP with gradio_client ------------------------------------------------------------


def test_launch_refuses_share_without_auth():
    from workbench.app import launch

    with pytest.raises(ValueError, match="auth"):
        launch(share=True)


def test_api_exposes_no_training_or_deletion(_workbench_home):
    from gradio_client import Client

    from workbench.app import build_app, serve

    app = build_app(RunStore(_workbench_home), defaults={"model": "tiny", "max_steps": 4, "batch_size": 16})
    try:
        _, url, _ = serve(app, port=free_port(), block=False, quiet=True)
        client = Client(url, verbose=False)
        endpoints = set(client.view_api(print_info=False, return_format="dict")["named_endpoints"])
        assert endpoints == {"/plan", "/recommend", "/compare", "/list_runs"}, endpoints  # reading, planning
        import requests

        for path in ("monitoring", "monitoring/summary"):  # monitoring is off
            assert requests.get(url + path, timeout=10).status_code == 403
        # the controls by name (gr.State is not an API input); the ones left out take their defaults
        kwargs = {k: v for k, v in PLAN_DEFAULTS.items() if k != "upload_path"}
        data_md, _, summary, error, *row_errors = client.predict(**kwargs, api_name="/plan")
        assert "N = " in data_md and "σ = " in summary and error == "" and row_errors == [""] * len(plan_tab.ERROR_ROWS)
    finally:
        app.close()


def test_store_version_changes_exactly_when_a_run_does(_workbench_home):
    store = RunStore(_workbench_home)
    empty = store.version()
    assert store.version() == empty  # stable while nothing is written
    fake_run(store, "20250101-000000-aaaaaa", steps=2, finished=False)
    running = store.version()
    assert running != empty and store.version() == running
    store.append(step(3, "20250101-000000-aaaaaa", t0=2000.0))
    stepped = store.version()
    assert stepped != running
    store.set_status("20250101-000000-aaaaaa", "stopped")
    assert store.version() != stepped
    store.delete("20250101-000000-aaaaaa")
    assert store.version() == empty  # the same runs (none): the same token


def test_a_plan_error_is_shown_under_the_row_of_the_field_it_names(ctx):
    rows = list(plan_tab.ERROR_ROWS)
    for changes, row in [
        (dict(delta="2"), "delta"),
        (dict(batch_size=5000), "batch"),
        (dict(max_steps=0), "length"),
        (dict(privacy_mode="sigma", noise_multiplier=-1), "privacy"),
        (dict(max_examples_per_user=0), "user"),
        (dict(accountant="prv", neighboring="replace_one"), "user"),
    ]:
        routed = plan_tab.route_error(plan_tab.update_plan(ctx, values(**changes)))
        assert routed[3] == "", changes  # not at the bottom of the page
        texts = dict(zip(rows, routed[4:]))
        assert texts[row].startswith("⚠️") and all(t == "" for r, t in texts.items() if r != row), (changes, texts)
    assert plan_tab.route_error(("d", None, "s", "⚠️ something else"))[3:] == ("⚠️ something else",) + ("",) * len(rows)
