"""The Train tab's live path (workbench/app/live.py, workbench/present/live.py) without a browser:
the rows, which run a page is shown, and the stream as a page reads it.  The browser side is in
test_app_browser.py."""

from __future__ import annotations

import dataclasses
import json
import math
import threading
import time

import pytest
from factories import MODULES, evaluation, fake_run, free_port, started, step

from workbench.app.live import KEY_PATH, STATIC, STATIC_PREFIX, STREAM_PATH, followed, selection_value, update
from workbench.app.state import AppContext, Selection
from workbench.events import RunEnded
from workbench.present.diagnostics import norm_title, signal_to_noise, snr_title
from workbench.present.live import BIN_EDGES, NORM_TITLE, rows, smoothed_loss
from workbench.present.series import ema
from workbench.store.runs import RunStore

pytest.importorskip("gradio")
requests = pytest.importorskip("requests")

A, B = "20250101-000000-aaaaaa", "20250101-000001-bbbbbb"


def test_rows_carry_every_step_and_evaluation_as_plain_numbers():
    events = [(1, started("r1", steps=3)), (2, step(1)), (3, step(2, loss=math.nan, eps=math.inf)), (4, evaluation(2))]
    out = rows(events)
    assert out["seq"] == 4 and [r["step"] for r in out["steps"]] == [1, 2]
    assert out["steps"][0]["loss"] == 2.0 and out["steps"][0]["epsilon"] == pytest.approx(0.1)
    assert out["steps"][1]["loss"] is None and out["steps"][1]["epsilon"] is None  # JSON has no NaN or inf
    assert out["steps"][0]["hist"] == list(step(1).grad_norm_hist) and len(BIN_EDGES) == len(out["steps"][0]["hist"])
    assert out["evals"] == [
        {"step": 2, "val_loss": 1.5, "accuracy": 0.5, "generations": [{"prompt": "p2", "output": "o2"}]}
    ]
    assert out["started"]["target"] == 8.0 and out["started"]["planned"][-1] == [3, pytest.approx(8.0)]
    assert out["started"]["clip"] == 1.0 and "PLD" in out["started"]["epsilon_title"]
    assert out["modules"]["step"] == 2 and out["modules"]["noise"] == [0.5, 1.0, 1.5, 2.0]  # the latest step's
    assert out["modules"]["short"] == ["layers.0.q_proj", "layers.0.v_proj", "layers.1.q_proj", "layers.1.v_proj"]
    json.dumps(out, allow_nan=False)  # valid JSON as it stands
    assert rows([])["seq"] == 0 and rows([])["steps"] == []


def test_rows_carry_the_smoothed_loss_and_the_titles_computed_in_python():
    """The page only draws (workbench/app/dashboard.js): the smoothed train loss is present.series.ema's over the
    finite losses, the histogram's title present.diagnostics.norm_title's, the module panel's snr_title's."""
    first = dataclasses.replace(started("r1", steps=60), module_dims={m: 4 for m in MODULES})
    losses = [3.0, 2.5, math.nan, 2.0, 2.2]
    events = [(1, first)] + [(k + 1, step(k, loss=loss)) for k, loss in enumerate(losses, start=1)]
    out = rows(events)
    finite = [(k, loss) for k, loss in enumerate(losses, start=1) if math.isfinite(loss)]
    assert out["smoothed"]["reset"] and [p[0] for p in out["smoothed"]["points"]] == [1, 2, 4, 5]  # no NaN
    assert [p[1] for p in out["smoothed"]["points"]] == pytest.approx(ema([loss for _, loss in finite]).tolist())
    assert out["steps"][-1]["norm_title"] == norm_title(5, median=None, clipped=0.25, max_norm=1.3, clip=1.0)
    assert out["steps"][-1]["norm_title"] == "Per-example gradient norms, step 5: 25% clipped · max 1.3 C"
    assert out["modules"]["title"] == snr_title(5, signal_to_noise(events[-1][1], first.module_dims)["snr"])
    assert out["modules"]["title"].startswith("Signal to noise per LoRA module, step 5: median SNR ")
    empty = dataclasses.replace(step(6), grad_norm_hist=[0] * len(BIN_EDGES))  # an empty Poisson batch
    assert rows([(7, empty)], started=first)["steps"][0]["norm_title"] == NORM_TITLE
    no_sizes = rows([(1, started("r1")), (2, step(1))])["modules"]  # a run stored before the sizes: no SNR
    assert no_sizes["title"] == snr_title(1, [None]) == "Signal to noise per LoRA module, step 1"
    json.dumps(out, allow_nan=False)


def test_the_smoothed_loss_is_sent_whole_again_only_when_its_factor_changes():
    steps = [step(k, loss=1.0 + k % 3) for k in range(1, 41)]
    losses = [s.loss for s in steps]
    # up to 33 losses ema's factor is 0.3 throughout: a page holding 20 steps gets the 10 new values only
    part = smoothed_loss(steps[:20], steps[20:30])
    assert not part["reset"] and [p[0] for p in part["points"]] == list(range(21, 31))
    assert [p[1] for p in part["points"]] == pytest.approx(ema(losses[:30])[20:].tolist())
    # from 34 losses on, each new one changes the factor (about 10 / n): every value again
    whole = smoothed_loss(steps[:35], steps[35:36])
    assert whole["reset"] and [p[0] for p in whole["points"]] == list(range(1, 37))
    assert [p[1] for p in whole["points"]] == pytest.approx(ema(losses[:36]).tolist())
    assert smoothed_loss(steps, []) is None and smoothed_loss(steps, [step(41, loss=math.nan)]) is None


def test_update_smooths_the_loss_over_the_steps_the_page_holds(ctx):
    fake_run(ctx.store, A, steps=3, finished=False)
    first = update(ctx, A, after=0, follow=True)
    assert first["smoothed"]["reset"] and [p[0] for p in first["smoothed"]["points"]] == [1, 2, 3]
    ctx.store.append(step(4, A))
    more = update(ctx, A, after=first["seq"], follow=True)
    assert not more["smoothed"]["reset"] and [p[0] for p in more["smoothed"]["points"]] == [4]
    assert more["smoothed"]["points"][0][1] == pytest.approx(ema([2.0 / k for k in range(1, 5)])[-1])
    assert update(ctx, A, after=more["seq"], follow=True)["smoothed"] is None  # nothing new


def test_a_following_page_moves_to_the_newest_active_run_and_a_pinned_one_stays(ctx):
    assert followed(ctx, None, True) is None
    fake_run(ctx.store, A, steps=3)
    assert followed(ctx, None, True) == A  # no run chosen: the newest stored one
    fake_run(ctx.store, B, steps=2, finished=False)  # e.g. `workbench train` in a terminal
    assert followed(ctx, A, True) == B and followed(ctx, A, False) == A
    assert followed(ctx, B, True) == B  # a running run is kept


def test_update_sends_the_rows_after_the_pages_sequence_number(ctx):
    events = fake_run(ctx.store, A, steps=3, finished=False)
    first = update(ctx, A, after=0, follow=True, now=2000.0)
    assert first["run"] == A and not first["reset"] and first["status"] == "running"
    assert [r["step"] for r in first["steps"]] == [1, 2, 3] and len(first["evals"]) == 1 and first["started"]
    assert f'data-run="{A}"' in first["header"] and "ε = 0.3" in first["header"]
    again = update(ctx, A, after=first["seq"], follow=True)
    assert again["steps"] == [] and again["evals"] == [] and again["seq"] == first["seq"] and not again["started"]
    ctx.store.append(step(4, A))
    more = update(ctx, A, after=first["seq"], follow=True)
    assert [r["step"] for r in more["steps"]] == [4] and more["modules"]["step"] == 4
    assert len(events) == 5
    ctx.store.append(RunEnded(run_id=A, status="stopped", reason="", summary={}))
    ctx.store.set_status(A, "stopped")
    fake_run(ctx.store, B, steps=2, finished=False)
    moved = update(ctx, A, after=more["seq"], follow=True)  # its run ended and a newer one runs: reset to it
    assert moved["run"] == B and moved["reset"] and [r["step"] for r in moved["steps"]] == [1, 2]
    pinned = update(ctx, A, after=more["seq"], follow=False)
    assert pinned["run"] == A and pinned["status"] == "stopped" and not pinned["reset"]
    ctx.store.delete(A)
    gone = update(ctx, A, after=0, follow=False)
    assert gone["status"] == "deleted" and "was deleted" in gone["header"]


def test_selection_value_names_the_run_and_changes_every_time():
    one, two = selection_value(Selection(A, follow=False), show=True), selection_value(Selection(A, follow=False))
    assert json.loads(one)["run"] == A and json.loads(one)["show"] and not json.loads(one)["follow"]
    assert json.loads(one)["nonce"] != json.loads(two)["nonce"]  # opening the same run again redraws it


def _events(lines, n: int) -> list[dict]:
    """The next ``n`` ``update`` events of a streamed response (its ``iter_lines``, or the response), decoded."""
    out, name = [], None
    if isinstance(lines, requests.Response):
        lines = lines.iter_lines(decode_unicode=True)
    for line in lines:
        if line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: ") and name == "update":
            out.append(json.loads(line[6:]))
            if len(out) == n:
                break
    return out


@pytest.fixture
def served(_workbench_home):
    from workbench.app import build_app, serve

    store = RunStore(_workbench_home)
    apps = []

    def start(**kw):
        app = build_app(store, defaults={"model": "tiny"}, poll_seconds=0.2)
        _, url, _ = serve(app, port=free_port(), block=False, quiet=True, **kw)
        apps.append(app)
        return url.rstrip("/")

    yield store, start
    for app in apps:
        app.close()


def test_the_stream_sends_each_new_step_once_and_follows_the_run_to_its_end(served):
    """The page's one connection: the rows it lacks at once, then each new step as it is stored (no
    request per step), then the run's end; bad queries are refused; static files are served."""
    store, start = served
    fake_run(store, A, steps=2, finished=False)
    url = start()

    def more_steps():
        for s in (3, 4):
            time.sleep(0.6)
            store.append(step(s, A, t0=2000.0))
        time.sleep(0.6)
        store.append(RunEnded(run_id=A, status="finished", reason="", summary={}))
        store.set_status(A, "finished")

    writer = threading.Thread(target=more_steps)
    t = time.monotonic()
    with requests.get(url + STREAM_PATH, params={"run": A, "after": 0}, stream=True, timeout=30) as answer:
        assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/event-stream")
        lines = answer.iter_lines(decode_unicode=True)
        first = _events(lines, 1)[0]
        writer.start()
        later = _events(lines, 3)
    writer.join()
    assert [r["step"] for r in first["steps"]] == [1, 2] and first["status"] == "running"
    assert [[r["step"] for r in u["steps"]] for u in later] == [[3], [4], []]
    assert later[-1]["status"] == "finished" and "finished" in later[-1]["header"]
    assert [u["seq"] for u in later] == sorted({u["seq"] for u in later})  # each event after the previous
    assert time.monotonic() - t < 15
    # a page that reconnects with the rows it holds gets nothing twice
    with requests.get(url + STREAM_PATH, params={"run": A, "after": later[1]["seq"]}, stream=True, timeout=30) as again:
        (resumed,) = _events(again, 1)
    assert resumed["steps"] == [] and resumed["status"] == "finished"
    bad = requests.get(url + STREAM_PATH, params={"after": "many"}, timeout=10)
    assert bad.status_code == 400 and "after" in bad.text
    for name in STATIC:
        got = requests.get(url + STATIC_PREFIX + name, timeout=10)
        assert got.status_code == 200 and len(got.content) > 1000, name
    assert "uPlot" in requests.get(url + STATIC_PREFIX + "uPlot.iife.min.js", timeout=10).text[:3000]


def _stream_key(session, url: str) -> requests.Response | str:
    """The stream's key as the page gets it: from Gradio's API (POST, then GET the event's result); the
    refusal when Gradio refuses the call."""
    call = session.post(url + KEY_PATH, json={"data": []}, timeout=10)
    if not call.ok:
        return call
    result = session.get(f"{url}{KEY_PATH}/{call.json()['event_id']}", timeout=10).text
    return json.loads(result.split("data: ", 1)[1].splitlines()[0])[0]


def test_the_stream_needs_the_login_when_auth_is_set(served):
    """With a login, the stream wants the key that Gradio's API hands to logged-in clients only
    (workbench/app/live.py: no reading of Gradio's cookies or tokens)."""
    store, start = served
    fake_run(store, A, steps=1)
    url = start(auth="ann:secret")
    assert requests.get(url + STREAM_PATH, params={"run": A}, timeout=10).status_code == 401
    assert _stream_key(requests, url).status_code == 401  # Gradio's API: not without the login
    with requests.Session() as s:
        assert s.post(url + "/login", data={"username": "ann", "password": "secret"}, timeout=10).ok
        key = _stream_key(s, url)
        assert isinstance(key, str) and len(key) >= 32
        assert s.get(url + STREAM_PATH, params={"run": A}, timeout=10).status_code == 401  # the login alone: no
        assert s.get(url + STREAM_PATH, params={"run": A, "key": key[:-1] + "x"}, timeout=10).status_code == 401
        with s.get(url + STREAM_PATH, params={"run": A, "key": key}, stream=True, timeout=30) as answer:
            assert answer.status_code == 200 and _events(answer, 1)[0]["run"] == A
    # the key works from another client too (it is the login's proof, not a cookie), and static files need none
    with requests.get(url + STREAM_PATH, params={"run": A, "key": key}, stream=True, timeout=30) as answer:
        assert answer.status_code == 200
    assert requests.get(url + STATIC_PREFIX + "dashboard.js", timeout=10).status_code == 200


def test_the_frame_patch_is_first_in_the_page_and_gradios_module_still_asks_for_frames(served):
    """workbench/app/frames.py slows Gradio's status-tracker frame loop; it recognises that module by
    name.  If a Gradio release renames the module or stops asking it for frames, this fails."""
    from importlib.resources import files

    from workbench.app.frames import GRADIO_MODULE, SCRIPT

    assets = files("gradio").joinpath("templates", "frontend", "assets")
    tracker = [p for p in assets.iterdir() if p.name.startswith(GRADIO_MODULE) and p.name.endswith(".js")]
    assert tracker, f"Gradio no longer ships a {GRADIO_MODULE}*.js module: remove workbench/app/frames.py"
    assert any("requestAnimationFrame" in p.read_text(encoding="utf-8") for p in tracker)
    # the patch keeps 10 Hz while a tracker shows its timer, which Gradio renders in this class
    assert any("progress-text" in p.read_text(encoding="utf-8") for p in tracker) and b".progress-text" in SCRIPT
    _, start = served
    page = requests.get(start(), timeout=30)
    head = page.text.index("<head>")
    assert page.text.index(SCRIPT.decode()) == head + len("<head>")  # before Gradio's own modules
    assert int(page.headers["content-length"]) == len(page.content)


def test_app_context_default_selection_is_the_newest_active_run(ctx: AppContext):
    fake_run(ctx.store, A, steps=1)
    assert ctx.default_selection().run_id == A
    fake_run(ctx.store, B, steps=1, finished=False)
    assert ctx.default_selection().run_id == B
