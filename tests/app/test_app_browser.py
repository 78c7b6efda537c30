"""End to end in a real browser: headless Debian Chromium driven by Playwright (sync API).

The app runs in this process on a free localhost port over a temporary run store; the browser
plans, trains the tiny model, watches the plots gain points, stops, trains again, compares the
two runs, exports one and deletes the other.  Screenshots of each tab go to artifacts/browser/
(set WORKBENCH_UPDATE_SCREENSHOT=1 to copy the mid-run Train tab to assets/train_tab.png).
"""

from __future__ import annotations

import math
import os
import re
import shutil
import tempfile
import zipfile
from pathlib import Path

import pytest
from factories import serve_app

pytestmark = pytest.mark.browser

if shutil.which("chromium") is None:
    pytest.skip("Debian's chromium is not installed (`make browser` installs it)", allow_module_level=True)
pytest.importorskip("gradio")
sync_api = pytest.importorskip("playwright.sync_api")

ROOT = Path(__file__).resolve().parents[2]

ARTIFACTS = ROOT / "artifacts" / "browser"
# Small, fast tiny-model runs: 0.1-0.4 s a step on two busy CPU cores.  The first run is long
# enough never to finish before the test stops it; the second (12 steps) runs to the end.
DEFAULTS = {
    "model": "tiny",
    "max_steps": 3000,
    "batch_size": 8,
    "physical_batch_size": 8,
    "max_seq_len": 64,
    "eval_every": 10,
    "eval_max_examples": 8,
    "generate_max_new_tokens": 8,
}
WAIT = 90_000  # ms: generous, the machine is shared
LIVE_PANELS = ("loss-plot", "epsilon-plot", "hist-plot", "heatmap-plot", "noise-plot")

# the points a live chart drew in one series (workbench/app/dashboard.js: uPlot, series after x)
POINTS_JS = """([id, trace]) => {
  const host = document.getElementById(id);
  return host && host.__wbPoints ? (host.__wbPoints[trace] || 0) : 0;
}"""
# the value uPlot's legend shows for a series under the pointer
LEGEND_JS = """([id, label]) => {
  const row = [...document.querySelectorAll(`#${id} .u-legend .u-series`)].find((r) => r.querySelector(".u-label").textContent === label);
  return row ? row.querySelector(".u-value").textContent : null;
}"""
TRACES_JS = "(id) => { const el = document.querySelector(`#${id} .js-plotly-plot`); return el && el.data ? el.data.length : 0; }"


@pytest.fixture
def app_url(_workbench_home):
    yield from serve_app(_workbench_home, DEFAULTS)


def shot(page, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def points(page, plot_id: str, trace: int) -> int:
    return page.evaluate(POINTS_JS, [plot_id, trace])


def wait_text(page, selector: str, pattern: str, timeout: int = WAIT) -> str:
    sync_api.expect(page.locator(selector)).to_contain_text(re.compile(pattern), timeout=timeout)
    return page.locator(selector).inner_text()


def train_to_the_end(page, steps: int) -> str:
    """Plan ``steps`` steps, press Start on the Train tab, wait until the run has finished; its id."""
    page.get_by_role("tab", name="Plan").click()
    page.locator("#max-steps input").fill(str(steps))
    page.locator("#max-steps input").press("Enter")
    wait_text(page, "#plan-summary", rf"over {steps} steps")
    page.get_by_role("tab", name="Train").click()
    page.locator("#start").click()
    run_id = re.search(r"Started run ([\w-]+)", wait_text(page, "#train-message", r"Started run")).group(1)
    wait_text(page, "#run-header .wb-badge", r"finished", timeout=180_000)
    return run_id


def test_plan_train_stop_compare_export_delete(app_url, browser):
    url, store, ctx = app_url
    page = browser.new_page(viewport={"width": 1500, "height": 1100})
    page.goto(url)

    # Plan: N of the demo data, the noise needed; by default (replace one example) PLD's curve alone, the
    # relation stated and the pre-flight privacy check under the plan
    wait_text(page, "#data-info", r"N = 1,098")
    wait_text(page, "#plan-summary", r"must be\s+σ = [0-9.]+ \(PLD")
    wait_text(page, "#plan-summary", r"one example replaced by another")
    wait_text(page, "#plan-summary", r"Privacy check")
    assert page.evaluate(TRACES_JS, "plan-plot") == 1

    # Upload: the file lands in the app's own folder and its N is shown; then back to the demo data
    data = Path(store.home).parent / "mine.jsonl"
    data.write_text("".join(f'{{"prompt": "question {i}", "response": "answer {i}"}}\n' for i in range(120)))
    page.get_by_label("Upload a file").check()
    page.locator("#data-upload input[type=file]").set_input_files(str(data))
    wait_text(page, "#upload-msg", r"Stored mine.jsonl")
    wait_text(page, "#data-info", r"N = 109 training examples")
    assert [p.name.split("-", 1)[1] for p in (Path(store.home) / "uploads").iterdir()] == ["mine.jsonl"]
    assert not list(Path(tempfile.gettempdir(), "gradio").rglob("mine.jsonl"))  # Gradio's copy is gone
    page.get_by_label("Demo dataset").check()
    wait_text(page, "#data-info", r"N = 1,098")
    wait_text(page, "#plan-summary", r"Privacy check")

    # add/remove neighbours need a size declared public (issue 26): refused until the box is ticked, then
    # curves for RDP, PRV and PLD
    page.locator("#neighboring input").click()
    page.get_by_role("option", name="add or remove one unit").click()
    wait_text(page, "#user-error", r"public_dataset_size")
    page.locator("#public-size input").check()
    wait_text(page, "#plan-summary", r"ε after the last step: RDP .* PRV .* PLD")
    wait_text(page, "#plan-summary", r"one example added or removed")
    wait_text(page, "#plan-summary", r"Privacy check")
    assert page.evaluate(TRACES_JS, "plan-plot") == 3
    shot(page, "plan")
    page.locator("#public-size input").uncheck()  # back to the defaults for the runs below
    page.locator("#neighboring input").click()
    page.get_by_role("option", name="auto (add or remove if the size is public, else replace one)").click()
    wait_text(page, "#plan-summary", r"one example replaced by another")
    wait_text(page, "#plan-summary", r"Privacy check")

    # Bad input: a message beside the control, and Start starts nothing
    page.locator("#delta input, #delta textarea").first.fill("2")
    page.locator("#delta input, #delta textarea").first.press("Enter")
    wait_text(page, "#delta-error", r"delta")  # under the row of the field it names
    sync_api.expect(page.locator("#plan-error")).to_have_text("")
    page.get_by_role("tab", name="Train").click()
    page.locator("#start").click()
    wait_text(page, "#train-message", r"delta.*less than 1")
    assert store.list() == []
    page.get_by_role("tab", name="Plan").click()
    page.locator("#delta input, #delta textarea").first.fill("")
    page.locator("#delta input, #delta textarea").first.press("Enter")
    sync_api.expect(page.locator("#delta-error")).to_have_text("", timeout=WAIT)

    # Train: start, watch the loss and epsilon plots gain points, stop
    page.get_by_role("tab", name="Train").click()
    page.locator("#start").click()
    first = re.search(r"Started run ([\w-]+)", wait_text(page, "#train-message", r"Started run")).group(1)
    page.wait_for_function(f"() => ({POINTS_JS})(['loss-plot', 0]) >= 3", timeout=WAIT)
    loss_before, eps_before = points(page, "loss-plot", 0), points(page, "epsilon-plot", 1)
    page.wait_for_function(f"() => ({POINTS_JS})(['loss-plot', 0]) >= {loss_before + 3}", timeout=WAIT)
    page.wait_for_function(f"() => ({POINTS_JS})(['epsilon-plot', 1]) > {eps_before}", timeout=WAIT)
    wait_text(page, "#wb-progress", r"step \d+ / 3000 .* ETA")
    wait_text(page, "#wb-epsilon", r"ε = [0-9.]+")
    # while the run trains, every live chart is drawn by uPlot on a canvas, throttled but current
    for panel in LIVE_PANELS:
        page.locator(f"#{panel}").scroll_into_view_if_needed()  # off screen, a chart waits to be seen
        page.wait_for_function(f"() => Number(document.getElementById('{panel}').dataset.draws || 0) > 0", timeout=WAIT)
        assert page.locator(f"#{panel} .uplot canvas").count() == 1, panel
    # hover: the legend reads the values under the pointer
    page.locator("#loss-plot").scroll_into_view_if_needed()
    box = page.locator("#loss-plot .u-over").bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.5)
    page.wait_for_function(f"() => /^[0-9.]+$/.test(({LEGEND_JS})(['loss-plot', 'train']) || '')", timeout=WAIT)
    hovered = float(page.evaluate(LEGEND_JS, ["loss-plot", "train"]))
    assert 0 < hovered < 20, hovered
    page.mouse.move(2, 2)
    page.evaluate("window.scrollTo(0, 0)")
    mid = shot(page, "train_mid_run")
    if os.environ.get("WORKBENCH_UPDATE_SCREENSHOT") == "1":
        shutil.copyfile(mid, ROOT / "assets" / "train_tab.png")

    # a second browser opens the app and lands on the same live run
    watcher = browser.new_page(viewport={"width": 1200, "height": 900})
    watcher.goto(url)
    wait_text(watcher, "#run-header", first)
    sync_api.expect(watcher.get_by_role("tab", name="Train")).to_have_attribute("aria-selected", "true")
    watcher.close()

    page.locator("#stop").click()
    wait_text(page, "#run-header .wb-badge", r"stopped")
    stopped_steps = len(store.events(first, kinds=("step",)))
    assert store.get(first).status == "stopped" and 0 < stopped_steps < 3000

    # a second run, shorter and named, to the end
    page.locator("#run-name input, #run-name textarea").first.fill("second")
    second = train_to_the_end(page, 12)
    wait_text(page, "#run-header", second)
    page.wait_for_function(f"() => ({POINTS_JS})(['loss-plot', 0]) == 12", timeout=WAIT)
    # the finished run's view: zoom by dragging, double-click to reset
    page.locator("#loss-plot").scroll_into_view_if_needed()
    box = page.locator("#loss-plot .u-over").bounding_box()
    x_range = "() => { const u = document.querySelector('#loss-plot .uplot'); return u && u.querySelector('.u-select').style.width; }"
    page.mouse.move(box["x"] + box["width"] * 0.2, box["y"] + box["height"] * 0.5)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.5, steps=5)
    page.mouse.up()
    assert page.evaluate(x_range) in ("0px", "")  # the selection became the zoom
    page.wait_for_function(f"() => /^[0-9.]+$/.test(({LEGEND_JS})(['loss-plot', 'step']) || '')", timeout=WAIT)
    page.mouse.move(box["x"] + box["width"] * 0.05, box["y"] + box["height"] * 0.5)
    low = float(page.evaluate(LEGEND_JS, ["loss-plot", "step"]))  # the left edge of the zoomed view
    assert low >= 2, low
    page.mouse.dblclick(box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.5)
    page.mouse.move(box["x"] + 2, box["y"] + box["height"] * 0.5)
    page.wait_for_function(f"() => Number(({LEGEND_JS})(['loss-plot', 'step'])) <= 1", timeout=WAIT)
    wait_text(page, "#generations", r"p\d+|step")
    shot(page, "train_finished")

    # Compare the two
    page.get_by_role("tab", name="Compare").click()
    for run_id in (first, second):
        page.locator("#compare-picker input").click()
        page.get_by_role("option", name=re.compile(run_id)).click()
    page.wait_for_function(f"() => ({TRACES_JS})('compare-epsilon') == 2", timeout=WAIT)
    wait_text(page, "#compare-diff", r"max_steps")
    assert page.evaluate(TRACES_JS, "compare-scatter") == 2
    # close the dropdown's list with the keyboard: a click elsewhere can land on the loading overlay of an event still
    # in the queue (it did once in CI under load) and wait for it
    page.locator("#compare-picker input").press("Escape")
    page.evaluate("document.activeElement && document.activeElement.blur()")
    sync_api.expect(page.get_by_role("listbox")).to_have_count(0, timeout=WAIT)
    shot(page, "compare")

    # Runs: export the finished run as a zip, delete the stopped one (confirmed)
    page.get_by_role("tab", name="Runs").click()
    wait_text(page, "#runs-table", second)
    page.locator("#runs-picker input").click()
    page.get_by_role("option", name=second, exact=True).click()
    page.locator("#export-run").click()
    wait_text(page, "#runs-message", r"Exported")
    link = page.locator("#export-file a[download$='.zip']").first
    with page.expect_download(timeout=WAIT) as download:
        link.click()
    names = zipfile.ZipFile(download.value.path()).namelist()
    assert any(n.endswith("summary.json") for n in names) and any("/adapter/" in n for n in names)
    shot(page, "runs")
    page.locator("#runs-picker input").click()
    page.get_by_role("option", name=first, exact=True).click()
    page.locator("#open-run").click()  # its full dashboard, in the Train tab
    sync_api.expect(page.get_by_role("tab", name="Train")).to_have_attribute("aria-selected", "true")
    wait_text(page, "#run-header", first + r".*stopped")
    page.get_by_role("tab", name="Runs").click()
    page.locator("#delete-run").click()
    page.locator("#confirm-delete").click()
    wait_text(page, "#runs-message", r"Deleted run")
    assert [r.id for r in store.list()] == [second]


COUNT_FRAMES_JS = """
window.__frames = 0;
const realFrame = window.requestAnimationFrame.bind(window);
window.requestAnimationFrame = (callback) => { window.__frames++; return realFrame(callback); };
"""


def test_a_watched_idle_dashboard_runs_no_gradio_event_and_renders_no_frames(app_url, browser):
    """What keeps a watching browser light (workbench/app/page.py): while the store does not change,
    the page holds one stream that the server writes to only on a change (no Gradio event, no
    request a second), and Gradio's status tracker no longer renders 60 frames a second."""
    url, store, ctx = app_url
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.add_init_script(COUNT_FRAMES_JS)  # runs before the page's own script wraps the frame requests
    page.goto(url)
    run_id = train_to_the_end(page, 6)
    page.wait_for_function(f"() => ({POINTS_JS})(['loss-plot', 0]) == 6", timeout=WAIT)  # drawn from the store
    page.wait_for_timeout(1500)  # the last refresh settles

    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    frames0 = page.evaluate("window.__frames")
    page.wait_for_timeout(4000)
    frames = page.evaluate("window.__frames") - frames0
    polls = [u for u in requests if "/workbench/" in u]
    events = [u for u in requests if "/queue/join" in u]
    # one stream held open by the server (it ends after 300 s): no request at all in 4 s
    assert polls == [], requests  # the open stream carries everything
    assert events == [], events  # nothing changed, so no Gradio event
    assert frames < 20, f"{frames} frames in 4 s on an idle page (Gradio's status tracker loop runs at 60 fps)"

    # a change made to the store outside this page (here: the run deleted directly) comes down the stream
    assert store.get(run_id).status == "finished"
    store.delete(run_id)
    wait_text(page, "#run-header", r"was deleted|No run yet")
    assert not any("/queue/join" in u for u in requests)  # down the stream, no Gradio event


def _plan_now(page, pattern: str) -> str:
    """The plan summary once it shows ``pattern`` and is no longer marked out of date."""
    sync_api.expect(page.locator("#plan-summary")).to_contain_text(re.compile(pattern), timeout=WAIT)
    sync_api.expect(page.locator("#plan-summary")).not_to_contain_text("computing the plan", timeout=WAIT)
    text = page.locator("#plan-summary").inner_text()
    assert re.search(pattern, text), f"the plan went stale after showing {pattern!r}: {text[:300]}"
    return text


def _type(page, elem_id: str, value: str) -> None:
    box = page.locator(f"#{elem_id} input, #{elem_id} textarea").first
    box.fill(value)
    box.press("Enter")


def _change(page, elem_id: str, value: str, plan: str) -> str:
    """Type ``value`` into a plan field; the plan summary once it shows ``plan`` (a pattern) and is up to date."""
    _type(page, elem_id, value)
    return _plan_now(page, plan)


def _choose(page, elem_id: str, option: str) -> None:
    page.locator(f"#{elem_id} input").click()
    page.get_by_role("option", name=option).click()


def test_the_plan_shown_is_always_the_plan_of_the_fields(app_url, browser, tmp_path):
    """Every plan field in turn: after each change the plan is the plan of the values on screen (issue:
    a batch change never landed, Steps showed the plan one value behind)."""
    url, store, ctx = app_url
    page = browser.new_page(viewport={"width": 1500, "height": 1100})
    page.goto(url)
    n = 1098
    _plan_now(page, r"Privacy check")
    _change(page, "batch-size", "64", rf"at q = {64 / n:.4g}")
    _change(page, "max-steps", "60", r"over 60 steps")
    _change(page, "max-steps", "30", r"over 30 steps")
    page.get_by_role("radio", name="Epochs").check()
    _change(page, "epochs", "2", rf"over {math.ceil(2 / (64 / n))} steps")
    _change(page, "target-epsilon", "3", r"within ε = 3 over")
    _change(page, "delta", "1e-6", r"δ = 1e-06")
    _change(page, "max-examples-per-user", "3", r"k = 3 examples")
    _choose(page, "accountant", "RDP")  # add/remove only: it needs a size declared public (issue 26)
    wait_text(page, "#delta-error", r"public_dataset_size")
    page.locator("#public-size input").check()
    _plan_now(page, r"one example added or removed")
    page.get_by_role("radio", name="Noise multiplier σ").check()
    _change(page, "noise-multiplier", "1.5", r"With σ = 1.5 over")
    data = tmp_path / "mine.jsonl"
    data.write_text("".join(f'{{"prompt": "question {i}", "response": "answer {i}"}}\n' for i in range(300)))
    page.get_by_role("radio", name="Path on this machine").check()
    _type(page, "data-path", str(data))
    info = wait_text(page, "#data-info", r"N = \d+ training examples \(300 loaded")
    m = int(re.search(r"N = (\d+)", info).group(1))
    _plan_now(page, rf"at q = {64 / m:.4g}")  # RDP: add/remove, q from the size the box declares public


def test_an_audited_run_shows_its_lower_bound_and_the_ledger_counts_it(app_url, browser):
    url, store, ctx = app_url
    page = browser.new_page(viewport={"width": 1500, "height": 1100})
    page.goto(url)
    _plan_now(page, r"Privacy check")
    _change(page, "max-steps", "6", r"over 6 steps")
    page.get_by_role("tab", name="Train").click()
    page.locator("#audit input").check()
    page.locator("#start").click()
    run_id = re.search(r"Started run ([\w-]+)", wait_text(page, "#train-message", r"Started run")).group(1)
    wait_text(page, "#run-header .wb-badge", r"finished", timeout=180_000)
    summary = store.get(run_id).summary
    assert summary["audit"]["kind"] == "gradient_canaries"
    assert summary["audit"]["epsilon_lower_bound"] <= summary["epsilon"], "a lower bound above the claim is a bug"
    # the epsilon chart carries the audit's running lower bound beside the spent curve (series 2 and 1)
    page.locator("#epsilon-plot").scroll_into_view_if_needed()
    page.wait_for_function(f"() => ({POINTS_JS})(['epsilon-plot', 2]) > 0", timeout=WAIT)
    assert points(page, "epsilon-plot", 1) == 6
    assert "audit: empirical lower bound" in page.locator("#epsilon-plot .u-legend").inner_text()
    # the Runs tab's ledger lists the run under the demo data, with the composed total
    page.get_by_role("tab", name="Runs").click()
    ledger = wait_text(page, "#runs-ledger", run_id)
    assert "demo" in ledger and re.search(r"total|composed", ledger, re.I)
    shot(page, "ledger")


# Every change of #plan-summary, with the Steps and Target ε fields' contents at that moment: a plan shown
# unmarked must be the plan of what the fields hold then (issue 27: a session's plan read "ε = 8 over 15
# steps" 4 s after 150 and 3 were typed, with no "computing" mark).
WATCH_SUMMARY_JS = """() => {
  window.__wbSummaryLog = [];
  if (window.__wbWatching) return;
  window.__wbWatching = true;
  const field = (id) => document.querySelector(`#${id} input`).value;
  new MutationObserver(() => {
    const prose = document.querySelector("#plan-summary .prose");  // not Gradio's status tracker beside it
    const text = prose ? prose.innerText : "";
    window.__wbSummaryLog.push({text, steps: field("max-steps"), eps: field("target-epsilon")});
  }).observe(document.getElementById("plan-summary"), {childList: true, subtree: true, characterData: true});
}"""
MARKED_SINCE_JS = """(since) => window.__wbSummaryLog.slice(since).some((e) => e.text.includes("computing the plan"))"""


def _box(page, elem_id: str):
    return page.locator(f"#{elem_id} input, #{elem_id} textarea").first


def _keys(page, elem_id: str, value: str) -> None:
    """Type ``value`` into a field key by key, as a person does: no Enter, no leaving the field."""
    box = _box(page, elem_id)
    box.click()
    box.press("Control+a")
    box.press("Backspace")
    box.press_sequentially(value, delay=60)


def _marked_at_once(page, elem_id: str, value: str) -> None:
    """Clear the field and let the plan settle; then the first keystroke shows the 'computing' mark before
    any plan lands, and the rest is typed; the field keeps the focus throughout (no blur)."""
    _keys(page, elem_id, "")
    sync_api.expect(page.locator("#plan-summary")).not_to_contain_text("computing the plan", timeout=WAIT)
    since = page.evaluate("() => window.__wbSummaryLog.length")
    _box(page, elem_id).press_sequentially(value[0])
    page.wait_for_function(MARKED_SINCE_JS, arg=since, timeout=2_000)
    _box(page, elem_id).press_sequentially(value[1:], delay=60)
    assert _box(page, elem_id).input_value() == value
    assert page.evaluate(f"() => document.activeElement.closest('#{elem_id}') !== null"), "the field lost the focus"


def test_typing_into_each_plan_field_updates_the_plan_without_enter_or_blur(app_url, browser, tmp_path):
    """Issue 27 item 2: every Plan field, text fields included, marks the plan out of date at the first
    keystroke and shows the plan of what was typed without Enter or leaving the field; with a second browser
    session computing at the same time, no plan for other values than the fields ever shows unmarked."""
    url, store, ctx = app_url
    page = browser.new_page(viewport={"width": 1500, "height": 1100})
    page.goto(url)
    _plan_now(page, r"Privacy check")
    page.evaluate(WATCH_SUMMARY_JS)
    n = 1098
    typed = [  # (field, value, the plan once it is up to date)
        ("batch-size", "64", rf"at q = {64 / n:.4g}"),
        ("max-steps", "150", r"over 150 steps"),
        ("target-epsilon", "3", r"within ε = 3 over 150 steps"),
        ("delta", "1e-6", r"δ = 1e-06"),
        ("max-grad-norm", "0.5", r"δ = 1e-06"),
        ("max-examples-per-user", "3", r"k = 3 examples"),
        ("labels", "no, yes", r"over 150 steps"),
    ]
    for elem_id, value, plan in typed:
        _marked_at_once(page, elem_id, value)
        _plan_now(page, plan)
    page.get_by_role("radio", name="Epochs").check()
    _plan_now(page, r"Privacy check")
    _marked_at_once(page, "epochs", "2")
    _plan_now(page, rf"over {math.ceil(2 / (64 / n))} steps")
    page.get_by_role("radio", name="Noise multiplier σ").check()
    _plan_now(page, r"With σ")
    _marked_at_once(page, "noise-multiplier", "1.5")
    _plan_now(page, r"With σ = 1.5 over")
    data = tmp_path / "mine.jsonl"
    data.write_text("".join(f'{{"prompt": "question {i}", "response": "answer {i}"}}\n' for i in range(300)))
    page.get_by_role("radio", name="Path on this machine").check()
    _marked_at_once(page, "data-path", str(data))
    wait_text(page, "#data-info", r"N = \d+ training examples \(300 loaded")
    _plan_now(page, r"With σ = 1.5 over")

    # two sessions: this one types while the other's plans compute (the queue runs one plan at a time)
    page.get_by_role("radio", name="Demo dataset").check()
    page.get_by_role("radio", name="Target ε").check()
    page.get_by_role("radio", name="Steps").check()
    other = browser.new_page(viewport={"width": 1500, "height": 1100})
    other.goto(url)
    _plan_now(other, r"Privacy check")
    _plan_now(page, r"within ε = 3 over 150 steps")
    page.evaluate(WATCH_SUMMARY_JS)
    _keys(other, "max-steps", "700")  # PLD and PRV over 700 steps: seconds of CPU
    _keys(page, "max-steps", "15")
    _plan_now(page, r"over 15 steps")
    _keys(other, "max-steps", "900")
    _keys(page, "max-steps", "150")
    _keys(page, "target-epsilon", "8")
    _plan_now(page, r"within ε = 8 over 150 steps")
    log = page.evaluate("() => window.__wbSummaryLog")
    shown = [e for e in log if e["text"].strip() and "computing the plan" not in e["text"]]
    assert shown, log
    for e in (e for e in shown if e["steps"]):  # an unmarked plan is the plan of the fields at that moment
        assert f"over {int(e['steps']):,} steps" in e["text"], e
        claimed = re.search(r"ε = (\S+) over", e["text"])
        assert claimed is None or claimed.group(1) == e["eps"], e
    shot(page, "plan_typed")


def test_a_logged_in_page_streams_the_run_and_draws_what_python_computed(_workbench_home, browser):
    """With a login (``workbench app --auth``): Gradio's login page, then the dashboard's stream, whose key the
    page gets from Gradio's API (workbench/app/live.py), draws a stored run with the smoothed loss and the titles
    that present/live.py computed: dashboard.js only draws."""
    from factories import fake_run, free_port

    from workbench.app import build_app, serve
    from workbench.present.live import rows
    from workbench.store.runs import RunStore

    run_id = "20250101-000000-aaaaaa"
    store = RunStore(_workbench_home)
    fake_run(store, run_id, steps=40)
    app = build_app(store, defaults={"model": "tiny"})
    _, url, _ = serve(app, port=free_port(), block=False, quiet=True, auth="ann:secret")
    try:
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(url)
        page.locator("input[type=password]").wait_for(timeout=WAIT)
        page.locator("input:not([type=password])").first.fill("ann")
        page.locator("input[type=password]").fill("secret")
        page.get_by_role("button", name=re.compile("log ?in", re.I)).click()
        page.get_by_role("tab", name="Train").click()
        wait_text(page, "#run-header", run_id)
        sent = rows(store.events(run_id))
        for panel in ("loss-plot", "hist-plot", "noise-plot"):
            page.locator(f"#{panel}").scroll_into_view_if_needed()
            drawn = f"() => Number(document.getElementById('{panel}').dataset.draws || 0) > 0"
            page.wait_for_function(drawn, timeout=WAIT)
        page.wait_for_function(f"() => ({POINTS_JS})(['loss-plot', 1]) == 40", timeout=WAIT)  # the smoothed line
        assert points(page, "loss-plot", 0) == 40
        sync_api.expect(page.locator("#hist-plot .wb-chart-title")).to_have_text(sent["steps"][-1]["norm_title"])
        sync_api.expect(page.locator("#noise-plot .wb-chart-title")).to_have_text(sent["modules"]["title"])
    finally:
        app.close()
