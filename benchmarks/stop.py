"""How long a Stop takes to land (issue 29): seconds from ``Session.stop()`` to the run stored 'stopped' (what the app
shows), before and after, in one run.

    python benchmarks/stop.py [--model default|tiny] [--after-steps N] [--delay S] [--order before,after]

Each variant trains the demo's settings (``workbench.demo_config()``: the default model, SmolLM2-135M, on the demo
inbox; no step-0 baseline, which a Stop never meets) in a fresh Session over a temporary run store, and presses Stop
through ``Session.stop()`` ``--delay`` seconds after step N's event: mid-way through step N+1, as a person pressing Stop
meets a step under way. The variants:

  before  as the engine stopped before issue 29: the stop checked between micro-batches only, and the run's last
          evaluation (loss and accuracy on the held-out examples, no generations) run after the Stop;
  after   today's engine: the forward pass under way ends at its next layer and the last evaluation is skipped
          (`workbench runs evaluate` measures it on request).

Printed as JSON: each variant's seconds from stop() to the stored 'stopped' status and its phases (the loop's end, the
last evaluation, saving the adapter and its privacy report, the summary and the ledger row), and
``before_over_after``, the ratio of the two stop times.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from pathlib import Path
from unittest import mock

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _timed(phases: dict, name: str, real):
    """``real`` that records when each call ended and how long it took, under ``name``."""

    def wrapper(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return real(*args, **kwargs)
        finally:
            phases.setdefault(name, []).append((t0, time.perf_counter()))

    return wrapper


def measure(variant: str, *, model: str, after_steps: int, delay: float, home: Path) -> dict:
    """One run stopped ``delay`` seconds after step ``after_steps``: the seconds from stop() to the stored status."""
    import workbench
    from workbench.engine import trainer as trainer_mod
    from workbench.session import Session
    from workbench.store.runs import RunStore

    config = workbench.demo_config(model=model, baseline_eval=False)
    store = RunStore(home / variant)
    session = Session(config, store=store, name=f"stop benchmark: {variant}")
    phases: dict[str, list] = {}
    pressed: dict[str, float] = {}
    real_run = trainer_mod.Trainer.run

    def run(self):
        status, reason = real_run(self)
        phases["loop"] = [(pressed.get("at", time.perf_counter()), time.perf_counter())]
        if variant == "before" and status == "stopped" and self.step > 0 and self.collective.is_main:
            evaluation = self.evaluation(generate=False)  # the old path: the last evaluation after a Stop
            if evaluation is not None:
                self.emit(evaluation)
        return status, reason

    def press_later(event) -> None:
        if event.kind == "step" and event.step == after_steps and "timer" not in pressed:

            def press() -> None:
                pressed["at"] = time.perf_counter()
                session.stop()

            pressed["timer"] = threading.Timer(delay, press)
            pressed["timer"].start()

    with ExitStack() as patches:
        patches.enter_context(mock.patch.object(trainer_mod.Trainer, "run", run))
        patches.enter_context(
            mock.patch.object(
                trainer_mod.Trainer, "evaluation", _timed(phases, "evaluation", trainer_mod.Trainer.evaluation)
            )
        )
        patches.enter_context(
            mock.patch.object(trainer_mod.Trainer, "save", _timed(phases, "save", trainer_mod.Trainer.save))
        )
        patches.enter_context(mock.patch.object(Session, "_summary", _timed(phases, "summary", Session._summary)))
        patches.enter_context(
            mock.patch.object(Session, "_record_ledger", _timed(phases, "ledger", Session._record_ledger))
        )
        if variant == "before":  # the stop checked between micro-batches only, as before
            patches.enter_context(mock.patch.object(trainer_mod.Trainer, "_stop_in_forward", lambda self: None))
        session.subscribe(press_later)
        started = time.perf_counter()
        session.start()
        stored = None
        while stored is None:
            if "at" in pressed and store.get(session.run_id).status == "stopped":
                stored = time.perf_counter()
            elif session.done and "at" not in pressed:
                raise SystemExit(f"the run ended before the Stop ({session.status}): lower --after-steps or --delay")
            else:
                time.sleep(0.02)
        session.wait()
    at = pressed["at"]
    after_stop = {
        name: round(sum(end - max(t0, at) for t0, end in calls if end > at), 3) for name, calls in phases.items()
    }
    summary = session.summary or {}
    return {
        "stop_to_stored_s": round(stored - at, 3),
        "phases_after_stop_s": after_stop,  # loop: from stop() to the loop's end (the step under way discarded)
        "steps": summary.get("steps"),
        "status": summary.get("status"),
        "evaluations_after_stop": sum(1 for t0, end in phases.get("evaluation", []) if end > at),
        "adapter_saved": bool(summary.get("adapter_dir")),
        "run_seconds_before_stop": round(at - started, 1),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="default", help="default (the demo's model) or tiny (a quick check)")
    parser.add_argument("--after-steps", type=int, default=1, help="press Stop during the step after this one")
    parser.add_argument("--delay", type=float, default=3.0, help="seconds after that step's event")
    parser.add_argument("--order", default="before,after", help="the variants, in the order they run")
    args = parser.parse_args(argv)
    out: dict = {
        "command": "python benchmarks/stop.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "model": args.model,
        "cpu_threads": __import__("torch").get_num_threads(),
    }
    with tempfile.TemporaryDirectory(prefix="workbench-stop-") as home:
        os.environ["WORKBENCH_HOME"] = home
        for variant in args.order.split(","):
            out[variant] = measure(
                variant, model=args.model, after_steps=args.after_steps, delay=args.delay, home=Path(home)
            )
            print(f"{variant}: {json.dumps(out[variant])}", file=sys.stderr, flush=True)
    if "before" in out and "after" in out:
        out["before_over_after"] = round(out["before"]["stop_to_stored_s"] / out["after"]["stop_to_stored_s"], 1)
    print(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
