"""Canary exposure (Carlini et al. 2019, "The Secret Sharer"): how far a trained model singles out a secret.

For a secret s of a known format, inserted in the training data after a prefix p (the demo's
"...your member number is MBR-####-####"), take a candidate set R of random strings of the same
format that were not trained on, and rank the log-perplexities -log2 Pr(x | p) of s and of every
candidate. As TF Privacy's ``secret_sharer/exposures.py`` (``compute_exposure_interpolation``):

    rank(s)     = 1 + #{r in R : logppl(r) <= logppl(s)}     (ties count against the secret)
    exposure(s) = log2 |R| - log2 rank(s)

so a secret the model likes better than every candidate has rank 1 and exposure log2 |R| (10 with
|R| = 1024), and a secret the model has not singled out has exposure around 1 (rank ~ |R| / 2).
|R| = CANDIDATES (1000, maximum exposure ~9.97) distinct strings of the format, each '#' a uniform
digit, drawn from the run's secret exposure stream (``RunRandomness.exposure_rng``), never the secret.

Cost: the candidates share the prompt and the prefix, so those are run once and their key/value cache is
reused; only the tokens where candidates differ (the digits of the demo's member number) go through the
model per candidate, in batches.

Exposure is computed from the secrets themselves (private data), not from canaries: like the training
telemetry, it is information for the data owner and is not covered by the run's guarantee. The demo's
secrets are synthetic.
"""

from __future__ import annotations

import copy
import logging
import math
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch
import torch.nn.functional as F

from workbench.engine import data as data_mod

if TYPE_CHECKING:
    from workbench.engine.prepare import Prepared

CANDIDATES = 1000  # |R|
BATCH = 256  # candidates per forward pass

log = logging.getLogger(__name__)


def exposure(secret: float, references: np.typing.ArrayLike) -> tuple[float, int]:
    """(exposure, rank) of a secret's log-perplexity among the references' (``compute_exposure_interpolation``).

    >>> exposure(1.0, np.arange(2.0, 1026.0))  # better than all 1024 references: rank 1
    (10.0, 1)
    """
    ref = np.asarray(references, dtype=np.float64)
    if ref.ndim != 1 or len(ref) == 0:
        raise ValueError(f"need a non-empty 1-D array of reference log-perplexities. Found shape {ref.shape}.")
    rank = 1 + int(np.sum(ref <= secret))
    return math.log2(len(ref)) - math.log2(rank), rank


def random_candidates(fmt: str, count: int, rng: np.random.Generator, *, exclude: str) -> list[str]:
    """``count`` distinct strings of ``fmt`` ('#' = a uniform digit), none equal to ``exclude``."""
    slots = fmt.count("#")
    if slots == 0 or 10**slots <= count:
        raise ValueError(f"format {fmt!r} has too few random strings for {count} candidates.")
    parts = fmt.split("#")
    seen: dict[str, None] = {}
    while len(seen) < count:
        digits = rng.integers(0, 10, size=(count, slots))
        for row in digits:
            s = parts[0] + "".join(str(int(d)) + part for d, part in zip(row, parts[1:]))
            if s != exclude:
                seen.setdefault(s)
            if len(seen) == count:
                break
    return list(seen)


@torch.no_grad()
def log_perplexities(
    model,
    tokenizer,
    prompt: list[dict],
    prefix: str,
    texts: list[str],
    *,
    device,
    autocast: Callable,
    batch: int = BATCH,
) -> np.ndarray:
    """-log2 Pr(text | prompt, prefix) for each text, over the tokens where the texts' sequences differ.

    The sequence is the training format's: the prompt as ``encode_prompt`` renders it, then the reply's
    tokens (prefix + text, tokenised alone as in training). Tokens shared by every text's sequence are
    conditioned on, not scored: they cost every text the same, so ranks are unchanged.
    """
    head = data_mod.encode_prompt(tokenizer, prompt)
    seqs = [list(tokenizer(prefix + t, add_special_tokens=False)["input_ids"]) for t in texts]
    shared = 0
    while all(len(s) > shared + 1 for s in seqs) and len({s[shared] for s in seqs}) == 1:
        shared += 1  # keep at least one scored token per text
    context = torch.tensor([head + seqs[0][:shared]], device=device)
    was_training = model.training
    model.eval()
    try:
        with autocast():
            out = model(input_ids=context, use_cache=True)
        first = F.log_softmax(out.logits[0, -1].float(), -1)  # (V,) predicts each text's first scored token
        cache_key = "cache" if "cache" in out else "past_key_values"  # transformers >= 5 renamed it "cache"
        cache = out[cache_key]
        result = np.empty(len(texts))
        for start in range(0, len(texts), batch):
            rows = [s[shared:] for s in seqs[start : start + batch]]
            b, t = len(rows), max(len(r) for r in rows)
            ids = torch.zeros((b, t), dtype=torch.long, device=device)
            mask = torch.zeros((b, t), dtype=torch.long, device=device)
            for i, r in enumerate(rows):
                ids[i, : len(r)] = torch.tensor(r, device=device)
                mask[i, : len(r)] = 1
            total = first[ids[:, 0]].double()  # (b,)
            if t > 1:
                past = copy.deepcopy(cache)
                past.batch_repeat_interleave(b)
                attn = torch.cat([torch.ones((b, context.shape[1]), dtype=torch.long, device=device), mask[:, :-1]], 1)
                with autocast():
                    logits = model(
                        input_ids=ids[:, :-1], attention_mask=attn, use_cache=True, **{cache_key: past}
                    ).logits
                logp = F.log_softmax(logits.float(), -1).gather(-1, ids[:, 1:, None])[..., 0]  # (b, t-1)
                total += (logp * mask[:, 1:]).sum(1).double()
            result[start : start + b] = (-total / math.log(2)).cpu().numpy()
    finally:
        model.train(was_training)
    return result


def demo_exposures(
    prepared: "Prepared", rng: np.random.Generator, *, autocast: Callable, candidates: int | None = None
) -> list[dict]:
    """The exposure of each planted secret of the demo data (``demo_secrets``) under the current model.

    Each entry: user_id, exposure, rank, candidates (|R|), in_training (whether the secret's example is
    among the trained examples: a secret held out for validation, or dropped by the per-user cap, is a
    control, and should show no exposure). The secret itself is never in the result.
    """
    from workbench.engine.data.demo import demo_secrets

    p = prepared
    candidates = candidates or CANDIDATES
    trained = {ex.input_ids for ex in p.train_tok}
    out = []
    for s in demo_secrets():
        refs = random_candidates(s["format"], candidates, rng, exclude=s["secret"])
        ppl = log_perplexities(
            p.model, p.tokenizer, s["prompt"], s["prefix"], [s["secret"], *refs], device=p.device, autocast=autocast
        )
        value, rank = exposure(ppl[0], ppl[1:])
        out.append(
            {
                "user_id": s["user_id"],
                "exposure": round(value, 4),
                "rank": rank,
                "candidates": candidates,
                "in_training": _in_training(p, s, trained),
            }
        )
    return out


def _in_training(p: "Prepared", secret: dict, trained: set) -> bool:
    """Whether the secret's example, tokenised as in training, is one of the training examples."""
    prompt = tuple(secret["prompt"])
    records = tuple(
        r
        for r in p.train.records
        if r.messages and r.messages[:-1] == prompt and secret["secret"] in r.messages[-1]["content"]
    )
    if not records:
        return False
    ds = data_mod.Dataset(
        name="secret", schema=p.train.schema, task=p.task, records=records, columns={}, label_names=p.train.label_names
    )
    toks = data_mod.tokenize_dataset(
        ds, p.tokenizer, max_seq_len=p.config.max_seq_len, model_max_length=p.config.max_seq_len
    )
    return any(ex.input_ids in trained for ex in toks)
