"""End to end in a real browser: JupyterLab in headless Chromium runs notebook 04 in fast mode and
renders the live Dashboard; the screenshot goes to artifacts/lab_dashboard.png.

Debian's chromium (`make browser`), never a downloaded Playwright browser.  JupyterLab runs on a
free localhost port with a token, in a temporary root holding a copy of the notebook (its autosave
never touches notebooks/), with its own config, settings, workspace and runtime folders.
Select with `-m browser`.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from factories import free_port

pytestmark = [pytest.mark.browser, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK = ROOT / "notebooks" / "04_dp_lora_fine_tune.ipynb"
ARTIFACTS = ROOT / "artifacts"
sys.path.insert(0, str(ROOT / "benchmarks"))  # the Chromium launch the benchmarks use
from chromium import launch_chromium  # noqa: E402


def _api(base: str, token: str, path: str, method: str = "GET"):
    req = urllib.request.Request(f"{base}{path}", method=method, headers={"Authorization": f"token {token}"})
    with urllib.request.urlopen(req, timeout=5) as resp:
        body = resp.read()
    return json.loads(body) if body else None


@pytest.fixture
def lab(tmp_path):
    """A JupyterLab server started for this test; yields (base url, token); stopped afterwards."""
    if shutil.which("chromium") is None:
        pytest.skip("Debian's chromium is not installed (`make browser`)")
    pytest.importorskip("playwright.sync_api")
    pytest.importorskip("jupyterlab")
    root = tmp_path / "root"
    root.mkdir()
    shutil.copy(NOTEBOOK, root / NOTEBOOK.name)
    settings = tmp_path / "lab-settings" / "@jupyterlab"
    for extension, name, values in (
        ("apputils-extension", "notification", {"fetchNews": "false", "checkForUpdates": False}),  # no news toast
        # no "Select Kernel" dialog; every cell stays attached (no virtual scrolling) so plots render off-screen too
        ("notebook-extension", "tracker", {"autoStartDefaultKernel": True, "windowingMode": "none"}),
    ):
        (settings / extension).mkdir(parents=True, exist_ok=True)
        (settings / extension / f"{name}.jupyterlab-settings").write_text(json.dumps(values))
    port, token = free_port(), secrets.token_hex(16)
    env = {
        **os.environ,
        "WORKBENCH_FAST": "1",
        "WORKBENCH_HOME": str(tmp_path / "wbhome"),
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "JUPYTER_CONFIG_DIR": str(tmp_path / "jupyter-config"),
        "JUPYTER_RUNTIME_DIR": str(tmp_path / "jupyter-runtime"),
        "JUPYTERLAB_SETTINGS_DIR": str(tmp_path / "lab-settings"),
        "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "lab-workspaces"),
    }
    log = open(tmp_path / "lab.log", "w")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "jupyterlab",
            "--no-browser",
            f"--port={port}",
            "--ServerApp.ip=127.0.0.1",
            f"--IdentityProvider.token={token}",
            f"--ServerApp.root_dir={root}",
            "--ServerApp.open_browser=False",
            "--ServerApp.port_retries=0",
            "--LabApp.news_url=None",
        ]
        + (["--allow-root"] if os.geteuid() == 0 else []),
        cwd=root,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                _api(base, token, "/api/status")
                break
            except (urllib.error.URLError, ConnectionError, OSError):
                if proc.poll() is not None or time.monotonic() > deadline:
                    log.flush()
                    pytest.fail(f"JupyterLab did not start:\n{(tmp_path / 'lab.log').read_text()[-3000:]}")
                time.sleep(0.5)
        yield base, token
    finally:
        try:  # shut the kernels down through the server, then the server itself
            for kernel in _api(base, token, "/api/kernels") or []:
                _api(base, token, f"/api/kernels/{kernel['id']}", method="DELETE")
        except Exception:
            pass
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the group we started (start_new_session): the server and its kernel
            proc.wait(10)
        log.close()


def _wait_for_kernel(page, timeout: float = 90.0) -> None:
    """Accept the "Select Kernel" dialog if Lab shows one (the notebook's own python3), then wait until
    the status bar says the kernel is idle."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        dialog = page.locator(".jp-Dialog .jp-Dialog-button.jp-mod-accept")
        if dialog.count() and dialog.first.is_visible():
            dialog.first.click()
        status = page.locator(".jp-StatusBar-Widget", has_text="|").all_inner_texts()
        if any("Idle" in t and "No Kernel" not in t for t in status):
            return
        page.wait_for_timeout(500)
    raise AssertionError(f"the kernel did not start: status bar {status}")


def test_jupyterlab_runs_notebook_04_and_renders_the_live_dashboard(lab):
    from playwright.sync_api import sync_playwright

    base, token = lab
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = launch_chromium(p)
        try:
            page = browser.new_page(viewport={"width": 1500, "height": 1900})
            page.goto(f"{base}/lab/tree/{NOTEBOOK.name}?token={token}")
            page.locator(".jp-NotebookPanel").first.wait_for(timeout=60_000)
            _wait_for_kernel(page)
            page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
            page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()

            dashboard = page.locator(".workbench-dashboard").first
            dashboard.wait_for(timeout=120_000)
            dashboard.scroll_into_view_if_needed()
            page.wait_for_function(
                """() => /finished|failed/.test(document.querySelector('.workbench-dashboard').innerText)""",
                timeout=180_000,
            )
            text = dashboard.inner_text()
            assert "finished" in text and "step 8 / 8" in text, text[:500]
            # Every panel drew its data (each FigureWidget loads plotly.js on its own: give them time).
            page.wait_for_function(
                """() => { const plots = document.querySelectorAll('.workbench-dashboard .js-plotly-plot');
                           return plots.length >= 5 && Array.from(plots).every(p =>
                               p.querySelector('.gtitle') &&
                               p.querySelectorAll('.scatterlayer .trace, .barlayer .trace, .heatmaplayer .hm').length > 0); }""",
                timeout=120_000,
            )
            titles = page.evaluate("""() => Array.from(document.querySelectorAll('.workbench-dashboard .js-plotly-plot'))
                                              .map(p => p.querySelector('.gtitle').textContent)""")
            assert any(t.startswith("Loss") for t in titles) and any("Privacy spent" in t for t in titles), titles
            assert any("8: " in t and "clipped" in t for t in titles), f"the histogram of the last step: {titles}"
            page.wait_for_timeout(1000)
            dashboard.scroll_into_view_if_needed()
            dashboard.screenshot(path=str(ARTIFACTS / "lab_dashboard.png"))
            # The rest of the notebook ran too (export, peft load, generation) without an error.
            page.wait_for_function(
                """() => document.querySelector('.jp-NotebookPanel .jp-Notebook-ExecutionIndicator')
                                 .getAttribute('data-status') === 'idle'""",
                timeout=120_000,
            )
            stderr = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']")
            tracebacks = [
                t for t in stderr.all_inner_texts() if "Traceback" in t or "Error" in t.splitlines()[0:1][0:1]
            ]
            assert not tracebacks, tracebacks[0][:2000]
            page.screenshot(path=str(ARTIFACTS / "lab_notebook.png"))
        except Exception as err:
            page.screenshot(path=str(ARTIFACTS / "lab_failure.png"), full_page=True)
            plots = page.evaluate("""() => Array.from(document.querySelectorAll('.js-plotly-plot')).map(p =>
                JSON.stringify({traces: (p.data || []).length, title: ((p.layout || {}).title || {}).text,
                                width: (p.layout || {}).width, drawn: !!p._fullLayout}))""")
            raise AssertionError(f"{err}\nplots in the page: {plots}") from err
        finally:
            browser.close()
