"""What a browser watching the Train tab costs per training step, panel by panel, with no training.

    python benchmarks/dashboard_cost.py [--source HOME] [--period S] [--window S]

The throughput benchmark (app_overhead.py) measures the sum of everything on 2 shared cores, where
one window's figure moves by +-5 %; this one isolates the browser's share.  It copies the steps of
a stored run (``--source``: a WORKBENCH_HOME; default: a fresh 30-step run of the tiny model) into
an empty store as a live run, one step every ``--period`` seconds, while the app serves it and a
headless Chromium watches the Train tab.  Windows of ``--window`` seconds: first with no new steps
(the idle page), then with steps, once with every live panel drawing and once with each panel
alone (``--each``: the other panels' draws are skipped), for each renderer of the live panels
(``--renderers``: the light canvas renderer the Train tab uses while a run trains, and Plotly).  For
each: the browser's CPU per step beyond the idle page (all Chromium processes, from /proc) and the
milliseconds of JavaScript each panel's draw took per step.  Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from app_overhead import CHROMIUM_ARGS, descendants_cpu, env_for, free_port, train_command, wait_http  # noqa: E402

# Replays the source store's run into the target store: ``n_first`` steps at once, then one step
# every ``period`` seconds (the benchmark pauses and resumes it with SIGSTOP/SIGCONT).
REPLAY = """
import sys, time
from dataclasses import replace
from workbench.store.runs import RunStore
source, target, period, n_first = RunStore(sys.argv[1]), RunStore(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
run = source.list()[0]
events = [e for _, e in source.events(run.id)]
started = next(e for e in events if e.kind == "run_started")
steps = [e for e in events if e.kind == "step"]
rid = "replay-" + str(int(time.time()))
target.create_run(rid, config=run.config, name="replay")
target.append(replace(started, run_id=rid, time=time.time(), planned_steps=100_000))
k = 0
def emit():
    global k
    e = steps[k % len(steps)]
    target.append(replace(e, run_id=rid, step=k + 1, time=time.time()))
    k += 1
for _ in range(n_first):
    emit()
print("ready", flush=True)
while True:
    time.sleep(period)
    emit()
"""

# Times each live panel's draw (Plotly.react, or the light renderer's draw on its canvas), and skips
# those not in window.__wbOnly (when set).  window.__wbRenderer = "plotly" keeps the live panels on
# Plotly while the run trains (workbench/app/liveplot.py), for the comparison.
PANELS = ("loss-plot", "epsilon-plot", "hist-plot", "heatmap-plot", "noise-plot")
TIMING_JS = """
window.__wbOnly = null; window.__wbMs = {};
function timed(object, name, pass) {
  const original = object[name];
  object[name] = function (host, ...rest) {
    const panel = host.closest(__PANELS__);
    const id = panel ? panel.id : "other";
    if (window.__wbOnly && !window.__wbOnly.includes(id)) return pass(host);
    const t = performance.now();
    const out = original.call(this, host, ...rest);
    window.__wbMs[id] = (window.__wbMs[id] || 0) + performance.now() - t;
    return out;
  };
}
for (const [global, name, pass] of [["Plotly", "react", (h) => Promise.resolve(h)], ["__wbCanvasPlot", "draw", () => ({ points: [], ranges: {} })]]) {
  let value;
  Object.defineProperty(window, global, { configurable: true, get() { return value; }, set(v) {
    value = v; timed(v, name, pass);
  }});
}
""".replace("__PANELS__", json.dumps(",".join("#" + p for p in PANELS)))


def source_run(home: Path) -> None:
    """A 30-step run of the tiny model in ``home``."""
    cfg = {
        "model": "tiny",
        "data": "demo",
        "max_steps": 30,
        "batch_size": 16,
        "noise_multiplier": 1.0,
        "eval_every": 100_000,
        "seed": 0,
    }
    subprocess.run(
        train_command(cfg), env=env_for(home), check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


def main() -> None:
    from playwright.sync_api import sync_playwright

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--source", default=None, help="a WORKBENCH_HOME whose first run is replayed (default: a new tiny run)"
    )
    ap.add_argument("--period", type=float, default=2.0, help="seconds between replayed steps")
    ap.add_argument("--window", type=float, default=30.0, help="seconds per window")
    ap.add_argument(
        "--renderers",
        default="canvas,plotly",
        help="the live panels' renderers to measure, in turn: canvas (the default while a run trains), plotly",
    )
    ap.add_argument("--each", action="store_true", help="also measure each panel alone")
    args = ap.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="wb-dashboard-cost-"))
    source = Path(args.source) if args.source else scratch / "source"
    if not args.source:
        source_run(source)
    home = scratch / "live"
    env = env_for(home)
    replay = subprocess.Popen(
        [sys.executable, "-c", REPLAY, str(source), str(home), str(args.period), "30"],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    replay.stdout.readline()
    os.kill(replay.pid, signal.SIGSTOP)
    port = free_port()
    code = (
        "from workbench.app import build_app, serve; "
        f"serve(build_app(defaults={{'model': 'tiny'}}), port={port}, block=True, quiet=True)"
    )
    server = subprocess.Popen(
        [sys.executable, "-c", code], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    result: dict = {"period_s": args.period, "window_s": args.window}
    try:
        url = f"http://127.0.0.1:{port}/"
        wait_http(url)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.add_init_script(TIMING_JS)
            page.goto(url)
            page.locator("#run-header .wb-badge", has_text="running").wait_for(timeout=120_000)
            page.wait_for_timeout(15_000)  # settled: the plan computed, every panel drawn

            def window(stepping: bool) -> tuple[float, dict]:
                if stepping:
                    os.kill(replay.pid, signal.SIGCONT)
                page.evaluate("() => { window.__wbMs = {}; }")
                b0, t0 = descendants_cpu(os.getpid(), exclude=server.pid), time.time()
                time.sleep(args.window)
                b1, t1 = descendants_cpu(os.getpid(), exclude=server.pid), time.time()
                if stepping:
                    os.kill(replay.pid, signal.SIGSTOP)
                return (b1 - b0) / (t1 - t0), page.evaluate("() => window.__wbMs")

            idle, _ = window(False)
            result["idle_browser_cpu_per_s"] = round(idle, 4)
            for renderer in args.renderers.split(","):
                page.evaluate("(r) => { window.__wbRenderer = r; }", None if renderer == "canvas" else renderer)
                for only in ("all", *(PANELS if args.each else ())):
                    page.evaluate("(o) => { window.__wbOnly = o; }", None if only == "all" else [only])
                    cpu, ms = window(True)
                    kinds = page.evaluate(
                        "() => [...document.querySelectorAll('.wb-live-plot')].map(h => h.dataset.renderer)"
                    )
                    row = {
                        "browser_cpu_per_step": round((cpu - idle) * args.period, 4),
                        "drawn_by": sorted(set(kinds) - {None}),
                        "draw_ms_per_step": {k: round(v * args.period / args.window, 1) for k, v in ms.items()},
                    }
                    result.setdefault(renderer, {})[only] = row
                    print(renderer, only, json.dumps(row), file=sys.stderr)
            browser.close()
    finally:
        server.terminate()
        replay.kill()
        server.wait(30)
        shutil.rmtree(scratch, ignore_errors=True)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
