"""Synthetic runs as the engine writes them, shared by the tests (events into a real run store)."""

from __future__ import annotations

import math
import socket

from workbench.events import GRAD_NORM_BIN_EDGES, EvalMetrics, RunEnded, RunStarted, StepMetrics
from workbench.store.runs import RunStore

MODULES = [f"base_model.model.model.layers.{i}.self_attn.{p}_proj" for i in range(2) for p in ("q", "v")]
NBINS = len(GRAD_NORM_BIN_EDGES) - 1
# The run settings most engine tests start from: the tiny model built from a config, a few examples per step,
# no generations and a short evaluation; a test names only what it changes (``dict(TINY_RUN, max_steps=3)``).
TINY_RUN = dict(model="tiny", batch_size=16, physical_batch_size=8, generate_max_new_tokens=0, eval_max_examples=8)


def started(run_id="r1", *, steps=30, target=8.0, t0=1000.0, config=None) -> RunStarted:
    planned = [(s, target * math.sqrt(s / steps)) for s in range(steps + 1)]
    return RunStarted(
        run_id=run_id,
        config={"model": "tiny", "max_grad_norm": 1.0, **(config or {})},
        dataset_size=500,
        sample_rate=0.032,
        noise_multiplier=1.1,
        delta=1e-5,
        planned_steps=steps,
        accountant="pld",
        planned_epsilon=planned,
        target_epsilon=target,
        modules=MODULES,
        trainable_parameters=10,
        device="cpu",
        model_name="tiny",
        time=t0,
    )


def step(s, run_id="r1", *, eps=None, loss=None, t0=1000.0, hist=None) -> StepMetrics:
    hist = hist or [0] * NBINS
    if not sum(hist):
        hist[s % NBINS] = 3
        hist[12] = 1
    return StepMetrics(
        run_id=run_id,
        step=s,
        loss=2.0 / s if loss is None else loss,
        learning_rate=1e-3,
        batch_size=4,
        epsilon=0.1 * s if eps is None else eps,
        grad_norm_hist=hist,
        grad_norm_max=1.3,
        clipped_fraction=0.25,
        module_grad_norm={m: 1.0 + i for i, m in enumerate(MODULES)},
        module_noise_std={m: 0.5 * (i + 1) for i, m in enumerate(MODULES)},
        step_time=0.1,
        tokens_per_second=1.0,
        tokens=10,
        time=t0 + 2.0 * s,
    )


def evaluation(s, run_id="r1", *, accuracy=0.5, val_loss=1.5) -> EvalMetrics:
    return EvalMetrics(
        run_id=run_id,
        step=s,
        val_loss=val_loss,
        perplexity=math.exp(val_loss),
        accuracy=accuracy,
        generations=[{"prompt": f"p{s}", "output": f"o{s}"}],
        time=1000.0 + 2 * s,
    )


def fake_run(store: RunStore, run_id: str, *, steps=10, finished=True, accuracy=0.5, eps_per_step=0.1, config=None):
    events = [started(run_id, steps=steps, config=config)]
    events += [step(s, run_id, eps=eps_per_step * s) for s in range(1, steps + 1)]
    events.append(evaluation(steps, run_id, accuracy=accuracy))
    if finished:
        events.append(
            RunEnded(
                run_id=run_id,
                status="finished",
                reason="",
                summary={"epsilon": eps_per_step * steps, "steps": steps, "accuracy": accuracy},
            )
        )
    store.create_run(run_id, config=events[0].config, status="running")
    for e in events:
        store.append(e)
    return events


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_app(home, defaults: dict):
    """The app over a run store in ``home``, served on a free port: yields (url, store, app context), then stops
    every session it started and closes the app (the browser tests' fixture)."""
    from workbench.app import build_app, serve

    store = RunStore(home)
    app = build_app(store, defaults=defaults)
    _, url, _ = serve(app, port=free_port(), block=False, quiet=True)
    yield url, store, app.workbench
    for session in app.workbench.sessions.values():
        session.stop()
        session.wait(60)
    app.close()
