"""A Stop lands in seconds (issue 29): the run stopped by hand skips its last evaluation, an evaluation under way is
abandoned at its next batch, and the run is stored 'stopped' with its adapter and privacy report; `workbench runs
evaluate` then measures the stored adapter on request and adds the evaluation to the run's events. The tiny model."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
import torch
from factories import TINY_RUN
from typer.testing import CliRunner

import workbench.engine.evaluate as evaluate_mod
from workbench.cli import app
from workbench.config import RunConfig
from workbench.engine.randomness import RunRandomness
from workbench.engine.trainer import StopRequested, Trainer, prepare
from workbench.session import EvaluateError, Session, evaluate_run
from workbench.store.runs import RunStore

STOP_BOUND_S = 5.0  # from Stop to the stored 'stopped' status; the tiny model takes well under a second


def _events(store: RunStore, run_id: str, kind: str) -> list:
    return [e for _, e in store.events(run_id, kinds=(kind,))]


def test_a_stopped_run_ends_within_seconds_without_its_last_evaluation_and_runs_evaluate_adds_it():
    store = RunStore()
    # a long run whose evaluations read many batches: the last one would take seconds if it ran
    cfg = RunConfig(**dict(TINY_RUN, eval_max_examples=32), max_steps=20, eval_every=100, noise_multiplier=1.0)
    session = Session(cfg, store=store)
    pressed: dict[str, float] = {}

    def stop_after_two_steps(event):
        if event.kind == "step" and event.step == 2:
            pressed["at"] = time.perf_counter()
            session.stop()

    session.subscribe(stop_after_two_steps)
    session.start()
    summary = session.wait(timeout=300)
    took = time.perf_counter() - pressed["at"]
    record = store.get(session.run_id)
    assert record.status == "stopped" and summary["steps"] == 2, summary
    assert took < STOP_BOUND_S, f"the Stop took {took:.1f} s"
    assert [e.step for e in _events(store, session.run_id, "eval")] == [0]  # the untuned baseline only
    assert "val_loss" not in record.summary and "accuracy" not in record.summary
    # the adapter and its privacy report are written; the report claims the planned epsilon, as the summary does
    report = json.loads((Path(summary["adapter_dir"]) / "privacy_report.json").read_text())
    assert report["epsilon"] == pytest.approx(summary["epsilon"]) and summary["steps_done_epsilon"] < summary["epsilon"]

    shown = CliRunner().invoke(app, ["runs", "evaluate", session.run_id[:15], "--no-generate"])
    assert shown.exit_code == 0, shown.output
    assert f"evaluated {session.run_id} after step 2: val_loss " in shown.output
    assert "not covered by epsilon" in shown.output
    evals = _events(store, session.run_id, "eval")
    assert [e.step for e in evals] == [0, 2]
    after = store.get(session.run_id)
    assert after.status == "stopped" and after.summary["val_loss"] == pytest.approx(evals[-1].val_loss)
    assert after.summary["epsilon"] == summary["epsilon"]  # an evaluation spends no budget: the claim is unchanged
    # the same adapter scored as a periodic evaluation scores it: a second evaluation gives the same numbers
    again = evaluate_run(session.run_id, store=store, generate=False)
    assert again.val_loss == pytest.approx(evals[-1].val_loss) and again.accuracy == evals[-1].accuracy


def test_a_stop_during_an_evaluation_abandons_it_at_the_next_batch(monkeypatch):
    """The periodic evaluation checks the stop flag between its batches: a Stop pressed during one waits for the batch
    under way, not for the whole validation split."""
    cfg = RunConfig(
        **dict(TINY_RUN, eval_max_examples=32), max_steps=20, eval_every=2, noise_multiplier=1.0, baseline_eval=False
    )
    session = Session(cfg, store=RunStore())
    batches = []
    real = evaluate_mod.per_example_loss

    def one_batch(model, batch, **kw):  # the evaluation's forward pass; Stop pressed during the first batch
        batches.append(len(batch["input_ids"]))
        session.stop()
        return real(model, batch, **kw)

    monkeypatch.setattr(evaluate_mod, "per_example_loss", one_batch)
    summary = session.run()
    assert summary["status"] == "stopped" and summary["steps"] == 2, summary
    assert len(batches) == 1  # of 32 / 8 = 4
    assert not [e for e in session.events if e.kind == "eval"]


def test_runs_evaluate_says_why_a_run_cannot_be_evaluated():
    store = RunStore()
    never = Session(RunConfig(**TINY_RUN, max_steps=5, noise_multiplier=1.0), store=store)
    never.stop()  # stopped before its first step: no adapter
    assert never.run()["adapter_dir"] is None
    out = CliRunner().invoke(app, ["runs", "evaluate", never.run_id])
    assert out.exit_code == 2 and "Traceback" not in out.output
    assert f"run {never.run_id} has no adapter to evaluate: it ended before its first step" in out.output
    store.create_run("20260101-000000-abcdef", config={"model": "tiny"}, status="running")  # this process: alive
    with pytest.raises(EvaluateError, match="is running: evaluate it once it has ended"):
        evaluate_run("20260101-000000-abcdef", store=store)
    missing = CliRunner().invoke(app, ["runs", "evaluate", "nope"])
    assert missing.exit_code == 2 and "no run with id 'nope'" in missing.output


def test_evaluate_gives_a_finished_runs_last_evaluation_again():
    """The stored adapter, loaded into the model its config builds and scored on the run's validation split, gives
    the numbers the run's own last evaluation gave: the same examples, the same weights, the same scoring."""
    store = RunStore()
    summary = Session(RunConfig(**TINY_RUN, max_steps=2, noise_multiplier=1.0, baseline_eval=False), store=store).run()
    assert summary["status"] == "finished"
    again = evaluate_run(summary["run_id"], store=store, generate=False)
    assert again.step == 2
    assert again.val_loss == pytest.approx(summary["val_loss"], rel=1e-5) and again.accuracy == summary["accuracy"]


def test_a_stop_ends_the_forward_pass_under_way_at_its_next_layer(tmp_path):
    """Stop pressed while a micro-batch's forward pass runs (seconds for the default model on a CPU): the pass ends
    before the next layer, the partial step is discarded and the adapter keeps the weights of the last whole step."""
    prepared = prepare(RunConfig(**TINY_RUN, max_steps=5, noise_multiplier=1.0))
    stop = threading.Event()
    trainer = Trainer(
        prepared,
        run_id="t",
        emit=lambda e: None,
        should_stop=stop.is_set,
        run_dir=tmp_path,
        randomness=RunRandomness.secret(),
    )
    layers = next(m for m in prepared.model.modules() if isinstance(m, torch.nn.ModuleList))
    reached = []
    layers[0].register_forward_pre_hook(lambda *_: stop.set() if trainer.step == 1 else None)  # Stop in step 2
    layers[-1].register_forward_hook(lambda *_: reached.append(trainer.step))

    def weights():
        return {n: p.detach().clone() for n, p in prepared.model.named_parameters() if p.requires_grad}

    before = weights()
    trainer.train_step(1)
    done = weights()
    with pytest.raises(StopRequested):
        trainer.train_step(2)
    trainer.dp.close()
    # step 1's micro-batches reached the last layer (during step 1, trainer.step is 0); step 2's stopped before it
    assert trainer.step == 1 and reached and set(reached) == {0}
    assert any(not torch.equal(before[n], done[n]) for n in before)  # step 1 was applied
    assert all(torch.equal(done[n], w) for n, w in weights().items())  # the partial step 2 was not
    assert all(p.grad is None for p in prepared.model.parameters())
