"""workbench.hf and make_private refuse, with one message each and before any step, what they cannot privatise."""

from __future__ import annotations

import pytest
import torch
from hf_helpers import collator, prepared, trainer, training_args

from workbench.engine.grad_sample import UnsupportedModelError
from workbench.hf import DPTrainerError, PrivacyArguments


@pytest.fixture(scope="module")
def p():
    return prepared(max_steps=2, noise_multiplier=1.0)  # no calibration: the refusals come before any step


def test_a_trainable_layer_the_hooks_do_not_cover_is_refused(p, tmp_path):
    norm = next(m for n, m in p.model.named_modules() if n.endswith("input_layernorm"))
    norm.weight.requires_grad_(True)
    try:
        with pytest.raises(UnsupportedModelError, match="cannot be privatised"):
            trainer(p, None, args=training_args(tmp_path, max_steps=2))
    finally:
        norm.weight.requires_grad_(False)


def test_a_dataset_without_a_length_is_refused(p, tmp_path):
    class Stream(torch.utils.data.IterableDataset):
        def __iter__(self):
            yield from p.train_tok

    from workbench.hf import DPTrainer

    with pytest.raises(DPTrainerError, match="has no length"):
        DPTrainer(model=p.model, args=training_args(tmp_path, max_steps=2), train_dataset=Stream(),
                  data_collator=collator(p), privacy_args=PrivacyArguments())  # fmt: skip


def test_a_per_device_batch_above_the_expected_batch_is_refused(p, tmp_path):
    args = training_args(tmp_path, max_steps=2, per_device_train_batch_size=32)
    with pytest.raises(DPTrainerError, match="larger than the expected batch"):
        trainer(p, None, args=args, privacy=PrivacyArguments(expected_batch_size=16))


@pytest.mark.parametrize("setting", ["deepspeed", "fsdp"])
def test_deepspeed_and_fsdp_are_refused(p, tmp_path, setting):
    args = training_args(tmp_path, max_steps=2)
    setattr(args, setting, "ds_config.json" if setting == "deepspeed" else "full_shard")
    with pytest.raises(DPTrainerError, match="DeepSpeed" if setting == "deepspeed" else "FSDP"):
        trainer(p, None, args=args)


def test_a_trainable_module_off_the_loss_path_fails_the_step_with_one_message(p):
    from workbench.engine.losses import per_example_loss
    from workbench.private import make_private

    p.model.unused_head = torch.nn.Linear(4, 2)  # trainable, covered by the hooks, never called in forward
    try:
        private = make_private(p.model, None, dataset_size=len(p.train_tok), expected_batch_size=16, max_steps=2,
                               noise_seed=1, store=None)  # fmt: skip
        batch = collator(p)(p.train_tok[:2])
        losses, _ = per_example_loss(p.model, batch, task="causal_lm")
        with pytest.raises(UnsupportedModelError, match="received no per-example gradient: \\['unused_head'\\]"):
            private.backward(losses)
    finally:
        del p.model.unused_head
