"""End to end in a real browser: headless Debian Chromium driven by Playwright (sync API).

The app runs in this process on a free localhost port over a temporary run store; the browser
plans, trains the tiny model, watches the plots gain points, stops, trains again, compares the
two runs, exports one and deletes the other.  Screenshots of each tab go to artifacts/browser/
(set WORKBENCH_UPDATE_SCREENSHOT=1 to copy the mid-run Train tab to assets/train_tab.png).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import tempfile
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

CHROMIUM = shutil.which("chromium")
if CHROMIUM is None:
    pytest.skip("Debian's chromium is not installed (`make browser` installs it)", allow_module_level=True)
pytest.importorskip("gradio")
sync_api = pytest.importorskip("playwright.sync_api")

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "artifacts" / "browser"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
# Small, fast tiny-model runs: 0.1-0.4 s a step on two busy CPU cores.  The first run is long
# enough never to finish before the test stops it; the second (12 steps) runs to the end.
DEFAULTS = {"model": "tiny", "max_steps": 3000, "batch_size": 8, "physical_batch_size": 8, "max_seq_len": 64,
            "eval_every": 10, "eval_max_examples": 8, "generate_max_new_tokens": 8}
WAIT = 90_000  # ms: generous, the machine is shared

POINTS_JS = """([id, trace]) => {
  const el = document.querySelector(`#${id} .js-plotly-plot`);
  const d = el && el._fullData && el._fullData[trace];
  return d && d.x ? d.x.length : 0;
}"""
TRACES_JS = "(id) => { const el = document.querySelector(`#${id} .js-plotly-plot`); return el && el.data ? el.data.length : 0; }"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def app_url(_workbench_home):
    from workbench.app import build_app, serve
    from workbench.store.runs import RunStore

    store = RunStore(_workbench_home)
    app = build_app(store, defaults=DEFAULTS)
    _, url, _ = serve(app, port=_free_port(), block=False, quiet=True)
    yield url, store, app.workbench
    for session in app.workbench.sessions.values():
        session.stop()
        session.wait(60)
    app.close()


@pytest.fixture
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


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

    # Plan: N of the demo data, the noise needed, curves for RDP, PRV and PLD
    wait_text(page, "#data-info", r"N = 1,185")
    wait_text(page, "#plan-summary", r"must be\s+σ = [0-9.]+ \(PLD")
    page.wait_for_function(TRACES_JS, arg="plan-plot", timeout=WAIT)
    wait_text(page, "#plan-summary", r"ε after the last step: RDP .* PRV .* PLD")
    assert page.evaluate(TRACES_JS, "plan-plot") == 3
    shot(page, "plan")

    # Upload: the file lands in the app's own folder and its N is shown; then back to the demo data
    data = Path(store.home).parent / "mine.jsonl"
    data.write_text("".join(f'{{"prompt": "question {i}", "response": "answer {i}"}}\n' for i in range(120)))
    page.get_by_label("Upload a file").check()
    page.locator("#data-upload input[type=file]").set_input_files(str(data))
    wait_text(page, "#upload-msg", r"Stored mine.jsonl")
    wait_text(page, "#data-info", r"N = 108 training examples")
    assert [p.name.split("-", 1)[1] for p in (Path(store.home) / "uploads").iterdir()] == ["mine.jsonl"]
    assert not list(Path(tempfile.gettempdir(), "gradio").rglob("mine.jsonl"))  # Gradio's copy is gone
    page.get_by_label("Demo dataset").check()
    wait_text(page, "#data-info", r"N = 1,185")

    # Bad input: a message beside the control, and Start starts nothing
    page.locator("#delta input, #delta textarea").first.fill("2")
    page.locator("#delta input, #delta textarea").first.press("Enter")
    wait_text(page, "#plan-error", r"delta")
    page.get_by_role("tab", name="Train").click()
    page.locator("#start").click()
    wait_text(page, "#train-message", r"delta.*less than 1")
    assert store.list() == []
    page.get_by_role("tab", name="Plan").click()
    page.locator("#delta input, #delta textarea").first.fill("")
    page.locator("#delta input, #delta textarea").first.press("Enter")
    sync_api.expect(page.locator("#plan-error")).to_have_text("", timeout=WAIT)

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
    shot(page, "train_finished")

    # Compare the two
    page.get_by_role("tab", name="Compare").click()
    for run_id in (first, second):
        page.locator("#compare-picker input").click()
        page.get_by_role("option", name=re.compile(run_id)).click()
    page.wait_for_function(f"() => ({TRACES_JS})('compare-epsilon') == 2", timeout=WAIT)
    wait_text(page, "#compare-diff", r"max_steps")
    assert page.evaluate(TRACES_JS, "compare-scatter") == 2
    page.evaluate("document.activeElement && document.activeElement.blur()")  # close the dropdown's list
    page.get_by_text("Settings that differ").click()
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
    the page's poll is a long-poll of the version token that the server holds (no Gradio event, no
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
    polls = [u for u in requests if "/workbench/version" in u]
    events = [u for u in requests if "/queue/join" in u]
    # a long-poll held by the server: at most one request in 4 s (one ended its 15 s wait), not one a second
    assert len(polls) <= 1 and all("since=" in u for u in polls), requests
    assert events == [], events  # nothing changed, so no Gradio event
    assert frames < 20, f"{frames} frames in 4 s on an idle page (Gradio's status tracker loop runs at 60 fps)"

    # a change made to the store outside this page (here: the run deleted directly) answers the held poll
    assert store.get(run_id).status == "finished"
    store.delete(run_id)
    wait_text(page, "#run-header", r"was deleted|No run yet")
    assert any("/queue/join" in u for u in requests)
