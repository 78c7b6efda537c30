"""What an idle app page costs the browser, with and without the frame patch (workbench/app/frames.py).

    python benchmarks/idle_page.py [--seconds 20]

Serves the app (its own process, no run), opens the Train tab in a headless Chromium and, after a
settle, measures for ``--seconds``: the CPU of the browser's processes per second, the app
process's CPU per second, and the animation frames per second the page renders.  Twice: with the
patch (the default) and with ``WORKBENCH_FRAME_PATCH=0``.  Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(__file__))
from app_overhead import CHROMIUM_ARGS, cpu_seconds, descendants_cpu, free_port, wait_http  # noqa: E402

COUNT_FRAMES_JS = (
    "window.__frames = 0; const realFrame = window.requestAnimationFrame.bind(window);"
    "window.requestAnimationFrame = (c) => { window.__frames++; return realFrame(c); };"
)


def measure(patch: bool, seconds: float) -> dict:
    from playwright.sync_api import sync_playwright

    home = tempfile.mkdtemp(prefix="wb-idle-")
    port = free_port()
    env = {**os.environ, "WORKBENCH_HOME": home, "WORKBENCH_FRAME_PATCH": "1" if patch else "0"}
    code = f"from workbench.app import build_app, serve; serve(build_app(defaults={{'model': 'tiny'}}), port={port}, quiet=True)"
    server = subprocess.Popen(
        [sys.executable, "-c", code], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        url = f"http://127.0.0.1:{port}/"
        wait_http(url)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.add_init_script(COUNT_FRAMES_JS)  # before the page's own scripts: counts every frame asked for
            page.goto(url)
            page.get_by_role("tab", name="Train").click()
            page.wait_for_timeout(8000)  # the plan computed on load, the dashboard drawn
            t0, b0, s0, f0 = time.time(), descendants_cpu(os.getpid(), exclude=server.pid), cpu_seconds(server.pid), 0
            f0 = page.evaluate("window.__frames")
            page.wait_for_timeout(seconds * 1000)
            f1 = page.evaluate("window.__frames")
            t1, b1, s1 = time.time(), descendants_cpu(os.getpid(), exclude=server.pid), cpu_seconds(server.pid)
            browser.close()
    finally:
        server.terminate()
        server.wait(30)
        shutil.rmtree(home, ignore_errors=True)
    dt = t1 - t0
    return {
        "frame_patch": patch,
        "browser_cpu_per_s": round((b1 - b0) / dt, 4),
        "app_cpu_per_s": round((s1 - s0) / dt, 4),
        "frames_per_s": round((f1 - f0) / dt, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=20.0)
    args = ap.parse_args()
    print(json.dumps([measure(True, args.seconds), measure(False, args.seconds)], indent=2))


if __name__ == "__main__":
    main()
