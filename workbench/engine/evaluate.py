"""Validation: loss, perplexity, task accuracy, and sample generations.

Task accuracy for instruction data with labels (the demo's routing): the response starts with
``answer_template.format(label=...)``; candidates share a token prefix and first differ at one
position, so the teacher-forced validation forward already holds the logits needed to rank them
(the gold prefix up to that point is common to every candidate). No extra forward is spent.
"""

from __future__ import annotations

import contextlib
import math
from collections import Counter
from dataclasses import dataclass
from typing import Callable

import torch

from workbench.engine.data import Dataset, TokenizedExample, collate, encode_prompt
from workbench.engine.losses import per_example_loss


@dataclass(frozen=True)
class Choices:
    """Where the candidate answers diverge (offset into the response) and each one's token there."""

    offset: int
    token_ids: tuple[int, ...]  # one per label, in ds.label_names order


def answer_choices(ds: Dataset, tokenizer) -> Choices | None:
    """The divergence point of the candidate answers, or None if they cannot be told apart by one token."""
    if ds.task != "causal_lm" or not ds.answer_template or not ds.label_names:
        return None
    toks = [
        tokenizer(ds.answer_template.format(label=n), add_special_tokens=False)["input_ids"] for n in ds.label_names
    ]
    offset = 0
    while all(len(t) > offset for t in toks) and len({t[offset] for t in toks}) == 1:
        offset += 1
    if not all(len(t) > offset for t in toks):
        return None
    first = tuple(t[offset] for t in toks)
    return Choices(offset, first) if len(set(first)) == len(first) else None


@torch.no_grad()
def evaluate(
    model,
    examples: list[TokenizedExample],
    *,
    task: str,
    pad_id: int,
    device: torch.device,
    batch_size: int,
    choices: Choices | None,
    gold: list[int | None],
    autocast,
    should_stop: Callable[[], bool] | None = None,
    forward: Callable[[int, dict], contextlib.AbstractContextManager] | None = None,
) -> dict | None:
    """Mean validation loss, perplexity and accuracy over ``examples``; with accuracy, also which class the model
    predicted most (``predicted_class``, an index) and for what share of the examples (``prediction_share``: 1.0 is
    a model that answers one class whatever the input). The model's mode is restored after.

    ``should_stop`` is asked before every batch: when it says yes the evaluation is abandoned and None returned, so
    a Stop pressed during an evaluation waits for one batch at most, not for the whole validation split.
    ``forward(start, batch)``: a context each batch's forward pass runs in (the examples from ``start`` on): the
    cached frozen prefix of the validation examples (engine/prefix_cache.py), or None for the whole model."""
    was_training = model.training
    model.eval()
    try:
        measured = _measure(
            model, examples, task, pad_id, device, batch_size, choices, gold, autocast, should_stop, forward
        )
    finally:
        model.train(was_training)
    return measured


def _measure(
    model, examples, task, pad_id, device, batch_size, choices, gold, autocast, should_stop, forward=None
) -> dict | None:
    losses, correct, counted, predicted = [], 0, 0, Counter()
    for start in range(0, len(examples), batch_size):
        if should_stop is not None and should_stop():
            return None
        chunk = examples[start : start + batch_size]
        batch = {k: v.to(device) for k, v in collate(chunk, pad_id=pad_id).items()}
        with autocast(), forward(start, batch) if forward is not None else contextlib.nullcontext():
            loss, logits = per_example_loss(model, batch, task=task)
        losses.append(loss.float().cpu())
        if task == "classification":
            preds = logits.argmax(-1)
            correct += int((preds == batch["labels"]).sum())
            counted += len(chunk)
            predicted.update(preds.tolist())
        elif choices is not None:
            c, n, preds = _choice_hits(logits, batch, chunk, choices, gold[start : start + batch_size])
            correct, counted = correct + c, counted + n
            predicted.update(preds)
    val_loss = float(torch.cat(losses).mean()) if losses else math.nan
    top = predicted.most_common(1)[0] if counted else None
    return {
        "val_loss": val_loss,
        "perplexity": math.exp(min(val_loss, 50.0)) if task == "causal_lm" else math.nan,
        "accuracy": (correct / counted) if counted else None,
        "predicted_class": top[0] if top else None,
        "prediction_share": top[1] / counted if top else None,
    }


def majority_class(gold: list[int | None]) -> tuple[int, float] | None:
    """(index, share) of the most frequent label among ``gold`` (None entries ignored): the accuracy of always
    answering that class, the floor a classifier must beat to have learned more than the class frequencies.

    >>> majority_class([1, 0, 1, None, 1])
    (1, 0.75)
    """
    counts = Counter(g for g in gold if g is not None)
    if not counts:
        return None
    index, n = counts.most_common(1)[0]
    return index, n / sum(counts.values())


def _choice_hits(logits, batch, chunk, choices: Choices, gold) -> tuple[int, int, list[int]]:
    t = batch["input_ids"].shape[1]
    keep = logits.shape[1]  # logits cover positions t-keep .. t-1
    ids = torch.tensor(choices.token_ids, device=logits.device)
    hits = n = 0
    preds: list[int] = []
    for i, ex in enumerate(chunk):
        if gold[i] is None:
            continue
        pos = ex.prompt_len + choices.offset  # index of the diverging token in input_ids
        row = pos - 1 - (t - keep)  # the logit row that predicts it
        if not 0 <= row < keep or pos >= len(ex.input_ids):
            continue
        pred = int(logits[i, row, ids].argmax())
        hits += int(pred == gold[i])
        n += 1
        preds.append(pred)
    return hits, n, preds


@torch.no_grad()
def generate_samples(
    model,
    tokenizer,
    prompts,
    *,
    device: torch.device,
    max_new_tokens: int,
    autocast,
    response_max_tokens: int | None = None,
    answers: Answers | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> list[dict] | None:
    """Greedy generations for a few fixed prompts (chat messages), for the dashboards, in the form the run trains
    on: at most ``response_max_tokens`` tokens when the responses are cut there, up to the first line break; with
    labelled answers (the demo's routing), ``output`` is the answer the model ranks first, as accuracy scores it
    ("Department: Billing"), and ``generated`` the greedy line (a model trained on the answer line alone may
    repeat its prefix when left to generate on, which read as a bug beside a good accuracy). ``should_stop`` is asked
    before every prompt: yes abandons the generations (None), as in ``evaluate``."""
    if max_new_tokens <= 0 or not prompts:
        return []
    if response_max_tokens is not None:
        max_new_tokens = min(max_new_tokens, response_max_tokens)
    was_training = model.training
    model.eval()
    try:
        return _generate(model, tokenizer, prompts, device, max_new_tokens, autocast, answers, should_stop)
    finally:
        model.train(was_training)


def _generate(model, tokenizer, prompts, device, max_new_tokens, autocast, answers, should_stop) -> list[dict] | None:
    out = []
    for messages in prompts:
        if should_stop is not None and should_stop():
            return None
        prompt = encode_prompt(tokenizer, messages)  # formatted as in training
        ids = torch.tensor([prompt], device=device)
        enc = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        with autocast():
            out_ids = model.generate(
                **enc,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
        reply = tokenizer.decode(out_ids[0, ids.shape[1] :], skip_special_tokens=True)
        line = reply.strip().split("\n", 1)[0].strip()
        sample = {"prompt": messages[-1]["content"], "output": line}
        if answers is not None:
            sample = {**sample, "output": answers.chosen(model, prompt, device=device, autocast=autocast)}
            sample["generated"] = line
        out.append(sample)
    return out


@dataclass(frozen=True)
class Answers:
    """The labelled answers of a dataset (``answer_template`` over ``label_names``) and where they diverge."""

    choices: Choices
    template: str
    label_names: tuple[str, ...]
    prefix: tuple[int, ...]  # the answers' common first tokens (``choices.offset`` of them)

    @classmethod
    def of(cls, ds: Dataset, tokenizer, choices: Choices | None) -> Answers | None:
        if choices is None:
            return None
        first = tokenizer(ds.answer_template.format(label=ds.label_names[0]), add_special_tokens=False)["input_ids"]
        return cls(choices, ds.answer_template, tuple(ds.label_names), tuple(first[: choices.offset]))

    def chosen(self, model, prompt: list[int], *, device: torch.device, autocast) -> str:
        """The answer the model ranks first after ``prompt`` (the accuracy's ranking), as the template writes it."""
        ids = torch.tensor([list(prompt) + list(self.prefix)], device=device)
        with autocast():
            logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0, -1]
        best = int(logits[list(self.choices.token_ids)].argmax())
        return self.template.format(label=self.label_names[best])
