"""The untuned baseline (engine/baseline.py): a step-0 evaluation on the held-out validation examples, measured once
per model, data and evaluation settings and then read from the cache under the workbench home; the command line's
summary puts it beside the run's metric with the sentence on what epsilon protects; a Stop skips the run's last
evaluation and abandons one under way. The tiny model throughout."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from factories import TINY_RUN
from typer.testing import CliRunner

import workbench.engine.trainer as trainer_mod
import workbench.engine.validation as validation_mod
from workbench.cli import app
from workbench.config import RunConfig
from workbench.engine.baseline import CACHE_FILE
from workbench.engine.randomness import RunRandomness
from workbench.session import Session
from workbench.store.export import export_run
from workbench.store.runs import RunStore

FAST = TINY_RUN


@pytest.fixture
def evaluations(monkeypatch):
    """Every call of the evaluate function the trainer's evaluations use (engine/validation.py): the examples it was
    given."""
    calls: list[list] = []
    real = validation_mod.evaluate

    def counting(model, examples, **kw):
        calls.append(list(examples))
        return real(model, examples, **kw)

    monkeypatch.setattr(validation_mod, "evaluate", counting)
    return calls


def _trainer(prepared, cache: Path, run_dir: Path):
    return trainer_mod.Trainer(
        prepared,
        run_id="t",
        emit=lambda e: None,
        run_dir=run_dir,
        randomness=RunRandomness.secret(),
        baseline_cache=cache,
    )


def test_the_baseline_is_measured_once_on_validation_data_and_keyed_by_data_and_settings(tmp_path, evaluations):
    cache = tmp_path / CACHE_FILE
    cfg = RunConfig(**FAST, max_steps=1, noise_multiplier=1.0)
    prepared = trainer_mod.prepare(cfg)
    first_trainer = _trainer(prepared, cache, tmp_path)
    first = first_trainer.baseline_evaluation()
    assert len(evaluations) == 1 and first.step == 0 and first.generations == []
    measured = evaluations[0]
    assert measured == prepared.val_tok[: cfg.eval_max_examples]  # the held-out examples the run evaluates on
    assert not any(ex is t for ex in measured for t in prepared.train_tok)  # never a training example
    assert first_trainer.baseline == {
        "val_loss": first.val_loss,
        "perplexity": first.perplexity,
        "accuracy": first.accuracy,
        "cached": False,
        "majority_label": first.majority_label,  # the validation labels' most frequent department, and its share
        "majority_share": first.majority_share,
    }
    assert first.majority_label is not None and 0 < first.majority_share < 1
    assert first.accuracy is not None  # the demo's answers are choices: accuracy is measured too

    again = _trainer(prepared, cache, tmp_path)
    second = again.baseline_evaluation()
    assert len(evaluations) == 1 and again.baseline["cached"]  # read, not measured
    assert (second.val_loss, second.accuracy, second.step) == (first.val_loss, first.accuracy, 0)

    data = tmp_path / "mine.jsonl"
    data.write_text("".join(f'{{"prompt": "question {i}", "response": "answer {i}"}}\n' for i in range(120)))
    other = _trainer(trainer_mod.prepare(cfg.with_overrides({"data": str(data)})), cache, tmp_path)
    other.baseline_evaluation()
    assert len(evaluations) == 2 and not other.baseline["cached"]  # another dataset: not served the demo's value
    assert other.baseline["val_loss"] != first.val_loss
    fewer = _trainer(
        dataclasses.replace(prepared, config=cfg.with_overrides({"eval_max_examples": 4})), cache, tmp_path
    )
    fewer.baseline_evaluation()
    assert len(evaluations) == 3 and len(evaluations[-1]) == 4  # other evaluation settings: another key
    entries = json.loads(cache.read_text())
    assert len(entries) == 3 and all(
        set(e["metrics"]) == {"val_loss", "perplexity", "accuracy"} for e in entries.values()
    )


def test_the_second_run_reads_the_baseline_and_the_summary_sets_it_beside_the_metric(evaluations):
    runner = CliRunner()
    tiny = [x for key, value in FAST.items() for x in ("--set", f"{key}={value}")]
    args = ["train", *tiny, "--set", "max_steps=1", "--set", "noise_multiplier=1.0"]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    assert len(evaluations) == 2  # the untuned model, then the run's last evaluation
    second = runner.invoke(app, args)
    assert second.exit_code == 0, second.output
    assert len(evaluations) == 3  # the baseline came from the cache
    assert "untuned model (step 0)" in second.output  # the progress line of the step-0 evaluation
    assert (
        "against the untuned model and the majority class (validation telemetry, not covered by epsilon): accuracy "
        in (second.output)
    )
    assert "(untuned " in second.output and '; majority class "' in second.output
    assert "what epsilon protects: ε = " in second.output
    assert "bounds how much one example replaced by another can change what this run released" in second.output

    store = RunStore()
    runs = sorted(store.list(), key=lambda r: r.created)
    baselines = [r.summary["baseline"] for r in runs]
    assert [b["cached"] for b in baselines] == [False, True]
    assert baselines[0]["val_loss"] == baselines[1]["val_loss"]
    for r in runs:
        events = [e for _, e in store.events(r.id)]
        assert [e.kind for e in events[:2]] == ["run_started", "eval"] and events[1].step == 0
        started, steps = events[0], [e for e in events if e.kind == "step"]
        assert started.module_dims and sum(started.module_dims.values()) == started.trainable_parameters
        assert set(started.module_dims) == set(started.modules)
        assert all(sum(s.grad_norm_log_hist) == s.batch_size for s in steps)
        assert all(s.grad_norm_median is not None for s in steps if s.batch_size)
    released = json.loads((export_run(store, runs[0].id, Path(store.home) / "out") / "summary.json").read_text())
    assert "baseline" not in released and "epsilon" in released  # telemetry from the validation data stays out


def test_a_stop_skips_the_last_evaluation_and_abandons_one_under_way(monkeypatch):
    generated = []
    real = validation_mod.generate_samples

    def counting(*args, **kw):
        generated.append(kw["max_new_tokens"])
        return real(*args, **kw)

    monkeypatch.setattr(validation_mod, "generate_samples", counting)
    cfg = RunConfig(**{**FAST, "generate_max_new_tokens": 2}, noise_multiplier=1.0, baseline_eval=False)
    stopped = Session(cfg.with_overrides({"max_steps": 3, "eval_every": 1}), store=RunStore())
    stopped.subscribe(lambda e: stopped.stop() if e.kind == "eval" else None)  # Stop once step 1's evaluation is out
    summary = stopped.run()
    assert summary["status"] == "stopped" and summary["steps"] == 1
    # step 1's evaluation generates as before; after the Stop no evaluation runs (the last one is skipped)
    evals = [e for e in stopped.events if e.kind == "eval"]
    assert [e.step for e in evals] == [1] and evals[0].generations and generated == [2]
    assert summary["val_loss"] is not None  # that evaluation measured the weights the run saved
    assert set(summary["baseline"]) == {"majority_label", "majority_share"}  # baseline_eval=False: the labels' only

    # a Stop pressed after step 1, before its evaluation: the evaluation is abandoned before its first batch, the
    # summary has no validation numbers (none measured the saved weights), and nothing was generated
    generated.clear()
    again = Session(cfg.with_overrides({"max_steps": 3, "eval_every": 1}), store=RunStore())
    again.subscribe(lambda e: again.stop() if e.kind == "step" else None)
    summary = again.run()
    assert summary["status"] == "stopped" and summary["steps"] == 1
    assert [e.kind for e in again.events if e.kind == "eval"] == [] and generated == []
    assert "val_loss" not in summary and summary["adapter_dir"]


@pytest.fixture
def hub_like(monkeypatch):
    """The tiny model as a hub checkpoint comes: ``from_pretrained`` returns it in eval mode (the tiny model is built
    in code, in train mode), so whatever the trainer leaves the mode in shows."""
    real = trainer_mod.prepare

    def prepare(config):
        prepared = real(config)
        prepared.model.eval()
        return prepared

    monkeypatch.setattr(trainer_mod, "prepare", prepare)


@pytest.mark.parametrize("private", [True, False])
def test_the_training_mode_is_the_same_whether_the_baseline_was_measured_or_cached(private, monkeypatch, hub_like):
    """A cached baseline skips the evaluation that left the model in train mode: the trainer sets the mode itself
    before step 1, the same on a cache hit and a miss (a private run without dropout, a non-private one with it),
    and an evaluation between steps leaves it as it was."""
    modes: list[bool] = []
    real = trainer_mod.Trainer.train_step

    def spying(self, step):
        modes.append(self.p.model.training)
        return real(self, step)

    monkeypatch.setattr(trainer_mod.Trainer, "train_step", spying)
    noise = {"noise_multiplier": 1.0} if private else {"noise_multiplier": 0.0, "lora_dropout": 0.1}
    cfg = RunConfig(**FAST, max_steps=2, eval_every=1, **noise)
    store = RunStore()
    summaries = [Session(cfg, store=store).run() for _ in range(2)]
    assert [s["baseline"]["cached"] for s in summaries] == [False, True]  # a miss, then a hit
    assert modes == [not private] * 4


def test_a_replay_after_a_cache_hit_is_bit_identical(hub_like):
    """The run measured the baseline (a miss); its replay reads it from the cache (a hit) and must train the same
    model: with LoRA dropout (a non-private run may keep it) the mode decides every mask."""
    cfg = RunConfig(**FAST, max_steps=3, noise_multiplier=0.0, lora_dropout=0.3)
    store = RunStore()
    session = Session(cfg, store=store)
    assert session.run()["baseline"]["cached"] is False
    replay = CliRunner().invoke(app, ["runs", "replay", session.run_id, "--json"])
    assert replay.exit_code == 0, replay.output
    assert json.loads(replay.stdout[replay.stdout.index("{") :])["identical_adapter"] is True
    assert sorted(r.summary["baseline"]["cached"] for r in store.list()) == [False, True]
