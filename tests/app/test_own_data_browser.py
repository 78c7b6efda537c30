"""Own data for classification, end to end in a real browser (issue 27 item 3): upload a TSV whose columns no schema
recognises by name, read the message naming its columns, map them in the Columns field, see the schema, the labels
with their counts and the people, list the labels, pick the model from the list of every shipped one, train the
tiny model, and read the validation accuracy beside the untuned model and the majority class.

Headless Debian Chromium driven by Playwright, as test_app_browser.py; a screenshot goes to artifacts/browser/.
"""

from __future__ import annotations

import re
import shutil
import sys
from collections import Counter
from pathlib import Path

import pytest
from factories import serve_app
from test_own_data import MAPPING, write_reviews

pytestmark = pytest.mark.browser

if shutil.which("chromium") is None:
    pytest.skip("Debian's chromium is not installed (`make browser` installs it)", allow_module_level=True)
pytest.importorskip("gradio")
sync_api = pytest.importorskip("playwright.sync_api")

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))  # the Chromium launch the benchmarks use
from chromium import launch_chromium  # noqa: E402

WAIT = 90_000  # ms: the machine is shared
DEFAULTS = {
    "model": "tiny",
    "max_steps": 4,
    "batch_size": 16,
    "physical_batch_size": 16,
    "max_seq_len": 32,
    "eval_max_examples": 64,
    "generate_max_new_tokens": 0,
}


@pytest.fixture
def app_url(_workbench_home):
    yield from serve_app(_workbench_home, DEFAULTS)


def wait_text(page, selector: str, pattern: str, timeout: int = WAIT) -> str:
    sync_api.expect(page.locator(selector)).to_contain_text(re.compile(pattern), timeout=timeout)
    return page.locator(selector).inner_text()


def type_in(page, elem_id: str, value: str) -> None:
    box = page.locator(f"#{elem_id} input, #{elem_id} textarea").first
    box.fill(value)
    box.press("Enter")


def test_upload_a_tsv_map_its_columns_list_its_labels_train_and_read_the_majority_baseline(app_url, tmp_path):
    from workbench.config import RunConfig
    from workbench.engine.prepare import load_splits

    url, store, ctx = app_url
    data = write_reviews(tmp_path / "reviews.tsv")
    counts = Counter(line.split("\t")[1] for line in data.read_text().splitlines()[1:])
    with sync_api.sync_playwright() as p:
        browser = launch_chromium(p)
        page = browser.new_page(viewport={"width": 1500, "height": 1100})
        page.goto(url)
        wait_text(page, "#data-info", r"N = 1,098")  # the demo first

        # upload: review / sentiment / author match no schema by name, and the message lists the columns
        page.get_by_label("Upload a file").check()
        page.locator("#data-upload input[type=file]").set_input_files(str(data))
        wait_text(page, "#upload-msg", r"Stored reviews.tsv")
        wait_text(page, "#data-info", r"review, sentiment, author")

        # map them: the panel shows the schema, the columns, the labels with their counts, the people, examples
        type_in(page, "columns", MAPPING)
        info = wait_text(page, "#data-info", r"Read as classification")
        assert "text ← review, label ← sentiment, user_id ← author" in info
        assert f"neg {counts['neg']} · pos {counts['pos']}" in info and "needs them listed in Labels" in info
        assert re.search(r"People: 30 \(author\), examples per person: min 3 · median 3\.0 · max 3", info)
        assert "a dull film, number 0" in info  # the first example, rendered in the table
        type_in(page, "labels", "neg, pos")
        sync_api.expect(page.locator("#data-info")).not_to_contain_text("needs them listed", timeout=WAIT)
        wait_text(page, "#plan-summary", r"over 4 steps")

        # Train: every shipped model is offered; the tiny one trains the classifier
        page.get_by_role("tab", name="Train").click()
        page.locator("#model input").click()
        for name in ("default", "tiny", "minilm"):
            sync_api.expect(page.get_by_role("option", name=name, exact=True)).to_be_visible(timeout=WAIT)
        page.get_by_role("option", name="tiny", exact=True).click()
        page.locator("#start").click()
        run_id = re.search(r"Started run ([\w-]+)", wait_text(page, "#train-message", r"Started run")).group(1)
        wait_text(page, "#run-header .wb-badge", r"finished", timeout=180_000)

        # the oracle: the validation split's own labels, counted here
        run = store.get(run_id)
        cfg = RunConfig.from_dict(run.config)
        _, val = load_splits(cfg)
        label, count = Counter(r.label for r in val.records).most_common(1)[0]
        share = count / len(val.records)
        line = wait_text(page, "#wb-baseline", r"majority class")
        assert "not covered by ε" in line
        assert re.search(
            rf'accuracy [\d.]+ \(untuned [\d.]+, [-+][\d.e-]+; majority class "{label}" {share:.3g}, ', line
        )
        final = run.summary
        at_prior = final["prediction_share"] >= 0.99 or final["accuracy"] <= share
        assert (page.locator("#wb-prior").count() == 1) == at_prior
        if at_prior:
            assert "nothing learned beyond the class frequencies" in page.locator("#wb-prior").inner_text()
        Path(ROOT / "artifacts" / "browser").mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ROOT / "artifacts" / "browser" / "own_data.png"), full_page=True)
        browser.close()
