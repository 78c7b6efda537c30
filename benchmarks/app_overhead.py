"""Training throughput with the Gradio app attached and a browser watching, against `workbench train`.

    python benchmarks/app_overhead.py [--model tiny|default] [--steps N] [--repeats R]

Each trial trains the same configuration twice, alternating so machine noise hits both alike:
  cli  `workbench train --set ...` in its own process;
  app  the app server (`workbench.app.serve`) in its own process, a headless Chromium on the Train
       tab (it polls the run store once a second and redraws every panel), and the run started
       by pressing Start in that browser.
Throughput is steps per second between the first and the last step event of the run, read from
the run store (so model loading is excluded and evaluations count for both alike).  Prints JSON
with the medians and ``app_over_cli`` (>= 0.95 is the target).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def settings(model: str, steps: int) -> dict:
    return {"model": model, "data": "demo", "max_steps": steps, "batch_size": 16, "physical_batch_size": 16,
            "target_epsilon": 8.0, "max_seq_len": 128, "eval_every": max(1, steps // 3), "eval_max_examples": 16,
            "generate_max_new_tokens": 8, "seed": 0}


def steps_per_second(home: Path) -> float:
    from workbench.store.runs import RunStore

    store = RunStore(home)
    (run,) = store.list()
    steps = [e for _, e in store.events(run.id, kinds=("step",))]
    if run.status != "finished" or len(steps) < 2:
        raise RuntimeError(f"run {run.id} ended {run.status}: {run.reason}")
    return (steps[-1].step - steps[0].step) / (steps[-1].time - steps[0].time)


def env_for(home: Path) -> dict:
    return {**os.environ, "WORKBENCH_HOME": str(home), "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}


def run_cli(cfg: dict) -> float:
    home = Path(tempfile.mkdtemp(prefix="wb-bench-cli-"))
    args = [str(BIN / "workbench"), "train"] + [a for k, v in cfg.items() for a in ("--set", f"{k}={v}")]
    subprocess.run(args, env=env_for(home), check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rate = steps_per_second(home)
    shutil.rmtree(home, ignore_errors=True)
    return rate


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_app(cfg: dict, *, timeout: float) -> float:
    home = Path(tempfile.mkdtemp(prefix="wb-bench-app-"))
    port = free_port()
    code = ("import sys, json; from workbench.app import build_app, serve; "
            f"serve(build_app(defaults=json.loads(sys.argv[1])), port={port}, block=True, quiet=True)")
    server = subprocess.Popen([sys.executable, "-c", code, json.dumps(cfg)], env=env_for(home),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}/"
        _wait_http(url, timeout=120)
        _press_start_and_watch(url, timeout=timeout)
        return steps_per_second(home)
    finally:
        server.terminate()
        server.wait(30)
        shutil.rmtree(home, ignore_errors=True)


def _wait_http(url: str, *, timeout: float) -> None:
    import urllib.request

    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url, timeout=5)
            return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"the app did not answer at {url}")


def _press_start_and_watch(url: str, *, timeout: float) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(url)
        page.get_by_role("tab", name="Train").click()
        page.locator("#start").click()
        page.locator("#run-header .wb-badge", has_text="finished").wait_for(timeout=timeout * 1000)
        browser.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="tiny", choices=["tiny", "default"])
    ap.add_argument("--steps", type=int, default=None, help="steps per run (default: 150 tiny, 20 default)")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    steps = args.steps or (150 if args.model == "tiny" else 20)
    cfg = settings(args.model, steps)
    cli, app = [], []
    for i in range(args.repeats):
        order = (("cli", "app") if i % 2 == 0 else ("app", "cli"))
        for kind in order:
            if kind == "cli":
                cli.append(run_cli(cfg))
            else:
                app.append(run_app(cfg, timeout=1800))
            print(f"trial {i + 1} {kind}: {(cli if kind == 'cli' else app)[-1]:.2f} steps/s", file=sys.stderr)
    result = {
        "model": args.model,
        "steps": steps,
        "repeats": args.repeats,
        "cli_steps_per_s": statistics.median(cli),
        "app_steps_per_s": statistics.median(app),
        "app_over_cli": statistics.median(app) / statistics.median(cli),
        "cli_trials": cli,
        "app_trials": app,
        "cpu_count": os.cpu_count(),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
