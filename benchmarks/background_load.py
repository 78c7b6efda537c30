"""How much a small periodic background load slows `workbench train`, with no app and no browser.

    python benchmarks/background_load.py [--model default|tiny] [--pairs P] [--window S] [--busy-ms B] [--every-ms E]

The context for benchmarks/app_overhead.py: on a 2-core machine PyTorch trains with two intra-op
threads, and a parallel region ends only when both have finished their half; whenever another
process takes one core, the other thread waits.  This benchmark runs one `workbench train` and
alternates windows in which a child process does nothing, and in which it busy-loops for
``--busy-ms`` every ``--every-ms`` (default 40 ms a second: 0.04 CPU-s/s, about what a browser
watching the dashboard uses).  Throughput is tokens per second from the steps inside each window,
as in app_overhead.py.  Prints JSON: ``loaded_over_quiet`` (median of paired ratios) and the CPU
the load used.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from app_overhead import cpu_seconds, env_for, pair_ratios, settings, steps, token_rate, train_command, window_rate  # noqa: E402


def burn(busy_s: float, every_s: float, on) -> None:
    while True:
        if on.value:
            end = time.perf_counter() + busy_s
            while time.perf_counter() < end:
                pass
        time.sleep(max(0.0, every_s - busy_s))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="default", choices=["tiny", "default"])
    ap.add_argument("--pairs", type=int, default=2)
    ap.add_argument("--window", type=float, default=60.0)
    ap.add_argument("--busy-ms", type=float, default=40.0)
    ap.add_argument("--every-ms", type=float, default=1000.0)
    args = ap.parse_args()
    home = Path(tempfile.mkdtemp(prefix="wb-bench-load-"))
    trainer = subprocess.Popen(
        train_command(settings(args.model, 3000)),
        env=env_for(home),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    on = mp.Value("b", 0)
    burner = mp.Process(target=burn, args=(args.busy_ms / 1000, args.every_ms / 1000, on), daemon=True)
    burner.start()
    windows = []
    try:
        while len(steps(home)) < 5:  # past model loading
            time.sleep(1)
        for i in range(args.pairs):
            for kind in ("loaded", "quiet") if i % 2 == 0 else ("quiet", "loaded"):
                on.value = 1 if kind == "loaded" else 0
                t0, b0 = time.time(), cpu_seconds(burner.pid)
                time.sleep(args.window)
                t1, b1 = time.time(), cpu_seconds(burner.pid)
                inside = [e for e in steps(home) if t0 <= e.time < t1]
                windows.append(
                    {
                        "pair": i,
                        "kind": kind,
                        "steps": len(inside),
                        "steps_per_s": window_rate(inside, t0, t1),
                        "tokens_per_s": token_rate(inside),
                        "load_cpu_per_s": (b1 - b0) / (t1 - t0),
                    }
                )
                w = windows[-1]
                print(
                    f"pair {i + 1} {kind:6}: {w['tokens_per_s'] or float('nan'):.0f} tokens/s, "
                    f"{w['steps_per_s']:.3f} steps/s ({len(inside)} steps), "
                    f"load {w['load_cpu_per_s']:.3f} CPU/s",
                    file=sys.stderr,
                )
    finally:
        trainer.terminate()
        trainer.wait(60)
        burner.terminate()
        shutil.rmtree(home, ignore_errors=True)
    ratios = pair_ratios(windows, "tokens_per_s", kinds=("loaded", "quiet"))
    print(
        json.dumps(
            {
                "model": args.model,
                "busy_ms": args.busy_ms,
                "every_ms": args.every_ms,
                "window_s": args.window,
                "loaded_over_quiet": statistics.median(ratios),
                "pair_ratios": ratios,
                "load_cpu_per_s": statistics.median(w["load_cpu_per_s"] for w in windows if w["kind"] == "loaded"),
                "torch_threads": int(os.environ.get("OMP_NUM_THREADS") or os.cpu_count() or 1),
                "windows": windows,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
