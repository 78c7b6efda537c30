"""A run's validation split and how every evaluation of the run scores it: the untuned model at step 0, the periodic
evaluations, the last one of a finished run, and one asked for after the run ended (``evaluate_adapter``: "Evaluate"
on a stopped run, whose Stop skipped its last evaluation).

What the validation split is to the privacy guarantee. ``prepare()`` holds it out before anything trains: whole units
(users when the data has them, else records) chosen by a keyed hash of each unit's identity (data.split_validation),
or the separate ``validation_data`` file. No step samples from it, so the released update, the adapter, does not
depend on it; the plan's N counts the training split alone, and epsilon covers the training split, not these
examples. What an evaluation computes from them (loss, accuracy, the class predicted most, the generations) is
telemetry for the data owner: not covered by epsilon, left out of an export (store/export.py). An evaluation
therefore spends no privacy budget, whenever it runs: it reads the adapter, which is already released (what is
computed from it is post-processing), and the held-out examples, which no step read; an evaluation after the run
ended reads the same held-out examples every periodic evaluation read, and is telemetry as they are.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Callable

import torch

from workbench.engine.evaluate import Answers, answer_choices, evaluate, generate_samples, majority_class
from workbench.engine.models import ModelError
from workbench.engine.prefix_cache import PrefixCache
from workbench.engine.prepare import Prepared
from workbench.events import EvalMetrics

__all__ = ["Validation", "autocast_for", "evaluate_adapter", "load_adapter_weights", "summary_metrics"]

StopCheck = Callable[[], bool]


def autocast_for(device: torch.device) -> Callable:
    """The autocast context of a forward pass on ``device``: bf16 on CUDA (the LoRA weights stay fp32), none else."""
    if device.type == "cuda":
        return lambda: torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext


class Validation:
    """The validation examples a run evaluates (the split's first ``eval_max_examples``), their gold labels and the
    candidate answers (the demo's routing), and the evaluation event built from them."""

    def __init__(self, prepared: Prepared, *, autocast: Callable, prefix_cache: PrefixCache | None = None) -> None:
        """``prefix_cache``: the frozen prefix of ``examples`` (by their place in it), kept between evaluations
        (engine/prefix_cache.py; the evaluations run in eval mode, and the frozen layers do not change)."""
        self.p = prepared
        self.autocast = autocast
        self.prefix_cache = prefix_cache
        self.choices = answer_choices(prepared.val, prepared.tokenizer)
        self.answers = Answers.of(prepared.val, prepared.tokenizer, self.choices)  # the samples show the answer
        self.gold = self._gold_labels()

    @property
    def examples(self) -> list:
        return self.p.val_tok[: self.p.config.eval_max_examples]

    def metrics(self, examples: list, *, should_stop: StopCheck | None = None) -> dict | None:
        """``evaluate`` over ``examples`` (None when ``should_stop`` said yes between two batches)."""
        p = self.p
        return evaluate(
            p.model,
            examples,
            task=p.task,
            pad_id=p.tokenizer.pad_token_id,
            device=p.device,
            batch_size=p.config.physical_batch_size,
            choices=self.choices,
            gold=self.gold[: len(examples)],
            autocast=self.autocast,
            should_stop=should_stop,
            forward=self._cached_prefix if self.prefix_cache is not None and examples == self.examples else None,
        )

    def _cached_prefix(self, start: int, batch: dict):
        """The batch of ``examples[start:]`` run from the first adapted layer on (engine/prefix_cache.py)."""
        rows = range(start, start + len(batch["input_ids"]))
        return self.prefix_cache.substituted(self.p.model, rows, batch)

    def evaluation(
        self, *, run_id: str, step: int, generate: bool = True, should_stop: StopCheck | None = None
    ) -> EvalMetrics | None:
        """Validation loss and accuracy now, and sample generations unless ``generate`` is False; None when
        ``should_stop`` said yes before a batch or a prompt (the evaluation abandoned, so a Stop never waits for it)."""
        p = self.p
        measured = self.metrics(self.examples, should_stop=should_stop)
        if measured is None:
            return None
        gens: list[dict] | None = []
        if p.task == "causal_lm" and generate:
            gens = generate_samples(
                p.model,
                p.tokenizer,
                p.train.eval_prompts,
                device=p.device,
                max_new_tokens=p.config.generate_max_new_tokens,
                autocast=self.autocast,
                response_max_tokens=p.config.response_max_tokens,
                answers=self.answers,
                should_stop=should_stop,
            )
            if gens is None:
                return None
        metrics = {k: measured[k] for k in ("val_loss", "perplexity", "accuracy")}
        return EvalMetrics(
            run_id=run_id, step=step, generations=gens, **metrics, **self.predicted(measured), **self.majority()
        )

    def majority(self) -> dict:
        """The majority class of the evaluated validation labels and its share (``majority_label``,
        ``majority_share``): the accuracy of always answering that class. Telemetry from the validation data, as
        the untuned baseline; {} without labels."""
        found = majority_class(self.gold[: self.p.config.eval_max_examples])
        names = self.p.train.label_names or ()
        if found is None or found[0] >= len(names):
            return {}
        return {"majority_label": str(names[found[0]]), "majority_share": found[1]}

    def predicted(self, measured: dict) -> dict:
        """The class the model predicted most in ``measured`` (an evaluation) and the share it predicted it for."""
        index, names = measured.get("predicted_class"), self.p.train.label_names or ()
        if index is None or index >= len(names):
            return {}
        return {"predicted_label": str(names[index]), "prediction_share": measured["prediction_share"]}

    def _gold_labels(self) -> list[int | None]:
        """Label index of each tokenised validation example (records dropped by tokenisation skipped)."""
        index = {n: i for i, n in enumerate(self.p.train.label_names or ())}
        dropped = set(getattr(getattr(self.p.val_tok, "stats", None), "dropped_lines", ()))
        kept = [r for r in self.p.val.records if r.line is None or r.line not in dropped]
        return [index.get(r.label) if r.label is not None else None for r in kept][: len(self.p.val_tok)]


def summary_metrics(evaluation: EvalMetrics) -> dict:
    """An evaluation's numbers as a run's summary keeps them: loss, perplexity, accuracy, and the class predicted
    most with its share when there are labels."""
    out = {"val_loss": evaluation.val_loss, "perplexity": evaluation.perplexity, "accuracy": evaluation.accuracy}
    if evaluation.predicted_label is not None:
        out.update(predicted_label=evaluation.predicted_label, prediction_share=evaluation.prediction_share)
    return out


def load_adapter_weights(prepared: Prepared, adapter_dir: Path) -> None:
    """Put the adapter saved in ``adapter_dir`` (report.save_adapter: PEFT format) into ``prepared.model``, whose
    LoRA was attached from the same run config; a ModelError when the two do not fit."""
    from peft.utils import load_peft_weights, set_peft_model_state_dict

    try:
        weights = load_peft_weights(str(adapter_dir), device=str(prepared.device))
    except (OSError, ValueError) as err:
        raise ModelError(f"the adapter in {adapter_dir} cannot be read: {str(err).splitlines()[0][:300]}") from None
    loaded = set_peft_model_state_dict(prepared.model, weights)
    if getattr(loaded, "unexpected_keys", None) or not weights:
        raise ModelError(
            f"the adapter in {adapter_dir} does not fit the model its run config builds (weights it has no place "
            "for); was the config or the model changed since it trained?"
        )


def evaluate_adapter(
    prepared: Prepared, adapter_dir: Path, *, run_id: str, step: int, generate: bool = True
) -> EvalMetrics:
    """Evaluate the adapter saved in ``adapter_dir`` as the run's evaluations do (the same validation examples, the
    same scoring, the generations unless ``generate`` is False), for a run that has ended: the event of its
    evaluation at ``step`` (the steps it took). ``prepared`` comes from the run's config (``prepare``); its model
    takes the adapter's weights. Telemetry, spending no privacy budget: the module docstring."""
    load_adapter_weights(prepared, adapter_dir)
    prepared.model.eval()
    evaluation = Validation(prepared, autocast=autocast_for(prepared.device)).evaluation(
        run_id=run_id, step=step, generate=generate
    )
    assert evaluation is not None  # nothing asked it to stop
    return evaluation
