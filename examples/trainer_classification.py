"""DP fine-tuning of a text classifier with transformers' Trainer, through workbench.hf (LoRA + the head).

    python examples/trainer_classification.py --model tiny --output_dir out/cls --max_steps 4 \
        --per_device_train_batch_size 8 --expected_batch_size 16 --target_epsilon 8 --use_cpu --report_to none

Every TrainingArguments option works as usual (HfArgumentParser); the privacy settings are PrivacyArguments'.
The run shows live in `workbench app` (Train tab), and `save_model` writes the adapter with privacy_report.json
and the model card's DP section. --model: tiny (a small random Llama, seconds on a CPU), default (SmolLM2-135M,
offline), a hub id or a local folder.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from peft import LoraConfig, get_peft_model
from transformers import DataCollatorWithPadding, HfArgumentParser, TrainingArguments

from workbench.engine.models import load_model, resolve_device
from workbench.hf import DPTrainer, PrivacyArguments

LABELS = ["negative", "positive"]  # public: listed here, never read from the private data
WORDS = {
    0: ["terrible", "boring", "a mess", "awful", "dull"],
    1: ["great", "wonderful", "a masterpiece", "fun", "moving"],
}


@dataclass
class ExampleArguments:
    model: str = field(default="tiny", metadata={"help": "tiny, default, a hub id or a local model folder."})
    examples: int = field(default=400, metadata={"help": "Training examples (a made-up sentiment set)."})
    max_length: int = field(default=32, metadata={"help": "Tokens per example."})


def sentiment_data(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = rng.randrange(2)
        rows.append({"text": f"review {i}: this movie was {rng.choice(WORDS[label])}.", "label": label})
    return rows


def main() -> None:
    parser = HfArgumentParser((TrainingArguments, PrivacyArguments, ExampleArguments))
    training_args, privacy_args, example = parser.parse_args_into_dataclasses()
    device = resolve_device("cpu" if training_args.use_cpu else "auto")
    model, tokenizer, _ = load_model(example.model, task="classification", num_labels=len(LABELS), device=device)
    lora = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, task_type="SEQ_CLS", target_modules=["q_proj", "v_proj"])
    model = get_peft_model(model, lora)  # the model stays a PeftModel: save_pretrained, push_to_hub, generate
    rows = sentiment_data(example.examples)
    train = [
        {**tokenizer(r["text"], truncation=True, max_length=example.max_length), "labels": r["label"]} for r in rows
    ]
    trainer = DPTrainer(
        model=model,
        args=training_args,
        train_dataset=train,
        data_collator=DataCollatorWithPadding(tokenizer),
        processing_class=tokenizer,
        privacy_args=privacy_args,
        run_name="trainer-classification-example",
    )
    trainer.train()
    trainer.save_model()
    print(
        f"epsilon = {trainer.privacy.epsilon:.3f} after {trainer.privacy.steps_done} steps; run {trainer.privacy.run_id}"
    )


if __name__ == "__main__":
    main()
