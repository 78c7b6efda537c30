"""Description of a dataset, for `workbench data PATH` and the app."""

from __future__ import annotations

from typing import Any, Sequence

from workbench.engine.data.records import Dataset, Record
from workbench.engine.data.tokenise import TokenizedExample, render_plain, tokenize_dataset

# ---------------------------------------------------------------------------------------------
# Description (for `workbench data PATH` and the app's data tab)
# ---------------------------------------------------------------------------------------------


def describe_dataset(ds: Dataset, tokenizer=None, *, max_seq_len: int = 512, examples: int = 3) -> dict:
    """A JSON-serialisable summary: schema, sizes, users, labels, token lengths (with a
    tokenizer) and the first `examples` examples exactly as the model will see them."""
    info: dict[str, Any] = {
        "name": ds.name,
        "schema": ds.schema,
        "task": ds.task,
        "columns": dict(ds.columns),
        "num_examples": len(ds),
        "num_users": ds.num_users,
    }
    if ds.num_users is not None:
        info["examples_per_user"] = _per_user(ds)
    if ds.label_names is not None:
        counts = {name: 0 for name in ds.label_names}
        for r in ds.records:
            if r.label is not None:
                counts[r.label] = counts.get(r.label, 0) + 1
        info["label_names"], info["label_counts"] = list(ds.label_names), counts
    if ds.answer_template is not None:
        info["answer_template"] = ds.answer_template
    if tokenizer is None:
        info["examples"] = [_render_record(r) for r in ds.records[:examples]]
        return info
    tokenized = tokenize_dataset(ds, tokenizer, max_seq_len=max_seq_len)
    stats = tokenized.stats
    info["token_lengths"] = _percentiles(stats.lengths)
    info.update(
        max_seq_len=max_seq_len,
        num_truncated=stats.num_truncated,
        num_dropped=stats.num_dropped,
        dropped_lines=list(stats.dropped_lines)[:20],
    )
    info["examples"] = [_render_tokens(ex, tokenizer, ds) for ex in tokenized[:examples]]
    return info


def people(ds: Dataset) -> dict | None:
    """``{"users": U, "max_examples": m}``: how many people the data holds and the most examples one of them
    has (what a per-example epsilon means for a person), or None when the data has no user_id. Counts from the
    private data: shown on this machine, never published."""
    if ds.num_users is None:
        return None
    return {"users": ds.num_users, "max_examples": _per_user(ds)["max"]}


def _per_user(ds: Dataset) -> dict:
    counts: dict[str, int] = {}
    for r in ds.records:
        counts[r.user_id] = counts.get(r.user_id, 0) + 1
    values = sorted(counts.values())
    return {
        "min": values[0],
        "median": float(_quantile(values, 0.5)),
        "max": values[-1],
        "mean": round(sum(values) / len(values), 2),
    }


def _percentiles(lengths: Sequence[int]) -> dict:
    values = sorted(lengths)
    if not values:
        return {"p50": 0, "p90": 0, "p99": 0, "max": 0, "mean": 0.0}
    return {
        "p50": _quantile(values, 0.5),
        "p90": _quantile(values, 0.9),
        "p99": _quantile(values, 0.99),
        "max": values[-1],
        "mean": round(sum(values) / len(values), 1),
    }


def _quantile(sorted_values: Sequence[int], q: float) -> float:
    """Linear-interpolation quantile (numpy's default) of already sorted values."""
    pos = q * (len(sorted_values) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return round(sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo), 1)


def _render_record(r: Record) -> dict:
    out: dict[str, Any] = {"line": r.line, "user_id": r.user_id}
    if r.messages is not None:
        out["prompt"] = render_plain(r.messages[:-1])
        out["response"] = r.messages[-1]["content"]
    else:
        out["text"] = r.text
    if r.label is not None:
        out["label"] = r.label
    return out


def _render_tokens(ex: TokenizedExample, tokenizer, ds: Dataset) -> dict:
    decode = lambda ids: tokenizer.decode(list(ids), skip_special_tokens=False)  # noqa: E731
    out: dict[str, Any] = {"user_id": ex.user_id, "num_tokens": len(ex.input_ids)}
    if ex.label_id is not None:
        out.update(text=decode(ex.input_ids), label=ds.label_names[ex.label_id])
    elif ex.prompt_len:
        out.update(prompt=decode(ex.input_ids[: ex.prompt_len]), response=decode(ex.input_ids[ex.prompt_len :]))
    else:
        out["text"] = decode(ex.input_ids)
    return out
