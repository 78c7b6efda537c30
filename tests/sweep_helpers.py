"""Synthetic sweep runs for the sweep, compare and export tests: events into a real run store, no training."""

from __future__ import annotations

import math

from factories import TINY_RUN

from workbench.config import RunConfig
from workbench.events import GRAD_NORM_BIN_EDGES, EvalMetrics, RunEnded, RunStarted, StepMetrics
from workbench.store.runs import RunStore
from workbench.store.sweeps import SweepStore

NBINS = len(GRAD_NORM_BIN_EDGES) - 1
TINY = dict(TINY_RUN, eval_max_examples=16)


def synthetic_run(
    store: RunStore,
    run_id: str,
    *,
    steps: int = 10,
    eps_final: float = 4.0,
    sigma: float = 1.0,
    q: float = 0.02,
    losses=None,
    evals=((5, 2.0, 0.5), (10, 1.5, 0.6)),
    status: str | None = "finished",
    tokens: int = 100,
    name: str | None = None,
    **config,
) -> list:
    """A run whose epsilon after step s is eps_final * sqrt(s / steps); ``evals``: (step, val_loss, accuracy)."""
    cfg = RunConfig(**{**TINY, "max_steps": steps, **config}).to_dict()
    cfg["name"] = name
    t0 = 1000.0
    events = [
        RunStarted(
            run_id=run_id,
            config=cfg,
            dataset_size=800,
            sample_rate=q,
            noise_multiplier=sigma,
            delta=1e-5,
            planned_steps=steps,
            accountant="pld",
            planned_epsilon=[(s, eps_final * math.sqrt(s / steps)) for s in range(steps + 1)],
            target_epsilon=eps_final,
            modules=["q_proj"],
            trainable_parameters=10,
            device="cpu",
            model_name="tiny",
            neighboring="replace_one",
            time=t0,
        )
    ]
    for s in range(1, steps + 1):
        hist = [0] * NBINS
        hist[s % 12] = 3
        hist[NBINS - 1] = 1
        events.append(
            StepMetrics(
                run_id=run_id,
                step=s,
                loss=(losses[s - 1] if losses is not None else 3.0 / s),
                learning_rate=1e-3,
                batch_size=4,
                epsilon=eps_final * math.sqrt(s / steps),
                grad_norm_hist=hist,
                grad_norm_max=3.5,
                clipped_fraction=0.25,
                module_grad_norm={"q_proj": 1.0},
                module_noise_std={"q_proj": 0.5},
                step_time=0.1,
                tokens_per_second=1000.0,
                tokens=tokens,
                time=t0 + 2.0 * s,
            )
        )
        for e_step, val_loss, acc in evals:
            if e_step == s:
                events.append(
                    EvalMetrics(
                        run_id=run_id,
                        step=s,
                        val_loss=val_loss,
                        perplexity=math.exp(val_loss),
                        accuracy=acc,
                        generations=[],
                        time=t0 + 2.0 * s + 1,
                    )
                )
    if status is not None:
        last = evals[-1] if evals else (steps, None, None)
        summary = {
            "epsilon": eps_final,
            "steps": steps,
            "val_loss": last[1],
            "accuracy": last[2],
            "wall_time": 2.0 * steps,
        }
        events.append(RunEnded(run_id=run_id, status=status, reason="test", summary=summary))
    store.create_run(run_id, config=cfg, name=name, status="running")
    for e in events:
        store.append(e)
    return events


def synthetic_sweep(store: RunStore, name: str, runs: list[tuple[str, dict, dict]]) -> None:
    """A stored sweep whose members are already-trained synthetic runs: (label, overrides, synthetic_run kwargs)."""
    sweeps = SweepStore(store)
    keys = sorted({k for _, o, _ in runs for k in o if k != "seed"})
    grid = [(k, sorted({o[k] for _, o, _ in runs if k in o})) for k in keys]
    seeds = sorted({o.get("seed", 0) for _, o, _ in runs})
    sweeps.create(
        name, base_config=RunConfig(**TINY).to_dict(), grid=grid, seeds=seeds, members=[(lab, o) for lab, o, _ in runs]
    )
    for i, (label, overrides, kwargs) in enumerate(runs):
        run_id = f"20260101-0000{i:02d}-{name[:3]}{i:03d}"
        synthetic_run(store, run_id, name=label, **{**overrides, **kwargs})
        sweeps.start_member(name, i, run_id)
        sweeps.end_member(name, i, "finished")
