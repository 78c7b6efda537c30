"""Training throughput with the Gradio app attached and a browser watching, against training alone.

    python benchmarks/app_overhead.py [--model tiny|default] [--pairs P] [--window S] [--cli-steps N] [--poll-seconds T]
                                      [--browser-sched normal|idle] [--screenshot PNG]

On a shared machine the speed of two separate runs differs by 3x from minute to minute, more
than any overhead, so the comparison is made *inside one run*: the app server (its own process,
`workbench.app.serve`) trains a long run started by pressing Start in a headless Chromium, and
the benchmark alternates windows of ``--window`` seconds in which
  watched  a browser page is open on the Train tab (holding the dashboard's stream of rows from the
           run store, and redrawing the charts as steps arrive), and
  alone    no page is open: the app process then runs exactly the Session that
           `workbench train` runs (same code, same thread), with nothing polling.
Pairs alternate their order (watched/alone, alone/watched) so drifts in machine load cancel.
For every window: training throughput in tokens per second (the tokens of the steps completed in
it over the wall-clock spacing of those completions: the engine's own step_time leaves out the
per-step privacy accounting and event writing), steps per second, and the CPU the app process and
the browser (this benchmark's Chromium processes) used per second.  Tokens, not steps: Poisson
sampling draws a batch of a different size (and length) at every step, so a window's steps/s
varies by +-25 % with the batches it happened to draw, more than the effect measured.

Prints JSON: ``app_over_cli`` = median over pairs of (watched tokens/s) / (alone tokens/s), the
CPU that watching costs (app server and browser, CPU seconds per second), the per-window
figures, and for context ``cli_tokens_per_s`` of a separate `workbench train` run (noisy).
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
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from chromium import CHROMIUM_ARGS, launch_chromium  # noqa: E402,F401 (CHROMIUM_ARGS: idle_page.py imports it from here)

BIN = Path(sys.executable).parent


def settings(model: str, steps: int) -> dict:
    """The same run for the app and the CLI: sigma given (no calibration), evaluations rare."""
    out = {
        "model": model,
        "data": "demo",
        "max_steps": steps,
        "batch_size": 16,
        "physical_batch_size": 16,
        "noise_multiplier": 1.0,
        "max_seq_len": 128,
        "eval_every": 100_000,
        "seed": 0,
    }
    if model == "default":  # as `make demo` (assets/demo.yaml): adapters in the last 8 of 30 layers
        out["lora_layers"] = 8
    return out


def env_for(home: Path) -> dict:
    return {**os.environ, "WORKBENCH_HOME": str(home), "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}


def steps(home: Path) -> list:
    from workbench.store.runs import RunStore

    store = RunStore(home)
    return [e for run in store.list() for _, e in store.events(run.id, kinds=("step",))]


def descendants_cpu(root: int, *, exclude: int) -> float:
    """CPU seconds of the living processes below ``root`` (the browser), except ``exclude``."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    total, todo = 0.0, [root]
    while todo:
        for pid in children.get(todo.pop(), []):
            todo.append(pid)
            if pid != exclude:
                try:
                    total += cpu_seconds(pid)
                except (OSError, IndexError, ValueError):
                    pass
    return total


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def thread_cpu(pid: int) -> dict[int, float]:
    """CPU seconds of each thread of ``pid``."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            fields = Path(f"/proc/{pid}/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
            out[int(tid)] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            pass
    return out


def split_server_cpu(before: dict[int, float], after: dict[int, float], seconds: float) -> tuple[float, float]:
    """(training, other) CPU per second of the app process: the two busiest threads are PyTorch's
    (the training thread and its one intra-op worker on 2 cores), the rest serve the app."""
    used = sorted((after[t] - before.get(t, 0.0) for t in after), reverse=True)
    n = min(len(used), max(1, torch_threads()))
    return sum(used[:n]) / seconds, sum(used[n:]) / seconds


def torch_threads() -> int:
    return int(os.environ.get("OMP_NUM_THREADS") or os.cpu_count() or 1)


def train_command(cfg: dict) -> list[str]:
    """`workbench train --set key=value ...` for these settings."""
    return [str(BIN / "workbench"), "train"] + [a for k, v in cfg.items() for a in ("--set", f"{k}={v}")]


def run_cli(cfg: dict) -> float:
    home = Path(tempfile.mkdtemp(prefix="wb-bench-cli-"))
    subprocess.run(
        train_command(cfg), env=env_for(home), check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    done = steps(home)
    shutil.rmtree(home, ignore_errors=True)
    return token_rate(done)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url, timeout=5)
            return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"the app did not answer at {url}")


SETTLE_S = 10.0


def open_watcher(browser, url: str):
    """A page on the Train tab, settled: the plan computed on load has finished, every live panel
    has drawn, and SETTLE_S more seconds have passed (opening a page is a one-off cost: JavaScript
    compiled, the Plan tab's privacy curves computed; the windows measure watching)."""
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(url)
    page.locator("#run-header .wb-badge", has_text="running").wait_for(timeout=600_000)
    page.wait_for_function(
        "() => { const s = document.querySelector('#plan-summary'); return s && s.innerText.includes('σ') "
        "&& !s.innerText.includes('computing') && s.innerText.includes('Privacy check'); }",
        timeout=600_000,
    )
    page.wait_for_function(
        "() => [...document.querySelectorAll('#loss-plot, #epsilon-plot')]"
        ".filter((h) => Number(h.dataset.draws || 0) > 0).length == 2",
        timeout=600_000,
    )
    page.wait_for_timeout(SETTLE_S * 1000)
    return page


DRAWS_JS = "() => [...document.querySelectorAll('.wb-live-plot')].reduce((n, h) => n + Number(h.dataset.draws || 0), 0)"


def chromium_for(sched: str, folder: Path) -> str:
    """The Chromium to launch: Debian's, or (``sched="idle"``) a wrapper that starts it under Linux's
    SCHED_IDLE policy (``chrt --idle 0``, inherited by every Chromium process; no privilege needed),
    so that its rendering runs only on CPU the trainer leaves free.  That stands in for the usual
    set-up of a server app, the browser on another machine: what is left is the app's own cost."""
    chromium = shutil.which("chromium")
    if sched == "normal":
        return chromium
    wrapper = folder / "chromium-idle"
    wrapper.write_text(f'#!/bin/sh\nexec {shutil.which("chrt")} --idle 0 {chromium} "$@"\n')
    wrapper.chmod(0o755)
    return str(wrapper)


def measure_app(
    cfg: dict, *, pairs: int, window: float, screenshot: str | None = None, browser_sched: str = "normal"
) -> list[dict]:
    from playwright.sync_api import sync_playwright

    home = Path(tempfile.mkdtemp(prefix="wb-bench-app-"))
    port = free_port()
    code = (
        "import sys, json; from workbench.app import build_app, serve; "
        f"serve(build_app(defaults=json.loads(sys.argv[1])), port={port}, block=True, quiet=True)"
    )
    server = subprocess.Popen(
        [sys.executable, "-c", code, json.dumps(cfg)],
        env=env_for(home),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    windows = []
    try:
        url = f"http://127.0.0.1:{port}/"
        wait_http(url)
        with sync_playwright() as p:
            browser = launch_chromium(p, chromium_for(browser_sched, home))
            page = browser.new_page()
            page.goto(url)
            page.get_by_role("tab", name="Train").click()
            page.locator("#start").click()
            page.locator("#run-header .wb-badge", has_text="running").wait_for(timeout=600_000)
            while len(steps(home)) < 5:  # past model loading
                time.sleep(1)
            page.close()
            for i in range(pairs):
                for kind in ("watched", "alone") if i % 2 == 0 else ("alone", "watched"):
                    watcher = open_watcher(browser, url) if kind == "watched" else None
                    t0, s0, b0 = time.time(), cpu_seconds(server.pid), descendants_cpu(os.getpid(), exclude=server.pid)
                    th0 = thread_cpu(server.pid)
                    draws0 = watcher.evaluate(DRAWS_JS) if watcher is not None else 0
                    time.sleep(window)
                    draws = watcher.evaluate(DRAWS_JS) - draws0 if watcher is not None else 0
                    t1, s1, b1 = time.time(), cpu_seconds(server.pid), descendants_cpu(os.getpid(), exclude=server.pid)
                    training_cpu, other_cpu = split_server_cpu(th0, thread_cpu(server.pid), t1 - t0)
                    if watcher is not None:
                        if screenshot and i == pairs - 1:  # the Train tab mid-run, as the watcher saw it
                            watcher.screenshot(path=screenshot, full_page=True)
                        watcher.close()
                    inside = [e for e in steps(home) if t0 <= e.time < t1]
                    rate = window_rate(inside, t0, t1)
                    windows.append(
                        {
                            "pair": i,
                            "kind": kind,
                            "steps": len(inside),
                            "steps_per_s": rate,
                            "tokens_per_s": token_rate(inside),
                            "panel_draws": draws,
                            "server_cpu_per_s": (s1 - s0) / (t1 - t0),
                            "training_threads_cpu_per_s": training_cpu,
                            "other_threads_cpu_per_s": other_cpu,
                            "browser_cpu_per_s": max(0.0, b1 - b0) / (t1 - t0),
                            "browser_cpu_per_step": max(0.0, b1 - b0) / len(inside) if inside else None,
                        }
                    )
                    w = windows[-1]
                    print(
                        f"pair {i + 1} {kind:7}: {w['tokens_per_s'] or float('nan'):.0f} tokens/s, "
                        f"{rate or float('nan'):.3f} steps/s ({len(inside)} steps), "
                        f"server {w['server_cpu_per_s']:.2f} CPU/s (training threads {training_cpu:.2f}, "
                        f"other threads {other_cpu:.2f}), browser {w['browser_cpu_per_s']:.2f} CPU/s, {draws} panel draws",
                        file=sys.stderr,
                    )
            browser.close()
    finally:
        server.terminate()
        server.wait(30)
        shutil.rmtree(home, ignore_errors=True)
    return windows


def window_rate(inside: list, t0: float, t1: float) -> float:
    """Steps per second in a window: from the spacing of the steps that ended inside it.

    With the default model a 90 s window holds ~10 steps, and counting them would quantise the
    rate by 10%; (n - 1) / (last - first) measures whole steps between two completions instead.
    """
    if len(inside) >= 3:
        return (len(inside) - 1) / (inside[-1].time - inside[0].time)
    return len(inside) / (t1 - t0)


def token_rate(inside: list) -> float | None:
    """Tokens per second: the tokens of the steps after the first over the time between the first
    completion and the last (the first step's tokens were processed before the window's clock)."""
    if len(inside) < 2 or inside[-1].time <= inside[0].time:
        return None
    return sum(e.tokens for e in inside[1:]) / (inside[-1].time - inside[0].time)


def pair_ratios(windows: list[dict], key: str, kinds: tuple[str, str] = ("watched", "alone")) -> list[float]:
    """(first kind / second kind) of ``key`` for each pair, in pair order."""
    ratios = []
    for pair in sorted({w["pair"] for w in windows}):
        top, bottom = (next(w[key] for w in windows if w["pair"] == pair and w["kind"] == kind) for kind in kinds)
        if top and bottom:
            ratios.append(round(top / bottom, 3))
    return ratios


def paired_ratio(windows: list[dict], key: str) -> float:
    return statistics.median(pair_ratios(windows, key))


def median_of(windows: list[dict], kind: str, key: str) -> float | None:
    values = [w[key] for w in windows if w["kind"] == kind and w[key] is not None]
    return statistics.median(values) if values else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="tiny", choices=["tiny", "default"])
    ap.add_argument("--pairs", type=int, default=5)
    ap.add_argument(
        "--poll-seconds", type=float, default=None, help="the app's refresh period (default: the app's, 1 s)"
    )
    ap.add_argument("--window", type=float, default=None, help="seconds per window (default: 20 tiny, 90 default)")
    ap.add_argument(
        "--browser-sched",
        default="normal",
        choices=["normal", "idle"],
        help="idle: the browser runs under SCHED_IDLE, standing in for a browser on another machine",
    )
    ap.add_argument(
        "--no-frame-patch",
        action="store_true",
        help="serve the app without workbench/app/frames.py's patch of Gradio's frame loop (to measure it)",
    )
    ap.add_argument("--screenshot", default=None, help="save the watched Train tab (last watched window) to this PNG")
    ap.add_argument(
        "--cli-steps",
        type=int,
        default=None,
        help="steps of the separate CLI run (0: skip; default 60 tiny, 10 default)",
    )
    args = ap.parse_args()
    args.window = args.window or (20.0 if args.model == "tiny" else 90.0)
    if args.poll_seconds:
        os.environ["WORKBENCH_APP_POLL_SECONDS"] = str(args.poll_seconds)
    if args.no_frame_patch:
        os.environ["WORKBENCH_FRAME_PATCH"] = "0"
    windows = measure_app(
        settings(args.model, 3000),
        pairs=args.pairs,
        window=args.window,
        screenshot=args.screenshot,
        browser_sched=args.browser_sched,
    )
    result = {
        "model": args.model,
        "pairs": args.pairs,
        "window_s": args.window,
        "browser_sched": args.browser_sched,
        "poll_seconds": float(os.environ.get("WORKBENCH_APP_POLL_SECONDS") or 1.0),
        "app_over_cli": paired_ratio(windows, "tokens_per_s"),
        "pair_ratios": pair_ratios(windows, "tokens_per_s"),
        "steps_per_s_ratio": paired_ratio(windows, "steps_per_s"),
        "watched_tokens_per_s": median_of(windows, "watched", "tokens_per_s"),
        "alone_tokens_per_s": median_of(windows, "alone", "tokens_per_s"),
        "watched_steps_per_s": median_of(windows, "watched", "steps_per_s"),
        "alone_steps_per_s": median_of(windows, "alone", "steps_per_s"),
        "watch_server_cpu_per_s": median_of(windows, "watched", "server_cpu_per_s"),
        "alone_server_cpu_per_s": median_of(windows, "alone", "server_cpu_per_s"),
        "watch_browser_cpu_per_s": median_of(windows, "watched", "browser_cpu_per_s"),
        "watch_browser_cpu_per_step": median_of(windows, "watched", "browser_cpu_per_step"),
        "alone_browser_cpu_per_s": median_of(windows, "alone", "browser_cpu_per_s"),
        "frame_patch": os.environ.get("WORKBENCH_FRAME_PATCH", "1") != "0",
        "watch_panel_draws": [w["panel_draws"] for w in windows if w["kind"] == "watched"],
        "watch_other_threads_cpu_per_s": median_of(windows, "watched", "other_threads_cpu_per_s"),
        "alone_other_threads_cpu_per_s": median_of(windows, "alone", "other_threads_cpu_per_s"),
        "windows": windows,
        "cpu_count": os.cpu_count(),
    }
    cli_steps = args.cli_steps if args.cli_steps is not None else (60 if args.model == "tiny" else 10)
    if cli_steps:
        result["cli_tokens_per_s"] = run_cli(settings(args.model, cli_steps))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
