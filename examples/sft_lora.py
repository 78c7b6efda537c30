"""DP instruction tuning with TRL's SFTTrainer and LoRA, through workbench.hf.

    python examples/sft_lora.py --model tiny --output_dir out/sft --max_steps 4 --per_device_train_batch_size 4 \
        --gradient_accumulation_steps 2 --expected_batch_size 16 --target_epsilon 8 --max_length 64 --use_cpu \
        --report_to none --gradient_checkpointing false

The data is the workbench's demo (patient messages routed to a department, as chat messages). One DP step per
optimizer update: the Poisson batch of about expected_batch_size examples arrives as gradient_accumulation_steps
micro-batches, each cut to at most per_device_train_batch_size. ``--no_dp`` trains the same SFTTrainer without
DP (the overhead comparison). Packing and gradient checkpointing are refused under DP.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from datasets import Dataset
from peft import LoraConfig, get_peft_model
from transformers import HfArgumentParser
from trl import SFTConfig, SFTTrainer

from workbench.engine.data import load_dataset
from workbench.engine.models import load_model, resolve_device
from workbench.hf import PrivacyArguments, make_dp_trainer


@dataclass
class ExampleArguments:
    model: str = field(default="tiny", metadata={"help": "tiny, default, a hub id or a local model folder."})
    no_dp: bool = field(default=False, metadata={"help": "Train the same SFTTrainer without DP (for comparison)."})


def chat_data() -> Dataset:
    records = load_dataset("demo").records
    return Dataset.from_list([{"messages": list(r.messages)} for r in records if r.messages])


def main() -> None:
    parser = HfArgumentParser((SFTConfig, PrivacyArguments, ExampleArguments))
    sft_args, privacy_args, example = parser.parse_args_into_dataclasses()
    device = resolve_device("cpu" if sft_args.use_cpu else "auto")
    model, tokenizer, _ = load_model(example.model, task="causal_lm", device=device)
    lora = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, task_type="CAUSAL_LM", target_modules=["q_proj", "v_proj"])
    model = get_peft_model(model, lora)
    data = chat_data()
    if example.no_dp:
        trainer = SFTTrainer(model=model, args=sft_args, train_dataset=data, processing_class=tokenizer)
    else:
        DPSFTTrainer = make_dp_trainer(SFTTrainer)
        trainer = DPSFTTrainer(
            model=model,
            args=sft_args,
            train_dataset=data,
            processing_class=tokenizer,
            privacy_args=privacy_args,
            run_name="sft-lora-example",
        )
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    trainer.save_model()
    if example.no_dp:
        print(f"no DP: {trainer.state.global_step} steps in {seconds:.1f} s")
    else:
        dp = trainer.privacy
        print(f"epsilon = {dp.epsilon:.3f} after {dp.steps_done} steps in {seconds:.1f} s; run {dp.run_id}")


if __name__ == "__main__":
    main()
