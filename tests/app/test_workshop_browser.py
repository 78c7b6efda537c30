"""Workshop mode in a real browser (issue 31): two participants and the instructor, each in a browser context of
their own, on one `workbench app --workshop` server training the tiny model in its training worker process.

The instructor pauses the queue; ann starts two runs, then bob one: bob's first run is placed before ann's second
(round-robin, not first come first served) and each page says its place ("2nd in line, ..."). Bob's Runs and
Compare tabs hold his run only. The instructor resumes, the three runs train one after another to the end, and the
class view shows the frontier of the three, the best at or below the target epsilon and the ledger's total for the
shared dataset; bob's view with names anonymised shows ann as "participant 1"."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from factories import free_port

pytestmark = pytest.mark.browser

if shutil.which("chromium") is None:
    pytest.skip("Debian's chromium is not installed (`make browser` installs it)", allow_module_level=True)
pytest.importorskip("gradio")
sync_api = pytest.importorskip("playwright.sync_api")

ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts" / "browser"
DEFAULTS = {
    "model": "tiny",
    "max_steps": 6,
    "batch_size": 8,
    "physical_batch_size": 8,
    "max_seq_len": 64,
    "eval_max_examples": 8,
    "generate_max_new_tokens": 4,
}
WAIT = 120_000
PEOPLE = "name,password,role\nteacher,t-pass,instructor\nann,a-pass\nbob,b-pass\n"


def wait_text(page, selector: str, pattern: str, timeout: int = WAIT) -> str:
    loc = page.locator(selector)
    sync_api.expect(loc).to_have_text(re.compile(pattern, re.S), timeout=timeout)
    return loc.inner_text()


def log_in(browser, url: str, name: str, password: str):
    page = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
    page.goto(url)
    page.locator("input[type=password]").wait_for(timeout=WAIT)
    page.locator("input:not([type=password])").first.fill(name)
    page.locator("input[type=password]").fill(password)
    page.get_by_role("button", name=re.compile("log ?in", re.I)).click()
    page.get_by_role("tab", name="Train").wait_for(timeout=WAIT)
    return page


def start(page, pattern: str) -> str:
    page.get_by_role("tab", name="Train").click()
    before = page.locator("#train-message").inner_text()
    page.locator("#start").click()
    sync_api.expect(page.locator("#train-message")).not_to_have_text(before, timeout=WAIT)
    text = wait_text(page, "#train-message", pattern)
    return re.search(r"`?(\d{8}-\d{6}-\w+)`?", text).group(1)


def workshop_tab(page):
    page.get_by_role("tab", name="Workshop").click()
    page.locator("#workshop-refresh").click()


@pytest.fixture
def workshop_url(_workbench_home, tmp_path):
    from workbench.app import build_app, serve
    from workbench.app.workshop import Workshop
    from workbench.store.runs import RunStore

    people = tmp_path / "people.csv"
    people.write_text(PEOPLE)
    store = RunStore(_workbench_home)
    # as `workbench app --workshop` has it: the runs train in a worker process (training_pool.py)
    room = Workshop.from_options(store, participants_file=str(people), max_queued=2)
    app = build_app(store, defaults=DEFAULTS, workshop=room)
    _, url, _ = serve(app, port=free_port(), block=False, quiet=True)
    yield url, store, room
    for q in room.queue.snapshot():
        room.queue.cancel(q.run_id)
    room.queue.wait_idle(120)
    app.close()


def test_two_participants_and_the_instructor(workshop_url, browser):
    url, store, room = workshop_url
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    teacher = log_in(browser, url, "teacher", "t-pass")
    workshop_tab(teacher)
    teacher.locator("#workshop-pause").click()
    wait_text(teacher, "#workshop-message", "Paused")

    ann = log_in(browser, url, "ann", "a-pass")
    ann1 = start(ann, r"queued\*?\*?: 1st in line")
    ann2 = start(ann, r"queued\*?\*?: 2nd in line")
    bob = log_in(browser, url, "bob", "b-pass")
    bob1 = start(bob, r"queued\*?\*?: 2nd in line")  # before ann's second run: round-robin
    wait_text(bob, "#run-header", r"queued: 2nd in line.*paused")
    # ann's second run is now 3rd; her page says so
    workshop_tab(ann)
    wait_text(ann, "#workshop-queue-line", rf"{ann2}`?: 3rd in line")
    assert [q.run_id for q in room.queue.snapshot()] == [ann1, bob1, ann2]
    # over the limit: one message, nothing stored
    before = len(store.list())
    start(ann, r"ann already has 2 run\(s\) waiting")
    assert len(store.list()) == before

    # isolation: bob's Runs tab and Compare list hold his run only; his queue table hides ann's run ids
    bob.get_by_role("tab", name="Runs").click()
    wait_text(bob, "#runs-table", bob1)
    assert ann1 not in bob.locator("#runs-table").inner_text()
    workshop_tab(bob)
    wait_text(bob, "#workshop-queue", "another participant")
    assert ann1 not in bob.locator("#workshop-queue").inner_text()
    assert bob.locator("#workshop-pause").count() == 0 or not bob.locator("#workshop-pause").is_visible()
    # the instructor sees every run and who started it
    workshop_tab(teacher)
    table = wait_text(teacher, "#workshop-queue", bob1)
    assert ann1 in table and ann2 in table and "bob" in table
    teacher.screenshot(path=str(ARTIFACTS / "workshop_queue.png"), full_page=True)

    # the instructor resumes; all three train to the end
    teacher.locator("#workshop-resume").click()
    wait_text(teacher, "#workshop-message", "Resumed")
    assert room.queue.wait_idle(600)
    assert {store.get(r).status for r in (ann1, ann2, bob1)} == {"finished"}
    # an instructor action on a run that has ended: one message, the run kept
    teacher.locator("#workshop-run input, #workshop-run textarea").first.fill(ann1)
    teacher.locator("#workshop-cancel").click()
    wait_text(teacher, "#workshop-message", r"already ended \(finished\): nothing to cancel")
    assert store.get(ann1).status == "finished"

    # bob's ledger: the shared dataset's total over the class's three runs, his own run named, not ann's
    bob.get_by_role("tab", name="Runs").click()
    bob.locator("#runs-refresh, button:has-text('Refresh')").first.click()
    ledger = wait_text(bob, "#runs-ledger", rf"PLD composition of 3 runs.*Your runs on it: {bob1}")
    assert ann1 not in ledger and ann2 not in ledger
    # the class view: three points, the best at the target, the ledger's total for the shared dataset
    target = teacher.locator("#workshop-target input")
    target.fill("50")
    target.press("Enter")
    workshop_tab(teacher)
    text = wait_text(teacher, "#workshop-class", r"Best at ε ≤ 50.*Privacy ledger for this dataset.*3 evaluated run")
    assert re.search(r"\b(ann|bob)\b", text)
    teacher.screenshot(path=str(ARTIFACTS / "workshop_class_view.png"), full_page=True)
    teacher.locator("#workshop-anon input").check()
    workshop_tab(bob)
    wait_text(bob, "#workshop-class", r"3 evaluated run")
    traces = bob.evaluate(
        "() => (document.querySelector('#workshop-frontier .js-plotly-plot') || {}).data.map((t) => t.name)"
    )
    assert "bob (you)" in traces and "participant 1" in traces and "ann" not in traces, traces
