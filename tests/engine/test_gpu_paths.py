"""What only a GPU shows (marked ``gpu``, skipped without CUDA; benchmarks/gpu_check.py runs them first):
per-example gradients under bf16 autocast against an fp32 microbatch-of-1 oracle, and peak memory flat in the
logical batch size (micro-batches bound it whatever q is)."""

from __future__ import annotations

import pytest
import torch

from workbench.engine.dp_step import DPGradient
from workbench.engine.grad_sample import PerExampleGrads
from workbench.engine.losses import per_example_loss
from workbench.engine.models import attach_lora, tiny_model
from workbench.engine.randomness import RunRandomness
from workbench.engine.sampling import micro_batches

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]
VOCAB = 97
# bf16 keeps 8 bits of mantissa: the backbone's activations and backpropagated errors carry a relative error of
# about 2^-8 each, so per-example gradients agree with the fp32 oracle to a few percent in norm, not to 1e-5
# (the same check under CPU bf16 autocast: worst 0.021 over all LoRA parameters and examples).
BF16_REL_TOL = 6e-2


def _model(device):
    torch.manual_seed(0)
    base = tiny_model(task="causal_lm", vocab_size=VOCAB, pad_token_id=0, seed=0)
    model = attach_lora(base, task="causal_lm", r=4, alpha=8, dropout=0.0, target_modules="all-linear").to(device)
    with torch.no_grad():  # LoRA B starts at zero (A's gradient would be zero): perturb it so both are tested
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    return model


def _batch(lengths, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    t = max(lengths)
    ids = torch.randint(1, VOCAB, (len(lengths), t), generator=g)
    mask = torch.zeros_like(ids)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
    ids = ids * mask
    labels = ids.clone()
    labels[mask == 0] = -100
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device), "labels": labels.to(device)}


def test_per_example_grads_under_bf16_autocast_match_the_fp32_oracle():
    device = torch.device("cuda")
    model = _model(device)
    batch = _batch([9, 5, 12, 7], device)
    hooks = PerExampleGrads(model)
    hooks.enabled = True
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss, _ = per_example_loss(model, batch, task="causal_lm")
    loss.sum().backward()
    names = {id(p): n for n, p in model.named_parameters()}
    fast = {
        names[id(p)]: getattr(hooks.grads[m], pname).float()
        for m, ps in hooks.trainable_parameters().items()
        for pname, p in ps
    }
    hooks.remove()
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    for i in range(4):  # the oracle: one fp32 backward per example, no autocast
        n = int(batch["attention_mask"][i].sum())
        one = {k: v[i : i + 1, :n] for k, v in batch.items()}
        model.zero_grad(set_to_none=True)
        loss, _ = per_example_loss(model, one, task="causal_lm")
        loss.sum().backward()
        for name, p in params.items():
            assert fast[name].dtype == torch.float32, "per-example gradients are kept in fp32"
            err = (fast[name][i] - p.grad).norm() / p.grad.norm().clamp(min=1e-12)
            assert err < BF16_REL_TOL, (name, i, float(err))


def test_peak_memory_is_flat_in_the_logical_batch_size():
    """A logical batch 8x larger, the same physical batch: peak memory within 1.2x (only the step's time grows)."""
    device = torch.device("cuda")
    model = _model(device)
    hooks = PerExampleGrads(model)
    hooks.enabled = True
    params = hooks.trainable_parameters()
    dp = DPGradient(params, max_grad_norm=1.0, noise_multiplier=1.0, noise=RunRandomness.secret().noise())
    flat = [p for ps in params.values() for _, p in ps]

    def peak(logical: int) -> int:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        dp.start()
        for micro in micro_batches(torch.arange(logical).numpy(), 8):
            batch = _batch([16] * len(micro), device, seed=int(micro[0]))
            hooks.reset()
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss, _ = per_example_loss(model, batch, task="causal_lm")
            loss.sum().backward()
            dp.add_microbatch(hooks.grads)
            for p in flat:
                p.grad = None
        dp.finish(expected_batch_size=float(logical))
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before

    peak(8)  # warm-up: allocator pools, kernels
    small, large = peak(8), peak(64)
    assert large <= 1.2 * small + 2**20, (small, large)
