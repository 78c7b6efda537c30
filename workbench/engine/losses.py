"""Per-example losses: the unit DP-SGD clips is one example's loss gradient."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def per_example_loss(
    model: nn.Module, batch: dict[str, torch.Tensor], *, task: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """(losses (B,), logits) where losses[i] is example i's mean loss over its target tokens.

    Causal LM: only label positions count (-100 elsewhere: prompt and padding).  Only the
    positions from the earliest target onward go through the LM head (``logits_to_keep``), which
    saves the vocabulary projection over long prompts.
    """
    if task == "classification":
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits  # (B, L)
        return F.cross_entropy(logits.float(), batch["labels"], reduction="none"), logits
    labels = batch["labels"]  # (B, T)
    b, t = labels.shape
    has = labels.ne(-100)
    first = int(has.float().argmax(1).masked_fill(~has.any(1), t).min()) if b else t
    keep = min(max(2, t - first + 1), t)  # logits at positions first-1 .. t-1
    try:
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], logits_to_keep=keep)
    except TypeError:  # a model without logits_to_keep: project every position
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    logits = out.logits[:, -keep:, :]  # (B, keep, V)
    shift_logits = logits[:, :-1, :].float()  # predicts labels[:, t-keep+1:]
    shift_labels = labels[:, t - keep + 1 :]
    tok = F.cross_entropy(
        shift_logits.reshape(-1, shift_logits.shape[-1]), shift_labels.reshape(-1), ignore_index=-100, reduction="none"
    ).view(b, -1)  # (B, keep-1)
    mask = shift_labels.ne(-100)
    counts = mask.sum(1).clamp(min=1)
    return (tok * mask).sum(1) / counts, logits
