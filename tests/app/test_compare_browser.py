"""The app's Compare tab with a sweep, in a real browser (headless Debian Chromium, Playwright): choose the
sweep, see its runs grouped with seeds aggregated, the frontier with its Pareto front, the parallel
coordinates and the group table; change the grouping and the x axis. The sweep's runs are synthetic
(events written to the store), so nothing trains."""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

import pytest
from factories import free_port
from sweep_helpers import synthetic_sweep

pytestmark = pytest.mark.browser

if shutil.which("chromium") is None:
    pytest.skip("Debian's chromium is not installed (`make browser` installs it)", allow_module_level=True)
pytest.importorskip("gradio")
sync_api = pytest.importorskip("playwright.sync_api")
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))  # the Chromium launch the benchmarks use
from chromium import launch_chromium  # noqa: E402

WAIT = 90_000
PLOT_JS = """(id) => { const el = document.querySelector(`#${id} .js-plotly-plot`);
  return el && el.data ? {n: el.data.length, type: el.data[0] && el.data[0].type,
                          x: el.layout && el.layout.xaxis && el.layout.xaxis.title && el.layout.xaxis.title.text,
                          names: el.data.map((t) => t.name)} : null; }"""
RUNS = [
    (
        f"eps{eps}-C{c}-s{seed}",
        {"target_epsilon": float(eps), "max_grad_norm": c, "seed": seed},
        {
            "eps_final": float(eps),
            "evals": ((5, 2.0 + c, 0.4 + 0.02 * eps), (10, 1.5 + c, 0.5 + 0.02 * eps + 0.01 * seed)),
        },
    )
    for eps in (2, 8)
    for c in (0.1, 1.0)
    for seed in (0, 1)
]


@pytest.fixture
def app_url(_workbench_home):
    from workbench.app import build_app, serve
    from workbench.store.runs import RunStore

    store = RunStore(_workbench_home)
    synthetic_sweep(store, "grid", RUNS)
    app = build_app(store, defaults={"model": "tiny", "max_steps": 4})
    _, url, _ = serve(app, port=free_port(), block=False, quiet=True)
    yield url
    app.close()


def test_compare_tab_groups_a_sweep(app_url):
    with sync_api.sync_playwright() as p:
        browser = launch_chromium(p)
        page = browser.new_page(viewport={"width": 1500, "height": 1400})
        page.goto(app_url)
        page.get_by_role("tab", name="Compare").click()
        page.locator("#compare-picker input").click()
        page.get_by_role("option", name="sweep grid (8/8 finished)").click()
        page.evaluate("document.activeElement && document.activeElement.blur()")  # close the dropdown's list
        table = page.locator("#compare-groups")
        sync_api.expect(table).to_contain_text("eps8-C1", timeout=WAIT)
        sync_api.expect(table).to_contain_text("replace_one", timeout=WAIT)
        page.wait_for_function(
            f"() => {{ const r = ({PLOT_JS})('compare-frontier'); return r && r.n == 2; }}", timeout=WAIT
        )
        frontier = page.evaluate(PLOT_JS, "compare-frontier")
        assert frontier["names"] == ["groups", "Pareto front"]
        assert page.evaluate(PLOT_JS, "compare-parcoords")["type"] == "parcoords"
        loss = page.evaluate(PLOT_JS, "compare-group-loss")
        assert loss["x"] == "ε spent" and "eps2-C0.1 (n=2)" in loss["names"]
        # the run-by-run overlay above shows the sweep's eight runs
        page.wait_for_function(
            "() => { const el = document.querySelector('#compare-epsilon .js-plotly-plot');"
            " return el && el.data && el.data.length == 8; }",
            timeout=WAIT,
        )
        # the x axis: tokens seen
        page.locator("#compare-x").get_by_text("tokens seen").click()
        page.wait_for_function(
            f"() => {{ const r = ({PLOT_JS})('compare-group-loss'); return r && r.x == 'tokens seen'; }}", timeout=WAIT
        )
        # group by the clipping norm only
        page.locator("#compare-group-by input").click()
        page.locator("#compare-group-by input").fill("max_grad")
        page.get_by_role("option", name="max_grad_norm").click()
        page.keyboard.press("Escape")
        sync_api.expect(table).to_contain_text("C0.1", timeout=WAIT)
        sync_api.expect(table).not_to_contain_text("eps8-C1", timeout=WAIT)
        # "Open a run" beside the privacy-utility scatter: that run's dashboard, in the Train tab
        page.locator("#compare-open-run input").click()
        page.get_by_role("option", name=re.compile(r"^eps8-C1.0-s1 \(")).click()
        page.locator("#compare-open").click()
        sync_api.expect(page.get_by_role("tab", name="Train")).to_have_attribute("aria-selected", "true", timeout=WAIT)
        sync_api.expect(page.locator("#run-header")).to_contain_text("20260101-000007-gri007", timeout=WAIT)
        browser.close()
