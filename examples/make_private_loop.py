"""DP-SGD in a hand-written PyTorch loop with workbench.make_private (the engine of `workbench train`).

python examples/make_private_loop.py --model tiny --max-steps 3
"""

from __future__ import annotations

import argparse

import torch

import workbench
from workbench.engine import data as data_mod
from workbench.engine.losses import per_example_loss
from workbench.engine.models import attach_lora, load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--max-steps", type=int, default=20)
    parser.add_argument("--target-epsilon", type=float, default=8.0)
    opts = parser.parse_args()

    model, tokenizer, _ = load_model(opts.model, task="causal_lm", device=torch.device("cpu"))
    model = attach_lora(model, task="causal_lm", r=8, alpha=16, dropout=0.0, target_modules="q_proj,v_proj")
    train = data_mod.tokenize_dataset(data_mod.load_dataset("demo"), tokenizer, max_seq_len=64)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-3)
    private = workbench.make_private(
        model,
        optimizer,
        dataset=train,
        data_name="demo",
        expected_batch_size=16,
        physical_batch_size=8,
        max_steps=opts.max_steps,
        target_epsilon=opts.target_epsilon,
        name="make-private-example",
    )
    model.eval()  # no dropout under DP (the config refuses lora_dropout > 0 for the same reason)

    def collate(examples):
        return data_mod.collate(examples, pad_id=tokenizer.pad_token_id)

    for micro_batches in private.loader(train, collate):  # one logical step: a Poisson batch, maybe empty
        for batch in micro_batches:
            losses, _ = per_example_loss(model, batch, task="causal_lm")  # (b,): one loss per example
            private.backward(losses)
        event = private.step()
        print(f"step {event.step}: loss {event.loss:.3f}, batch {event.batch_size}, epsilon {event.epsilon:.3f}")
    summary = private.end()
    print(
        f"{summary['status']}: epsilon = {summary['epsilon']:.3f} after {summary['steps']} steps; run {private.run_id}"
    )


if __name__ == "__main__":
    main()
