"""The demo's DP step with the cached frozen prefix against without it (issue 29, part 2), in one run.

    flock /tmp/bench.lock python benchmarks/prefix_cache.py [--rounds 3] [--set KEY=VALUE ...] [--json]
    flock /tmp/bench.lock python benchmarks/prefix_cache.py --end-to-end [--set KEY=VALUE ...] [--cached-set KEY=VALUE]

Step mode: the demo's settings (``workbench.demo_config()``, assets/demo.yaml: the default model, SmolLM2-135M, r = 4
in the last 4 of 30 layers, Poisson batches of 64 expected examples in micro-batches of 16) in one Trainer. Each round
draws one Poisson batch as a step would and trains it four times, ``Trainer.train_step`` whole (sampling aside:
per-example gradients, clipping, noise, the optimizer), the cache swapped in or out between them:

  today     the engine before issue 29's part 2: the whole model, and the LM head from the batch's earliest target
            on (losses.per_example_loss without targets_only);
  uncached  the whole model every step (prefix_cache=off), the head on the target positions only (losses.target_loss);
  cold      the cache, on examples drawn for the first time: their prefix is computed, then the adapted layers run
            (what a first visit costs);
  warm      the cache again on the same batch: the adapted layers and the head only (every later visit).

The uncached steps run first in odd rounds and last in even ones, so the machine's drift hits all alike. Printed:
each variant's median seconds per step and per example (wall, and this process's CPU seconds, less hit by the
machine's other load), ``today_over_warm`` (issue 29's goal: at least 2.5),
``uncached_over_warm`` (the cache alone) and ``cold_over_uncached``; the cache's report (examples, MiB, build
seconds). The seconds a first visit spends building, times the training examples, are what caching the whole split
would cost (``build_all_estimate_s``).

End-to-end mode: the demo's whole run (``workbench train --config assets/demo.yaml``: baseline evaluation, training,
evaluations) twice in fresh stores, prefix_cache=auto then off, and each run's wall time, its steps' total seconds,
and their ratios; the cache is built lazily, so the run pays for an example's prefix when it is first drawn.
``--cached-set`` changes the cached run's settings only: today's demo uncached against a retuned demo with the cache
(the time the cache saves spent on a larger batch), each run's held-out accuracy beside its untuned baseline's.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def steps(rounds: int, sets: list[str]) -> dict:
    import torch

    import workbench
    from workbench.engine import trainer as trainer_mod
    from workbench.engine.losses import per_example_loss
    from workbench.engine.randomness import RunRandomness
    from workbench.engine.trainer import Trainer, prepare

    config = workbench.demo_config(baseline_eval=False).with_overrides(sets + ["prefix_cache=on"])
    prepared = prepare(config)
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = Trainer(
            prepared, run_id="bench", emit=lambda e: None, run_dir=Path(run_dir), randomness=RunRandomness.secret()
        )
        trainer.set_training_mode()
        cache = trainer.prefix_cache
        times: dict[str, list[float]] = {"today": [], "uncached": [], "cold": [], "warm": []}
        cpu: dict[str, list[float]] = {k: [] for k in times}  # this process's CPU seconds (less hit by other load)
        sizes: list[int] = []
        step = 0

        def timed(variant: str, indices) -> None:
            nonlocal step
            step += 1
            trainer.prefix_cache = None if variant in ("today", "uncached") else cache
            trainer._sample = lambda: (indices, None)  # the round's batch, whatever the variant
            loss = functools.partial(per_example_loss, targets_only=variant != "today")
            t0, c0 = time.perf_counter(), time.process_time()
            with mock.patch.object(trainer_mod, "per_example_loss", loss):
                trainer.train_step(step)
            times[variant].append((time.perf_counter() - t0) / max(1, len(indices)))
            cpu[variant].append((time.process_time() - c0) / max(1, len(indices)))

        for r in range(rounds):
            indices = trainer.sampler.draw()  # one Poisson batch, as a step draws it
            sizes.append(len(indices))
            order = ["today", "uncached", "cold", "warm"] if r % 2 == 0 else ["cold", "warm", "uncached", "today"]
            for variant in order:
                timed(variant, indices)
            print(
                f"round {r + 1}: batch {len(indices)}", {k: round(v[-1], 4) for k, v in times.items()}, file=sys.stderr
            )
        report = cache.report()
        trainer.close_prefix_cache()
        trainer.dp.close()
    per_example = {k: statistics.median(v) for k, v in times.items()}
    cpu_per_example = {k: statistics.median(v) for k, v in cpu.items()}
    batch = statistics.median(sizes)
    build_per_example = report["build_seconds"] / max(1, report["built"])
    return {
        "settings": {
            "model": config.model,
            "batch_size": config.batch_size,
            "lora_layers": config.lora_layers,
            "lora_r": config.lora_r,
            "physical_batch_size": config.physical_batch_size,
            "threads": torch.get_num_threads(),
            "rounds": rounds,
            "sampled_batches": sizes,
        },  # fmt: skip
        "seconds_per_example": {k: round(v, 4) for k, v in per_example.items()},
        "seconds_per_step_at_median_batch": {k: round(v * batch, 2) for k, v in per_example.items()},
        "today_over_warm": round(per_example["today"] / per_example["warm"], 2),
        "cpu_seconds_per_example": {k: round(v, 4) for k, v in cpu_per_example.items()},
        "cpu_today_over_warm": round(cpu_per_example["today"] / cpu_per_example["warm"], 2),
        "cpu_uncached_over_warm": round(cpu_per_example["uncached"] / cpu_per_example["warm"], 2),
        "per_round_wall_s_per_example": {k: [round(x, 4) for x in v] for k, v in times.items()},
        "uncached_over_warm": round(per_example["uncached"] / per_example["warm"], 2),
        "cold_over_uncached": round(per_example["cold"] / per_example["uncached"], 2),
        "build_all_estimate_s": round(build_per_example * len(prepared.train_tok), 1),
        "training_examples": len(prepared.train_tok),
        "prefix_cache": report,
        "load_average": os.getloadavg(),
    }


def end_to_end(sets: list[str], cached_sets: list[str]) -> dict:
    """The demo's run twice (prefix_cache auto with ``cached_sets`` on top, then off), each in a fresh store: wall
    time, step seconds and accuracy."""
    out = {}
    for mode in ("auto", "off"):  # the retuned run first: its accuracy is what a short session most wants to know
        with tempfile.TemporaryDirectory() as home:
            env = dict(os.environ, WORKBENCH_HOME=home)
            cmd = [sys.executable, "-m", "workbench", "train", "--config", "assets/demo.yaml", "--json"]
            changes = sets + (cached_sets if mode == "auto" else []) + [f"prefix_cache={mode}"]
            cmd += [x for s in changes for x in ("--set", s)]
            t0 = time.perf_counter()
            done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
            wall = time.perf_counter() - t0
            if done.returncode != 0:
                raise SystemExit(f"{mode}: {done.stderr[-2000:]}")
            summary = json.loads(done.stdout)
            step_seconds = _step_seconds(home, summary["run_id"])
            out[mode] = {
                "process_wall_s": round(wall, 1),
                "run_wall_s": round(summary["wall_time"], 1),
                "steps_s": round(step_seconds, 1),
                "accuracy": summary.get("accuracy"),
                "baseline_accuracy": (summary.get("baseline") or {}).get("accuracy"),
                "prefix_cache": summary.get("prefix_cache"),
                "settings": changes,
                "steps": summary.get("steps"),
                "noise_multiplier": summary.get("noise_multiplier"),
                "epsilon": summary.get("epsilon"),
            }
        print(mode, out[mode], file=sys.stderr)
    out["off_over_auto_wall"] = round(out["off"]["process_wall_s"] / out["auto"]["process_wall_s"], 2)
    out["off_over_auto_steps"] = round(out["off"]["steps_s"] / out["auto"]["steps_s"], 2)
    out["load_average"] = os.getloadavg()
    return out


def _step_seconds(home: str, run_id: str) -> float:
    os.environ["WORKBENCH_HOME"] = home
    from workbench.store.runs import RunStore

    return sum(e.step_time for _, e in RunStore(Path(home)).events(run_id, kinds=("step",)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="Poisson batches, each trained three times")
    parser.add_argument("--set", dest="sets", action="append", default=[], help="a demo setting to change, KEY=VALUE")
    parser.add_argument("--end-to-end", action="store_true", help="the demo's whole run, off then auto")
    parser.add_argument(
        "--cached-set",
        dest="cached_sets",
        action="append",
        default=[],
        help="end-to-end: a setting of the cached run only, KEY=VALUE",
    )
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object only")
    args = parser.parse_args()
    result = end_to_end(args.sets, args.cached_sets) if args.end_to_end else steps(args.rounds, args.sets)
    print(json.dumps(result, indent=None if args.json else 2))


if __name__ == "__main__":
    main()
