"""Shared set-up of the workbench.hf tests: the tiny model's data as `workbench train` prepares it, and a Trainer on it."""

from __future__ import annotations

from factories import TINY_RUN
from safetensors.torch import load_file

from workbench.config import RunConfig
from workbench.engine import data as data_mod
from workbench.engine.prepare import prepare

# short sequences keep a step of the tiny model well under a second on a busy CPU
RUN = dict(TINY_RUN, max_seq_len=32, batch_size=16, physical_batch_size=4, baseline_eval=False, target_epsilon=8.0)


def config(**changes) -> RunConfig:
    return RunConfig.from_dict({**RUN, **changes})


def prepared(**changes):
    return prepare(config(**changes))


def collator(p):
    return lambda examples: data_mod.collate(examples, pad_id=p.tokenizer.pad_token_id)


def training_args(out, **changes):
    from transformers import TrainingArguments

    values = dict(
        output_dir=str(out),
        per_device_train_batch_size=4,
        gradient_accumulation_steps=1,
        learning_rate=2e-3,
        lr_scheduler_type="linear",
        report_to=[],
        remove_unused_columns=False,
        save_strategy="no",
        logging_strategy="no",
        use_cpu=True,
        optim="adamw_torch",
        disable_tqdm=True,
    )
    return TrainingArguments(**{**values, **changes})


def trainer(p, out, *, privacy=None, args=None, **kwargs):
    """A DPTrainer on ``p``'s model and tokenised training set, with `workbench train`'s collator."""
    from workbench.hf import DPTrainer, PrivacyArguments

    privacy = privacy or PrivacyArguments(target_epsilon=8.0, expected_batch_size=16, noise_seed=7)
    return DPTrainer(
        model=p.model,
        args=args or training_args(out, max_steps=p.config.max_steps or -1),
        train_dataset=p.train_tok,
        data_collator=collator(p),
        privacy_args=privacy,
        **kwargs,
    )


def lora(model_or_dir) -> dict:
    """The LoRA tensors of a model (trainable parameters) or of a saved adapter folder."""
    if isinstance(model_or_dir, str):
        return load_file(f"{model_or_dir}/adapter_model.safetensors")
    return {n: p.detach().clone() for n, p in model_or_dir.named_parameters() if p.requires_grad}


def max_diff(a: dict, b: dict) -> float:
    assert len(a) == len(b) and len(a) > 0
    return max(float((x - y).abs().max()) for x, y in zip(a.values(), b.values()))
