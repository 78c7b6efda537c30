"""The training engine end to end on the tiny model: privacy claims, reproducibility, stopping,
the run store, adapters that move (Opacus #820), and the peft classification head."""

from __future__ import annotations

import json
import math
from pathlib import Path

import dp_accounting
import pytest
import torch
from factories import TINY_RUN
from safetensors.torch import load_file

from workbench import train
from workbench.config import ConfigError, RunConfig
from workbench.session import Session
from workbench.store.runs import RunStore

FAST = dict(TINY_RUN, generate_max_new_tokens=4, eval_max_examples=16)


def pld_epsilon(q, sigma, steps, delta, neighboring="replace_one") -> float:
    """Independent oracle: Google's dp_accounting PLD for the Poisson-subsampled Gaussian (the engine's
    default relation for example-level PLD runs is replace-one: plan.py)."""
    relation = {
        "replace_one": dp_accounting.NeighboringRelation.REPLACE_ONE,
        "add_remove": dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE,
    }[neighboring]
    acc = dp_accounting.pld.PLDAccountant(neighboring_relation=relation)
    acc.compose(dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)), steps)
    return acc.get_epsilon(delta)


def events_of(store: RunStore, run_id: str) -> list:
    return [e for _, e in store.events(run_id)]


def test_private_run_reports_the_accountants_epsilon_and_saves_adapter(tmp_path):
    store = RunStore()
    s = Session(RunConfig(**FAST, max_steps=4, noise_multiplier=1.1), store=store)
    summary = s.run()
    assert summary["status"] == "finished", summary
    assert summary["steps"] == 4 and summary["neighboring"] == "replace_one"
    expected = pld_epsilon(summary["sample_rate"], 1.1, 4, summary["delta"])
    assert summary["epsilon"] == pytest.approx(expected, rel=0.01)
    assert summary["delta"] < 1 / summary["dataset_size"]
    kinds = [e.kind for e in events_of(store, s.run_id)]
    assert kinds[0] == "run_started" and kinds[-1] == "run_ended"
    assert kinds.count("step") == 4 and "eval" in kinds
    steps = [e for e in events_of(store, s.run_id) if e.kind == "step"]
    for e in steps:  # every step's epsilon is the accountant's for that many steps
        assert e.epsilon == pytest.approx(pld_epsilon(summary["sample_rate"], 1.1, e.step, summary["delta"]), rel=0.01)
        assert sum(e.grad_norm_hist) == e.batch_size
        assert set(e.module_noise_std) == set(e.module_grad_norm)
    started = events_of(store, s.run_id)[0]
    assert started.planned_epsilon[-1][1] == pytest.approx(summary["epsilon"], rel=0.01)
    adapter = Path(summary["adapter_dir"])
    assert (adapter / "adapter_config.json").exists() and (adapter / "adapter_model.safetensors").exists()
    report = json.loads((adapter / "privacy_report.json").read_text())
    assert report["sampling"].startswith("poisson") and report["privacy_unit"] == "example"
    assert report["epsilon"] == pytest.approx(summary["epsilon"])
    card = (adapter / "README.md").read_text()
    for word in (
        "epsilon",
        "delta",
        "accountant",
        "sampling",
        "unit of privacy",
        "clipping norm",
        "noise multiplier",
        "steps",
        "dataset size",
    ):
        assert word in card


def test_target_epsilon_is_calibrated_and_never_exceeded():
    summary = train(**FAST, max_steps=5, target_epsilon=3.0, delta=1e-5)
    assert summary["status"] == "finished"
    assert summary["epsilon"] <= 3.0
    assert summary["epsilon"] > 2.9, "calibration should spend nearly the whole budget"


def test_training_stops_when_the_budget_is_spent():
    summary = train(**FAST, max_steps=200, noise_multiplier=1.0, target_epsilon=0.45)
    assert summary["status"] == "finished"
    assert "budget" in summary["reason"]
    assert 0 < summary["steps"] < 200
    assert summary["epsilon"] <= 0.45


def test_non_private_baseline_reports_infinite_epsilon():
    summary = train(**FAST, max_steps=2, noise_multiplier=0, max_grad_norm=None, target_epsilon=None)
    assert summary["status"] == "finished"
    assert math.isinf(summary["epsilon"])


def _lora_tensors(adapter_dir: str) -> dict[str, torch.Tensor]:
    return load_file(str(Path(adapter_dir) / "adapter_model.safetensors"))


def test_adapters_move_under_dp():
    """Guard against DP-LoRA silently not updating the adapters (Opacus #820)."""
    summary = train(**FAST, max_steps=3, noise_multiplier=0.5, learning_rate=1e-2)
    tensors = _lora_tensors(summary["adapter_dir"])
    b_weights = [t for k, t in tensors.items() if "lora_B" in k]
    assert b_weights and all(t.abs().sum() > 0 for t in b_weights), "LoRA B starts at zero and must have moved"


def test_runs_are_reproducible_only_from_the_labelled_noise_seed():
    """seed alone no longer reproduces a run (sampling and noise come from a secret key); noise_seed does,
    and its runs are labelled as having no DP guarantee (tests/privacy/test_true_epsilon.py checks the labels)."""
    a = train(**FAST, max_steps=3, noise_multiplier=1.0, seed=7, noise_seed=7)
    b = train(**FAST, max_steps=3, noise_multiplier=1.0, seed=7, noise_seed=7)
    c = train(**FAST, max_steps=3, noise_multiplier=1.0, seed=7, noise_seed=8)
    d = train(**FAST, max_steps=3, noise_multiplier=1.0, seed=7)
    ta, tb, tc, td = (_lora_tensors(s["adapter_dir"]) for s in (a, b, c, d))
    for k in ta:
        torch.testing.assert_close(ta[k], tb[k])
    assert any(not torch.equal(ta[k], tc[k]) for k in ta)
    assert any(not torch.equal(ta[k], td[k]) for k in ta)
    assert a["seeded_randomness"] and not d["seeded_randomness"]


def test_stop_takes_effect_within_one_step():
    store = RunStore()
    seen = []
    session = Session(RunConfig(**FAST, max_steps=500, noise_multiplier=1.0), store=store)

    def on_event(e):
        if e.kind == "step":
            seen.append(e.step)
            if e.step == 2:
                session.stop()

    session.subscribe(on_event)
    session.start()
    summary = session.wait(timeout=300)
    assert summary["status"] == "stopped"
    assert summary["steps"] <= 3
    assert store.get(session.run_id).status == "stopped"
    # stopped by hand: the planned epsilon is claimed, the steps done's only beside it (issue 26)
    assert summary["epsilon"] == pytest.approx(
        pld_epsilon(summary["sample_rate"], 1.0, 500, summary["delta"]), rel=0.01
    )
    assert summary["steps_done_epsilon"] == pytest.approx(
        pld_epsilon(summary["sample_rate"], 1.0, summary["steps"], summary["delta"]), rel=0.01
    )


def test_a_raising_subscriber_never_stops_training():
    def broken(_event):
        raise RuntimeError("subscriber bug")

    session = Session(RunConfig(**FAST, max_steps=2, noise_multiplier=1.0), subscribers=(broken,))
    assert session.run()["status"] == "finished"


def test_classification_trains_the_peft_head_under_dp(tmp_path):
    rows = [
        {"text": f"{w} movie number {i}", "label": lab}
        for i in range(40)
        for w, lab in (("great", "pos"), ("awful", "neg"))
    ]
    path = tmp_path / "reviews.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    summary = train(
        **FAST, data=str(path), max_steps=3, noise_multiplier=0.8, learning_rate=1e-2, labels=["neg", "pos"]
    )
    assert summary["status"] == "finished", summary
    assert summary["accuracy"] is not None
    tensors = _lora_tensors(summary["adapter_dir"])
    assert any("score" in k for k in tensors), "the classification head is saved with the adapter"


def test_config_overrides_and_messages():
    cfg = RunConfig().with_overrides(["batch_size=64", "model=tiny", "delta=1e-6"])
    assert cfg.batch_size == 64 and cfg.delta == 1e-6
    with pytest.raises(ConfigError, match="unknown config key 'batchsize'"):
        RunConfig().with_overrides(["batchsize=3"])
    with pytest.raises(ConfigError, match="delta"):
        RunConfig().with_overrides(["delta=2"])
    with pytest.raises(ConfigError, match="target_epsilon"):
        RunConfig().with_overrides(["target_epsilon=-1"])
    assert RunConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_path_bf16_backbone_fp32_lora():
    summary = train(**{**FAST, "device": "cuda"}, max_steps=2, noise_multiplier=1.0)
    assert summary["status"] == "finished"
    tensors = _lora_tensors(summary["adapter_dir"])
    assert all(t.dtype == torch.float32 for t in tensors.values())


def test_lora_layers_limits_adapters_to_the_last_layers():
    summary = train(**FAST, max_steps=1, noise_multiplier=1.0, lora_layers=1)
    assert summary["status"] == "finished"
    assert set(summary["noise_allocation"]) == {"layers.1.self_attn.q_proj", "layers.1.self_attn.v_proj"}


def test_exported_adapter_names_a_portable_base_model_not_a_cache_path(tmp_path):
    from workbench.engine.models import base_model_name

    summary = train(**FAST, max_steps=1, noise_multiplier=1.0)
    adapter = Path(summary["adapter_dir"])
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "tiny"
    report = json.loads((adapter / "privacy_report.json").read_text())
    assert report["base_model"] == "tiny" and "built in code" in report["base_model_source"]
    assert "| base model | tiny" in (adapter / "README.md").read_text()
    assert base_model_name("default") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert ".cache" not in base_model_name("default")


def _unit_gradient(prepared, batch_indices, *, seed: int) -> torch.Tensor:
    """Unit ``batch_indices[0]``'s gradient of the LoRA weights, computed in a batch with the others (a fixed seed:
    the masks the public generator would draw)."""
    from workbench.engine import data as data_mod
    from workbench.engine.losses import per_example_loss

    model = prepared.model
    model.zero_grad(set_to_none=True)
    batch = data_mod.collate([prepared.train_tok[i] for i in batch_indices], pad_id=prepared.tokenizer.pad_token_id)
    torch.manual_seed(seed)
    loss, _ = per_example_loss(model, batch, task=prepared.task)
    loss[0].backward()
    return torch.cat([p.grad.reshape(-1) for n, p in model.named_parameters() if "lora_" in n and p.grad is not None])


def test_lora_dropout_is_refused_under_dp_for_its_masks_couple_the_units():
    """With dropout, one unit's gradient depends on which other units share its batch (the masks come from one
    public generator in batch order), so the clipping bound does not cover what adding a unit changes. A private
    run refuses lora_dropout > 0 with one message and trains without dropout; a non-private one keeps it."""
    from workbench.engine.prepare import prepare

    prepared = prepare(RunConfig(**FAST, noise_multiplier=0.0, lora_dropout=0.5, max_steps=1))
    with torch.no_grad():  # LoRA's B starts at zero: give it weights, so the dropped inputs reach the gradient of A
        for name, p in prepared.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    prepared.model.train()
    with_1, with_2 = _unit_gradient(prepared, [0, 1], seed=0), _unit_gradient(prepared, [0, 2], seed=0)
    assert (with_1 - with_2).norm() / with_1.norm() > 0.05  # the attack: unit 0's gradient moves with its company
    prepared.model.eval()  # how a private run trains (Trainer.set_training_mode)
    alone_1, alone_2 = _unit_gradient(prepared, [0, 1], seed=0), _unit_gradient(prepared, [0, 2], seed=0)
    assert torch.allclose(alone_1, alone_2, rtol=1e-4, atol=1e-7)
    for private in ({"target_epsilon": 8.0}, {"noise_multiplier": 1.0}):
        with pytest.raises(ConfigError) as err:
            RunConfig.from_dict({**FAST, "lora_dropout": 0.1, **private})
        assert str(err.value).count("lora_dropout=0.1 is refused for a private run") == 1, str(err.value)
    assert RunConfig(**FAST, noise_multiplier=0.0, lora_dropout=0.1).lora_dropout == 0.1
