"""DP-SGD inside ``transformers.Trainer`` and ``trl.SFTTrainer``: a mixin on the engine of ``workbench train``.

    class DPSFTTrainer(DPTrainerMixin, SFTTrainer): ...      # or make_dp_trainer(SFTTrainer)
    trainer = DPSFTTrainer(model=peft_model, args=sft_config, train_dataset=data, privacy_args=PrivacyArguments())

How the Trainer drives the DP step (one logical step = one optimizer update; the accountant counts these):

- ``get_train_dataloader``: the batch sampler is the run's Poisson sampling (``PoissonBatchSampler``, from the
  run's secret key). Each logical batch comes as ``gradient_accumulation_steps`` = G chunks, so the Trainer's
  accumulation groups exactly one logical step; the schedule is the plan's T steps (``max_steps`` = T).
- ``training_step`` (once per chunk): the chunk is cut into pieces of at most ``per_device_train_batch_size``
  (memory stays bounded whatever q), each piece's per-example losses go through the hooks into
  ``DPGradient`` (clip each example to C, add to the sum); on the chunk that ends the accumulation
  (``accelerator.sync_gradients``) the same ``DPGradient.finish()`` as ``workbench train`` adds the float64 noise
  once and writes the noisy average over q*N into ``p.grad``. The Trainer then steps the optimizer and the
  scheduler as usual (its own ``max_grad_norm`` clipping is turned off: the clipping is per example).
- Callbacks: the budget stop, evaluations into the run store, the privacy state in each checkpoint (the run, the
  steps done, where the key and the noise stream's position are kept: the store's run folder, never the
  checkpoint), the run's end (RunEnded, the ledger). ``save_model`` writes privacy_report.json and the model
  card's DP section beside the weights. The model stays the caller's ``PreTrainedModel`` / ``PeftModel``.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import torch
from transformers import Trainer, TrainerCallback

from workbench.config import ConfigError
from workbench.engine.losses import per_example_loss
from workbench.hf.arguments import PrivacyArguments
from workbench.private import DEFAULT_STORE, PrivateTraining, model_name_of, privacy_config

log = logging.getLogger(__name__)

STATE_FILE = "dp_state.json"  # in each checkpoint folder: no key, no stream state (see PrivateTraining.state)


class DPTrainerError(ConfigError):
    """A Trainer setting the integration cannot run privately; raised before any step, with what to do."""


def check_training_arguments(args: Any) -> None:
    """Refuse, before anything trains, the settings whose steps would not be the DP step the plan accounts."""
    if args is None:
        return

    def has(name: str) -> bool:
        value = getattr(args, name, None)
        return bool(value) and value not in ("no", "none")

    if has("deepspeed"):
        raise DPTrainerError(
            "DeepSpeed is not supported by workbench.hf yet: its engine reduces and steps the gradients itself, so "
            "the per-example clipping and the one noise draw per step would be bypassed. Remove `deepspeed` from the "
            "TrainingArguments (data-parallel DP runs: `workbench train --nproc N`)."
        )
    if has("fsdp"):
        raise DPTrainerError(
            f"FSDP (fsdp={args.fsdp!r}) is not supported by workbench.hf yet: sharded parameters hide the per-example "
            "gradients from the hooks. Remove `fsdp` from the TrainingArguments (data-parallel DP runs: "
            "`workbench train --nproc N`)."
        )
    if getattr(args, "world_size", 1) > 1 or getattr(args, "n_gpu", 1) > 1:
        raise DPTrainerError(
            "several processes or GPUs are not supported by workbench.hf yet (each would sample and noise on its "
            "own): run on one device, or use `workbench train --nproc N` for data-parallel DP training."
        )
    if has("fp16"):
        raise DPTrainerError(
            "fp16 with a loss scaler is not supported: the scaler would rescale the already-noised gradient. Use "
            "bf16 (the per-example gradients are computed in fp32) or fp32."
        )
    if has("gradient_checkpointing") or has("activation_checkpointing"):
        raise DPTrainerError(
            "gradient (activation) checkpointing is not supported yet: the recomputed forward would record the "
            "per-example gradients again. Set gradient_checkpointing=False (TRL's SFTConfig turns it on by default) "
            "and lower per_device_train_batch_size to save memory instead."
        )
    if has("torch_compile") or has("auto_find_batch_size"):
        raise DPTrainerError(
            "torch_compile and auto_find_batch_size are not supported with DP: turn them off (the micro-batch size "
            "is per_device_train_batch_size; the expected batch is PrivacyArguments.expected_batch_size)."
        )
    if has("packing") or has("padding_free"):
        raise DPTrainerError(
            "packing (and padding-free batches) put several examples in one row, so one row's gradient is no longer "
            "one example's and per-example clipping would not bound an example. Set packing=False and "
            "padding_free=False."
        )


def _length(dataset: Any) -> int:
    if isinstance(dataset, torch.utils.data.IterableDataset) or not hasattr(dataset, "__len__"):
        raise DPTrainerError(
            f"the training dataset ({type(dataset).__name__}) has no length: Poisson sampling draws each example "
            "with probability q = expected_batch_size / N, so N must be known. Pass a map-style dataset (e.g. a "
            "datasets.Dataset, not streaming=True)."
        )
    return len(dataset)


def _task(model: Any) -> str:
    names = [type(model).__name__, type(getattr(model, "base_model", model)).__name__]
    names += [type(getattr(getattr(model, "base_model", None), "model", None)).__name__]
    return "classification" if any("SequenceClassification" in n for n in names) else "causal_lm"


class _EmptySafeCollator:
    """The Trainer's collator, except that an empty chunk (Poisson batches can be small or empty) becomes an empty
    batch of the same keys the Trainer looks at, which ``training_step`` skips."""

    def __init__(self, collate) -> None:
        self.collate = collate

    def __call__(self, features: list) -> dict:
        if not features:
            empty = torch.zeros((0, 0), dtype=torch.long)
            return {"input_ids": empty, "attention_mask": empty, "labels": empty}
        return self.collate(features)


def _pieces(inputs: dict, size: int):
    """A collated chunk cut into pieces of at most ``size`` rows, each trimmed to its own padding (as if collated
    on its own)."""
    n = len(inputs["labels"])
    for start in range(0, n, size):
        piece = {
            k: v[start : start + size] for k, v in inputs.items() if torch.is_tensor(v) and v.dim() and len(v) == n
        }
        mask = piece.get("attention_mask")
        if mask is None:
            mask = piece["attention_mask"] = torch.ones_like(piece["input_ids"])
        cols = mask.any(0).nonzero().flatten()
        if len(cols):
            lo, hi = int(cols.min()), int(cols.max()) + 1
            piece = {k: v[:, lo:hi] if v.dim() >= 2 and v.shape[:2] == mask.shape else v for k, v in piece.items()}
        yield piece


class DPTrainerMixin:
    """Put before a Trainer class: ``class DPTrainer(DPTrainerMixin, Trainer)``. Extra keywords: ``privacy_args``
    (PrivacyArguments), ``store`` (the run store: "default", a RunStore or path, None for none), ``run_name``,
    ``columns`` (which of the training set's columns hold text, label, prompt, response, messages ... where they
    are not the standard names: the ledger counts the run under the records its rows are, with `workbench train`
    runs on the same examples). ``self.privacy`` is the run's ``PrivateTraining`` (plan, epsilon, the DP step)."""

    def __init__(
        self,
        *args: Any,
        privacy_args: PrivacyArguments | None = None,
        store: Any = DEFAULT_STORE,
        run_name: str | None = None,
        columns: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> None:
        check_training_arguments(kwargs.get("args", args[1] if len(args) > 1 else None))
        dataset = kwargs.get("train_dataset", args[3] if len(args) > 3 else None)
        if dataset is not None:
            _length(dataset)
        super().__init__(*args, **kwargs)
        self.privacy_args = privacy_args = privacy_args or PrivacyArguments()
        a = self.args
        check_training_arguments(a)
        if self.train_dataset is None:
            raise DPTrainerError("DPTrainer needs a train_dataset.")
        size = _length(self.train_dataset)
        chunks, physical = a.gradient_accumulation_steps, a.per_device_train_batch_size
        expected = privacy_args.expected_batch_size or physical * chunks
        if physical > expected:
            raise DPTrainerError(
                f"per_device_train_batch_size={physical} is larger than the expected batch "
                f"(PrivacyArguments.expected_batch_size={expected}): a micro-batch is a piece of one Poisson batch "
                "of about that size. Lower per_device_train_batch_size or raise expected_batch_size."
            )
        settings = privacy_args.settings()
        if settings["noise_multiplier"] is not None:
            settings["target_epsilon"] = privacy_args.target_epsilon  # then only a budget: the run stops there
        name = run_name or (a.run_name if a.run_name and a.run_name != a.output_dir else None)
        config = privacy_config(
            name=name,
            model=model_name_of(self.model),
            data=getattr(self.train_dataset, "info", None) and self.train_dataset.info.dataset_name or "script",
            task=_task(self.model),
            batch_size=expected,
            physical_batch_size=physical,
            max_steps=a.max_steps if a.max_steps and a.max_steps > 0 else None,
            epochs=None if a.max_steps and a.max_steps > 0 else float(a.num_train_epochs),
            learning_rate=a.learning_rate,
            warmup_steps=int(a.warmup_steps) if isinstance(a.warmup_steps, int) else 0,
            seed=a.seed,
            generate_max_new_tokens=0,
            columns=columns,
            **settings,
        )
        self.privacy = PrivateTraining(
            self.model,
            config=config,
            dataset_size=size,
            store=store,
            name=name,
            tokenizer=self.processing_class,
            task=config.task,
            dataset=self.train_dataset,
            dataset_name=config.data,
            columns=columns,
            chunks=chunks,
            register=False,
        )
        a.max_steps = self.privacy.plan.steps  # the plan's T optimizer updates, one DP step each
        a.max_grad_norm = 0.0  # the clipping is per example, in the DP step; none on the noisy average
        self.add_callback(_DPCallback(self))

    # -- the data: Poisson batches from the run's key ------------------------------------------------------
    def get_train_dataloader(self):
        try:
            from datasets import Dataset as HFDataset
        except ImportError:  # datasets is optional for transformers.Trainer
            HFDataset = ()
        dataset, collate = self.train_dataset, self.data_collator
        if isinstance(dataset, HFDataset):
            dataset = self._remove_unused_columns(dataset, description="training")
        else:
            collate = self._get_collator_with_removed_columns(collate, description="training")
        loader = torch.utils.data.DataLoader(
            dataset,
            batch_sampler=self.privacy.batch_sampler,
            collate_fn=_EmptySafeCollator(collate),
            num_workers=self.args.dataloader_num_workers,
            pin_memory=self.args.dataloader_pin_memory,
        )
        return self.accelerator.prepare(loader)

    def get_resumed_dataloader(self, dataloader, num_batches: int):
        """No skipping: on resume the sampler already continues from the key after the steps done."""
        return dataloader

    # -- one micro-batch (chunk) of a logical step --------------------------------------------------------
    def training_step(self, model, inputs, num_items_in_batch=None):
        dp = self.privacy
        model.train(not dp.plan.private)  # a private run trains without dropout, as `workbench train`
        inputs = self._prepare_inputs(inputs)
        labels = inputs.get("labels")
        if labels is None:
            raise DPTrainerError("DP training needs labels in each batch (one loss per example is clipped).")
        task = "classification" if labels.dim() == 1 else "causal_lm"
        total = torch.zeros((), device=self.args.device)
        for piece in _pieces(inputs, self.args.per_device_train_batch_size):
            with self.compute_loss_context_manager():
                losses, _ = per_example_loss(model, piece, task=task)  # (b,)
            dp.backward(losses, tokens=int(piece["attention_mask"].sum()))
            total += losses.detach().sum()
        if self.accelerator.sync_gradients:  # the chunk that ends the logical step: noise once, / qN
            dp.finish(learning_rate=self._get_learning_rate())
        return total / dp.plan.expected_batch_size  # summed over the G chunks: the step's loss per expected unit

    # -- resume, save ------------------------------------------------------------------------------------
    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        from transformers.trainer_utils import get_last_checkpoint

        if resume_from_checkpoint is True:
            resume_from_checkpoint = get_last_checkpoint(self.args.output_dir)
            if resume_from_checkpoint is None:
                raise ValueError(f"No valid checkpoint found in output directory ({self.args.output_dir})")
        state_path = os.path.join(resume_from_checkpoint, STATE_FILE) if resume_from_checkpoint else None
        if state_path and os.path.exists(state_path):
            state = json.loads(open(state_path).read())
            self.privacy.restore(state, streams=state.get("streams"))
            self.privacy.register(run_id=state["run_id"], resumed=True)
        elif resume_from_checkpoint:
            raise DPTrainerError(
                f"checkpoint {resume_from_checkpoint} has no {STATE_FILE}: it was not saved by a DP trainer, so the "
                "steps done and the noise stream's position are unknown. Resume from a checkpoint of this run."
            )
        else:
            self.privacy.register()
        try:
            return super().train(resume_from_checkpoint, *args, **kwargs)
        except BaseException as err:
            if self.privacy.ended is None:
                status = "stopped" if isinstance(err, KeyboardInterrupt) else "failed"
                self.privacy.end(status=status, reason=f"{type(err).__name__}: {err}"[:500])
            raise

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        super().save_model(output_dir, _internal_call)
        if self.is_world_process_zero():
            self.privacy.write_report(output_dir or self.args.output_dir, stopped=self.privacy.ended == "stopped")


class _DPCallback(TrainerCallback):
    """The budget stop, evaluations, the checkpoint's privacy state and the run's end."""

    def __init__(self, trainer: DPTrainerMixin) -> None:
        self.trainer = trainer

    def on_train_begin(self, args, state, control, **kwargs):
        if state.global_step != self.trainer.privacy.steps_done:
            raise DPTrainerError(
                f"the Trainer resumes at step {state.global_step} but the privacy state is at "
                f"{self.trainer.privacy.steps_done}: resume from the checkpoint with its {STATE_FILE}."
            )

    def on_step_end(self, args, state, control, **kwargs):
        if self.trainer.privacy.budget_spent:
            control.should_training_stop = True

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if metrics and "eval_loss" in metrics:
            self.trainer.privacy.evaluation(val_loss=float(metrics["eval_loss"]), accuracy=metrics.get("eval_accuracy"))

    def on_save(self, args, state, control, **kwargs):
        folder = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
        if not os.path.isdir(folder) or not self.trainer.is_world_process_zero():
            return
        dp = self.trainer.privacy
        with open(os.path.join(folder, STATE_FILE), "w") as fh:
            json.dump({**dp.state(), "streams": dp.save_streams()}, fh, indent=2)

    def on_train_end(self, args, state, control, **kwargs):
        self.trainer.privacy.end()


def make_dp_trainer(base: type) -> type:
    """``base`` (``transformers.Trainer``, ``trl.SFTTrainer`` or a subclass) with DP-SGD: ``DPTrainerMixin`` first."""
    return type(f"DP{base.__name__}", (DPTrainerMixin, base), {"__module__": __name__})


DPTrainer = make_dp_trainer(Trainer)
