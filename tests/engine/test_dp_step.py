"""The DP step against independent oracles (REFERENCES.md section 4).

- per-example gradients of LoRA modules (and the peft classification head) against a
  microbatch-of-1 oracle, atol 1e-5 / rtol 1e-4, including empty and size-1 batches;
- no noise and no clipping equals the ordinary step;
- the clipping bound on neighbouring datasets, with a NaN and a huge-gradient example;
- a KS test on the released noise that accepts sigma and rejects sigma off by 30% either way;
- Poisson inclusion frequency and the batch-size distribution.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from workbench.engine.dp_step import DPGradient
from workbench.engine.grad_sample import PerExampleGrads, UnsupportedModelError
from workbench.engine.losses import per_example_loss
from workbench.engine.models import attach_lora, tiny_model
from workbench.engine.randomness import RunRandomness
from workbench.engine.sampling import micro_batches, poisson_sample

VOCAB = 97


def make_model(task: str, *, seed: int = 0, targets: str = "auto"):
    torch.manual_seed(seed)
    base = tiny_model(task=task, vocab_size=VOCAB, num_labels=3, pad_token_id=0, seed=seed)
    model = attach_lora(base, task=task, r=4, alpha=8, dropout=0.0, target_modules=targets)
    # LoRA B starts at zero, which makes A's gradient zero: perturb B so both are tested.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    return model


def per_layer_dp(**changes) -> tuple[PerExampleGrads, DPGradient]:
    """The causal tiny model's hooks and a per-layer-clipping DPGradient over them (C = 1, sigma = 1, seeded
    noise: a test's own oracle); ``changes``: other DPGradient settings."""
    hooks = PerExampleGrads(make_model("causal_lm"))
    noise = RunRandomness.seeded(0).noise()
    settings = dict(max_grad_norm=1.0, noise_multiplier=1.0, noise=noise, clipping="per_layer", **changes)
    return hooks, DPGradient(hooks.trainable_parameters(), **settings)


def make_batch(task: str, lengths: list[int], *, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    t = max(lengths) if lengths else 0
    b = len(lengths)
    ids = torch.randint(1, VOCAB, (b, t), generator=g)
    mask = torch.zeros(b, t, dtype=torch.long)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
    ids = ids * mask  # pad id 0
    batch = {"input_ids": ids, "attention_mask": mask}
    if task == "classification":
        batch["labels"] = torch.randint(0, 3, (b,), generator=g)
    else:
        labels = ids.clone()
        labels[mask == 0] = -100
        labels[:, :2] = -100  # a "prompt" that does not count
        batch["labels"] = labels
    return batch


def oracle_grads(model, batch, task) -> dict[str, torch.Tensor]:
    """Per-example gradients by one backward pass per example (the slow, obviously right way)."""
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    out = {n: [] for n in params}
    b = batch["input_ids"].shape[0]
    for i in range(b):
        one = {k: v[i : i + 1] for k, v in batch.items()}
        n = int(one["attention_mask"].sum())
        one = {k: (v[:, :n] if v.dim() == 2 else v) for k, v in one.items()}
        model.zero_grad(set_to_none=True)
        loss, _ = per_example_loss(model, one, task=task)
        loss.sum().backward()
        for name, p in params.items():
            out[name].append(p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p))
    return {n: torch.stack(v) for n, v in out.items()}


def hook_grads(model, batch, task) -> dict[str, torch.Tensor]:
    hooks = PerExampleGrads(model)
    hooks.enabled = True
    loss, _ = per_example_loss(model, batch, task=task)
    loss.sum().backward()
    names = {id(p): n for n, p in model.named_parameters()}
    out = {}
    for mod_name, ps in hooks.trainable_parameters().items():
        for pname, p in ps:
            out[names[id(p)]] = getattr(hooks.grads[mod_name], pname)
    hooks.remove()
    model.zero_grad(set_to_none=True)
    return out


@pytest.mark.parametrize("task", ["causal_lm", "classification"])
@pytest.mark.parametrize("lengths", [[7, 5, 9, 3], [6]])
def test_per_example_grads_match_microbatch_oracle(task, lengths):
    model = make_model(task)
    batch = make_batch(task, lengths)
    fast = hook_grads(model, batch, task)
    slow = oracle_grads(model, batch, task)
    assert set(fast) == set(slow), "every trainable parameter has per-example gradients"
    assert any("lora_A" in n for n in fast) and any("lora_B" in n for n in fast)
    if task == "classification":
        assert any("modules_to_save" in n for n in fast), "peft's trainable copy of the head is covered"
    for name in slow:
        assert fast[name].shape == slow[name].shape, name
        torch.testing.assert_close(fast[name], slow[name], atol=1e-5, rtol=1e-4, msg=name)
        assert slow[name].abs().sum() > 0, f"{name}: the oracle gradient is zero, the test would be vacuous"


def test_all_linear_targets_are_covered():
    model = make_model("causal_lm", targets="all-linear")
    batch = make_batch("causal_lm", [5, 8])
    fast = hook_grads(model, batch, "causal_lm")
    slow = oracle_grads(model, batch, "causal_lm")
    assert any("mlp" in n for n in fast)
    for name in slow:
        torch.testing.assert_close(fast[name], slow[name], atol=1e-5, rtol=1e-4)


def test_trainable_non_linear_parameter_is_refused():
    model = make_model("causal_lm")
    next(p for n, p in model.named_parameters() if "norm" in n).requires_grad_(True)
    with pytest.raises(UnsupportedModelError, match="outside nn.Linear"):
        PerExampleGrads(model)


def _dp(model, *, C, sigma, seed=0):
    hooks = PerExampleGrads(model)
    dp = DPGradient(
        hooks.trainable_parameters(), max_grad_norm=C, noise_multiplier=sigma, noise=RunRandomness.seeded(seed).noise()
    )
    return hooks, dp


def _released(model, hooks, dp, batch, task, *, expected, physical=2, loss_fn=per_example_loss):
    dp.start()
    hooks.enabled = True
    b = batch["input_ids"].shape[0]
    for idx in micro_batches(np.arange(b), physical):
        mb = {k: v[idx] for k, v in batch.items()}
        hooks.reset()
        loss, _ = loss_fn(model, mb, task=task)
        loss.sum().backward()
        dp.add_microbatch(hooks.grads)
        model.zero_grad(set_to_none=True)
    stats_ = dp.finish(expected_batch_size=expected)
    out = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad(set_to_none=True)
    return out, stats_


def test_no_noise_no_clipping_equals_ordinary_step():
    model = make_model("causal_lm")
    batch = make_batch("causal_lm", [7, 5, 9, 3, 6])
    hooks, dp = _dp(model, C=None, sigma=0.0)
    released, st = _released(model, hooks, dp, batch, "causal_lm", expected=4.0)
    hooks.remove()
    loss, _ = per_example_loss(model, batch, task="causal_lm")
    (loss.sum() / 4.0).backward()
    for n, p in model.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(released[n], p.grad, atol=1e-6, rtol=1e-5)
    assert st.batch_size == 5 and st.clipped_fraction == 0.0


def _flat(d):
    return torch.cat([v.flatten() for _, v in sorted(d.items())])


@pytest.mark.parametrize("poison", ["nan", "huge", "normal"])
def test_clipping_bounds_sensitivity_on_neighbouring_datasets(poison):
    """D and D' differ by one example; with sigma=0 the released sums differ by at most C."""
    C = 0.05
    model = make_model("causal_lm")
    base = make_batch("causal_lm", [7, 5, 9, 3], seed=1)
    extra = make_batch("causal_lm", [8], seed=2)
    neighbour = {
        k: torch.cat(
            [
                base[k],
                torch.nn.functional.pad(
                    extra[k], (0, base[k].shape[1] - extra[k].shape[1]), value=(-100 if k == "labels" else 0)
                )[:, : base[k].shape[1]],
            ]
        )
        for k in base
    }
    hooks, dp = _dp(model, C=C, sigma=0.0)
    a, _ = _released(model, hooks, dp, base, "causal_lm", expected=1.0)

    def poisoned(m, b, task):
        # The extra (last) example's loss is scaled to NaN or 1e30: its gradient is non-finite or huge.
        loss, logits = per_example_loss(m, b, task=task)
        scale = torch.ones_like(loss)
        scale[-1] = float("nan") if poison == "nan" else 1e30
        return loss * scale, logits

    fn = per_example_loss if poison == "normal" else poisoned
    b, st = _released(model, hooks, dp, neighbour, "causal_lm", expected=1.0, physical=5, loss_fn=fn)
    assert st.clipped_fraction > 0
    diff = float((_flat(a) - _flat(b)).norm())
    assert torch.isfinite(_flat(b)).all()
    assert diff <= C * (1 + 1e-4), f"sensitivity {diff} exceeds C={C}"
    if poison == "normal":
        assert diff > 0.5 * C, "the extra example should be clipped to about C (the test must be able to fail)"


def test_released_noise_has_the_calibrated_scale():
    """KS test on an empty batch: accepts sigma*C/(qN), rejects it off by 30% either way."""
    sigma, C, expected = 1.3, 0.7, 5.0
    model = make_model("causal_lm")
    hooks, dp = _dp(model, C=C, sigma=sigma, seed=3)
    empty = make_batch("causal_lm", [])
    released, st = _released(model, hooks, dp, empty, "causal_lm", expected=expected)
    assert st.batch_size == 0
    noise = _flat(released).numpy() * expected
    assert noise.size > 1000
    std = sigma * C
    assert stats.kstest(noise, "norm", args=(0, std)).pvalue > 1e-3
    assert stats.kstest(noise, "norm", args=(0, 0.7 * std)).pvalue < 1e-6
    assert stats.kstest(noise, "norm", args=(0, 1.3 * std)).pvalue < 1e-6
    assert all(v == pytest.approx(std) for v in st.module_noise_std.values())


def test_poisson_inclusion_frequency_and_batch_sizes():
    rng = np.random.default_rng(0)
    n, q, draws = 500, 0.04, 4000
    counts = np.zeros(n)
    sizes = []
    for _ in range(draws):
        idx = poisson_sample(n, q, rng)
        counts[idx] += 1
        sizes.append(len(idx))
    assert abs(counts.sum() / (n * draws) - q) < 0.003
    assert np.abs(counts / draws - q).max() < 0.03  # every example, not just on average
    sizes = np.array(sizes)
    # batch size ~ Binomial(n, q): compare mean, variance and the chance of an empty batch.
    assert abs(sizes.mean() - n * q) < 0.3
    assert abs(sizes.var() / (n * q * (1 - q)) - 1) < 0.1
    small = poisson_sample(3, 0.2, np.random.default_rng(1))
    assert len(small) <= 3
    empties = sum(len(poisson_sample(10, 0.05, rng)) == 0 for _ in range(4000)) / 4000
    assert abs(empties - 0.95**10) < 0.03, "empty batches happen and are not re-drawn"


def test_micro_batches_bound_memory_whatever_q():
    idx = np.arange(37)
    parts = micro_batches(idx, 8)
    assert [len(p) for p in parts] == [8, 8, 8, 8, 5]
    assert np.array_equal(np.concatenate(parts), idx)
    assert micro_batches(np.arange(0), 8) == []


@pytest.mark.parametrize("kind", ["flat", "per_layer", "none"])
def test_clipping_strategies_return_factors_and_mask_that_agree(kind):
    from workbench.engine.clipping import make_clipping

    gen = torch.Generator().manual_seed(0)
    sq = {"a": torch.rand(50, generator=gen) * 4, "b": torch.rand(50, generator=gen) * 4}
    total = (sq["a"] + sq["b"]).sqrt()
    clip = make_clipping(
        kind if kind != "none" else "flat", max_grad_norm=None if kind == "none" else 1.5, blocks=["a", "b"]
    )
    factors, clipped = clip.factors(sq, total)
    scaled = {g: (sq[g].sqrt() * factors[g]) for g in sq}
    shrunk = torch.stack([factors[g] < 1 for g in sq]).any(0)
    assert torch.equal(shrunk, clipped), "a unit is clipped exactly when one of its factors is below 1"
    if kind == "flat":
        assert bool(((scaled["a"] ** 2 + scaled["b"] ** 2).sqrt() <= 1.5 + 1e-5).all()) and bool(clipped.any())
    if kind == "per_layer":
        assert all(bool((scaled[g] <= 1.5 + 1e-5).all()) for g in sq) and bool(clipped.any())
    if kind == "none":
        assert not bool(clipped.any()) and all(bool((f == 1).all()) for f in factors.values())


def test_lora_on_embeddings_is_refused_in_one_place():
    from peft import LoraConfig, get_peft_model

    model = make_model("causal_lm")
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    for p in base.parameters():
        p.requires_grad_(False)
    emb = get_peft_model(base, LoraConfig(r=2, target_modules=["embed_tokens"]))
    with pytest.raises(UnsupportedModelError, match="embedding"):
        PerExampleGrads(emb)
