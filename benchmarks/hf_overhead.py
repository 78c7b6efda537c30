"""The overhead of workbench.hf: SFTTrainer with DP against the same SFTTrainer without DP, and against
`workbench train` with the same settings (one run each, one process, the same data and model).

    .venv/bin/python benchmarks/hf_overhead.py --model default --steps 4

Seconds per training example (Poisson batches vary in size), every path timed per optimizer step and the first step
left out of all three (it holds one-off warm-up): the DP runs' from their step events (step_time over batch size),
the plain Trainer's from a callback around each step over its fixed batch. The data is the same in all three: the
demo's chat records (examples/sft_lora.py's chat_data is `workbench train`'s data=demo). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

os.environ.setdefault("WORKBENCH_HOME", tempfile.mkdtemp(prefix="hf-overhead-"))


def sft(model_name: str, *, steps: int, dp: bool, out: str, batch: int, micro: int, length: int) -> float:
    import sys

    from peft import LoraConfig, get_peft_model
    from trl import SFTConfig, SFTTrainer

    from workbench.engine.models import load_model, resolve_device
    from workbench.hf import PrivacyArguments, make_dp_trainer

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "examples"))
    from sft_lora import chat_data

    model, tok, _ = load_model(model_name, task="causal_lm", device=resolve_device("cpu"))
    model = get_peft_model(
        model, LoraConfig(r=8, lora_alpha=16, task_type="CAUSAL_LM", target_modules=["q_proj", "v_proj"])
    )
    args = SFTConfig(
        output_dir=out, max_steps=steps, per_device_train_batch_size=micro, gradient_accumulation_steps=batch // micro,
        max_length=length, learning_rate=2e-3, report_to=[], save_strategy="no", logging_strategy="no",
        use_cpu=True, bf16=False, gradient_checkpointing=False, disable_tqdm=True,
    )  # fmt: skip
    if not dp:
        from transformers import TrainerCallback

        times: list[float] = []

        class StepTimes(TrainerCallback):
            def on_step_begin(self, *args, **kwargs):
                self.start = time.perf_counter()

            def on_step_end(self, *args, **kwargs):
                times.append(time.perf_counter() - self.start)

        t = SFTTrainer(model=model, args=args, train_dataset=chat_data(), processing_class=tok, callbacks=[StepTimes()])
        t.train()
        return sum(times[1:]) / (len(times[1:]) * batch)
    t = make_dp_trainer(SFTTrainer)(
        model=model, args=args, train_dataset=chat_data(), processing_class=tok,
        privacy_args=PrivacyArguments(target_epsilon=8.0, expected_batch_size=batch),
    )  # fmt: skip
    t.train()
    return per_example(t.privacy.store, t.privacy.run_id)


def per_example(store, run_id: str) -> float:
    steps = [e for _, e in store.events(run_id) if e.kind == "step"][1:]  # the first step holds the warm-up
    return sum(e.step_time for e in steps) / max(1, sum(e.batch_size for e in steps))


def workbench_train(model_name: str, *, steps: int, batch: int, micro: int, length: int) -> float:
    from workbench.config import RunConfig
    from workbench.session import Session

    cfg = RunConfig.from_dict(
        dict(model=model_name, max_steps=steps, batch_size=batch, physical_batch_size=micro, max_seq_len=length,
             target_epsilon=8.0, baseline_eval=False, generate_max_new_tokens=0, eval_max_examples=1,
             lora_target_modules="q_proj,v_proj", device="cpu")
    )  # fmt: skip
    s = Session(cfg)
    s.run()
    return per_example(s.store, s.run_id)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="default")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--micro", type=int, default=4)
    parser.add_argument("--length", type=int, default=128)
    o = parser.parse_args()
    shape = dict(steps=o.steps, batch=o.batch, micro=o.micro, length=o.length)
    out = tempfile.mkdtemp()
    plain = sft(o.model, dp=False, out=out + "/plain", **shape)
    private = sft(o.model, dp=True, out=out + "/dp", **shape)
    engine = workbench_train(o.model, **shape)
    print(json.dumps({
        "model": o.model, **shape, "seconds_per_example": {"trainer": plain, "trainer_dp": private, "workbench_train": engine},
        "dp_over_trainer": private / plain, "dp_over_workbench_train": private / engine,
    }))  # fmt: skip


if __name__ == "__main__":
    main()
