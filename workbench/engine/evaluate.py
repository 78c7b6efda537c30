"""Validation: loss, perplexity, task accuracy, and sample generations.

Task accuracy for instruction data with labels (the demo's routing): the response starts with
``answer_template.format(label=...)``; candidates share a token prefix and first differ at one
position, so the teacher-forced validation forward already holds the logits needed to rank them
(the gold prefix up to that point is common to every candidate). No extra forward is spent.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

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
) -> dict:
    """Mean validation loss, perplexity and accuracy over ``examples``; with accuracy, also which class the model
    predicted most (``predicted_class``, an index) and for what share of the examples (``prediction_share``: 1.0 is
    a model that answers one class whatever the input). The model's mode is restored after."""
    was_training = model.training
    model.eval()
    losses, correct, counted, predicted = [], 0, 0, Counter()
    for start in range(0, len(examples), batch_size):
        chunk = examples[start : start + batch_size]
        batch = {k: v.to(device) for k, v in collate(chunk, pad_id=pad_id).items()}
        with autocast():
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
    model.train(was_training)
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
def generate_samples(model, tokenizer, prompts, *, device: torch.device, max_new_tokens: int, autocast) -> list[dict]:
    """Greedy generations for a few fixed prompts (chat messages), for the dashboards."""
    if max_new_tokens <= 0 or not prompts:
        return []
    was_training = model.training
    model.eval()
    out = []
    for messages in prompts:
        ids = torch.tensor([encode_prompt(tokenizer, messages)], device=device)  # formatted as in training
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
        out.append({"prompt": messages[-1]["content"], "output": reply.strip()})
    model.train(was_training)
    return out
