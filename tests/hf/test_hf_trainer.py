"""workbench.hf: transformers' Trainer (and TRL's SFTTrainer) driving the engine's DP step (tiny model, CPU)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from hf_helpers import config, lora, max_diff, prepared, trainer, training_args

from workbench.session import Session
from workbench.store.runs import RunStore

pytest.importorskip("accelerate")


def test_a_trainer_run_gives_workbench_trains_adapter_epsilon_and_report(tmp_path):
    cfg = config(max_steps=3, noise_seed=7)
    summary = Session(cfg).run()
    p = prepared(max_steps=3, noise_seed=7)
    t = trainer(p, tmp_path / "out")
    t.train()
    t.save_model()
    assert t.privacy.plan.noise_multiplier == pytest.approx(summary["noise_multiplier"], rel=1e-12)
    assert t.privacy.epsilon == pytest.approx(summary["epsilon"], rel=1e-12) and t.state.global_step == 3
    assert max_diff(lora(summary["adapter_dir"]), lora(str(tmp_path / "out"))) < 1e-5  # the same adapter
    report = json.loads((tmp_path / "out" / "privacy_report.json").read_text())
    assert report["epsilon"] == pytest.approx(summary["epsilon"]) and report["steps"] == 3
    assert report["noise_multiplier"] == pytest.approx(summary["noise_multiplier"]) and report["seeded_randomness"]
    card = (tmp_path / "out" / "README.md").read_text()
    assert "## Differential privacy" in card and "seeded randomness" in card
    assert "randomness.key" not in " ".join(p.name for p in (tmp_path / "out").iterdir())


def test_accumulation_of_1_2_and_4_is_one_dp_step_per_update_with_the_same_sigma_epsilon_and_adapter(tmp_path):
    results = []
    for g in (1, 2, 4):
        p = prepared(max_steps=3, noise_seed=3)
        args = training_args(
            tmp_path / f"g{g}", max_steps=3, gradient_accumulation_steps=g, per_device_train_batch_size=4
        )
        t = trainer(p, None, args=args)
        t.train()
        steps = [e for _, e in t.privacy.store.events(t.privacy.run_id) if e.kind == "step"]
        assert [e.step for e in steps] == [1, 2, 3] and t.state.global_step == 3  # updates, not micro-batches
        results.append(
            (t.privacy.plan.noise_multiplier, t.privacy.epsilon, lora(p.model), [e.batch_size for e in steps])
        )
    (s1, e1, a1, b1), *rest = results
    for s, e, a, b in rest:
        assert s == s1 and e == e1 and b == b1  # the same Poisson batches, the same accounting
        assert max_diff(a, a1) < 1e-5  # the same noisy sums, only cut differently


def test_stop_and_resume_continues_the_key_and_reports_the_whole_schedule(tmp_path):
    from transformers import TrainerCallback

    whole = prepared(max_steps=4, noise_seed=11)
    t = trainer(whole, None, args=training_args(tmp_path / "whole", max_steps=4))
    t.train()
    want_eps, want = t.privacy.epsilon, lora(whole.model)

    class StopAt2(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == 2:
                control.should_training_stop = True

    out = tmp_path / "parts"
    first = prepared(max_steps=4, noise_seed=11)
    args = training_args(out, max_steps=4, save_strategy="steps", save_steps=2)
    t1 = trainer(first, None, args=args, callbacks=[StopAt2()])
    t1.train()
    assert t1.privacy.steps_done == 2 and (out / "checkpoint-2" / "dp_state.json").exists()
    state = json.loads((out / "checkpoint-2" / "dp_state.json").read_text())
    assert state["steps_done"] == 2 and "key" not in json.dumps(state).lower().replace("keep", "")
    again = prepared(max_steps=4, noise_seed=11)  # a fresh process would rebuild the same model and data
    t2 = trainer(again, None, args=training_args(out, max_steps=4, save_strategy="steps", save_steps=2))
    t2.train(resume_from_checkpoint=True)
    assert t2.privacy.run_id == t1.privacy.run_id and t2.privacy.steps_done == 4
    assert t2.privacy.epsilon == pytest.approx(want_eps, rel=1e-12)
    assert max_diff(lora(again.model), want) < 1e-5  # sampling and noise continued from the key, not restarted
    events = RunStore().events(t2.privacy.run_id)
    assert [e.step for _, e in events if e.kind == "step"] == [1, 2, 3, 4]
    assert RunStore().get(t2.privacy.run_id).status == "finished"


def test_the_run_is_in_the_store_the_live_view_and_the_ledger(tmp_path, ctx):
    from workbench.app.live import update
    from workbench.hf import PrivacyArguments
    from workbench.store.ledger import Ledger

    p = prepared(max_steps=2)
    secret = PrivacyArguments(target_epsilon=8.0, expected_batch_size=16)  # no noise_seed: a private run
    t = trainer(p, None, args=training_args(tmp_path, max_steps=2), run_name="from-a-trainer", privacy=secret)
    t.train()
    run_id = t.privacy.run_id
    record = ctx.store.get(run_id)
    assert record.status == "finished" and record.name == "from-a-trainer"
    kinds = [e.kind for _, e in ctx.store.events(run_id)]
    assert kinds[0] == "run_started" and kinds.count("step") == 2 and kinds[-1] == "run_ended"
    view = update(ctx, run_id, after=0, follow=False)
    assert view["run"] == run_id and [r["step"] for r in view["steps"]] == [1, 2] and view["started"]
    assert view["steps"][-1]["epsilon"] == pytest.approx(t.privacy.epsilon)
    (row,) = [e for e in Ledger(ctx.store).entries() if e.run_id == run_id]
    assert row.epsilon == pytest.approx(t.privacy.epsilon) and row.fingerprint and not row.non_private
    assert "are not records" in row.note  # tokenised rows only: named by their raw content, and it says so
    assert (ctx.store.run_dir(run_id) / "randomness.key").exists()  # secret mode: the key beside the run only


def test_store_none_writes_nothing(tmp_path):
    p = prepared(max_steps=1)
    t = trainer(p, None, args=training_args(tmp_path, max_steps=1), store=None)
    t.train()
    assert t.privacy.steps_done == 1 and RunStore().list() == []


def test_sft_trainer_on_chat_data_stays_within_its_target_and_trains_the_lora_weights(tmp_path):
    trl = pytest.importorskip("trl")
    datasets = pytest.importorskip("datasets")
    from peft import LoraConfig, get_peft_model

    from workbench.engine.models import tiny_model, tiny_tokenizer
    from workbench.hf import PrivacyArguments, make_dp_trainer

    tok = tiny_tokenizer()
    model = get_peft_model(
        tiny_model(task="causal_lm", vocab_size=len(tok), pad_token_id=tok.pad_token_id),
        LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"),
    )
    chats = [
        {"messages": [{"role": "user", "content": f"Please refill my prescription {i}."},
                      {"role": "assistant", "content": "Department: Pharmacy"}]}
        for i in range(40)
    ]  # fmt: skip
    args = trl.SFTConfig(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4,
        gradient_accumulation_steps=2,
        num_train_epochs=1,
        max_length=48,
        learning_rate=5e-3,
        report_to=[],
        save_strategy="no",
        logging_strategy="no",
        use_cpu=True,
        bf16=False,
        gradient_checkpointing=False,  # SFTConfig's default; per-example hooks need it off (refused otherwise)
        disable_tqdm=True,
    )
    before = lora(model)
    DPSFTTrainer = make_dp_trainer(trl.SFTTrainer)
    t = DPSFTTrainer(
        model=model,
        args=args,
        train_dataset=datasets.Dataset.from_list(chats),
        processing_class=tok,
        privacy_args=PrivacyArguments(target_epsilon=4.0, expected_batch_size=8, neighboring="replace_one"),
    )
    t.train()
    plan = t.privacy.plan
    assert plan.steps == math.ceil(1 / (8 / 40)) == t.state.global_step  # epochs / q optimizer updates
    assert 0 < t.privacy.epsilon <= 4.0 * (1 + 1e-9)
    assert max_diff(lora(model), before) > 0  # the LoRA weights moved
    t.save_model()
    assert json.loads((tmp_path / "privacy_report.json").read_text())["epsilon"] == pytest.approx(t.privacy.epsilon)
    assert model.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=2).shape[1] == 5  # still a PeftModel
