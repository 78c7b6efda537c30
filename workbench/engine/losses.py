"""Per-example losses: the unit DP-SGD clips is one example's loss gradient."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def per_example_loss(
    model: nn.Module, batch: dict[str, torch.Tensor], *, task: str, targets_only: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(losses (B,), logits) where losses[i] is example i's mean loss over its target tokens.

    Causal LM: only label positions count (-100 elsewhere: prompt and padding).  Only the
    positions from the earliest target onward go through the LM head (``logits_to_keep``), which
    saves the vocabulary projection over long prompts.  ``targets_only`` (training, where the logits are not
    read): the head runs on the positions that predict a target and no other (``target_loss``), the same losses
    for a fraction of the head's cost when the examples' answers start at different places; logits None.
    """
    if targets_only and task == "causal_lm":
        losses = target_loss(model, batch)
        if losses is not None:
            return losses, None
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


# Decoders whose causal-LM head is the output embedding applied to the decoder's last hidden state, nothing else
# (no logit scaling or soft-capping): target_loss may call the two parts itself.
PLAIN_HEAD = ("llama",)


def target_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
    """Each example's mean loss over its target tokens, the LM head applied to the (example, position) pairs that
    predict a target only: the decoder's last hidden state (B, T, H), gathered at the n target-predicting positions
    (n, H), projected to the vocabulary (n, V). The same losses as ``per_example_loss`` (whose head also runs on
    positions that predict nothing: the earliest target's onward, for every row) and the same gradients, since the
    positions left out carry no loss. None for a model whose head is not plain (PLAIN_HEAD): then the caller
    projects as before."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if getattr(base.config, "model_type", None) not in PLAIN_HEAD:
        return None
    decoder, head = base.get_decoder(), base.get_output_embeddings()
    if decoder is None or head is None:
        return None
    labels = batch["labels"]  # (B, T)
    targets = labels[:, 1:]  # (B, T-1): position p predicts labels[:, p + 1]
    rows, positions = targets.ne(-100).nonzero(as_tuple=True)  # (n,), (n,)
    hidden = decoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    logits = head(hidden[rows, positions])  # (n, V)
    tok = F.cross_entropy(logits.float(), targets[rows, positions], reduction="none")  # (n,)
    b = labels.shape[0]
    sums = torch.zeros(b, dtype=tok.dtype, device=tok.device).index_add(0, rows, tok)  # (B,)
    counts = targets.ne(-100).sum(1).clamp(min=1)
    return sums / counts
