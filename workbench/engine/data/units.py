"""Privacy units: the neighbour-stable validation split, the per-user cap, and the label set.

Whether a unit is held out, and which of a user's examples it keeps, depends only on a keyed hash of
that unit's identity (docs/references.md section 7), so neighbouring datasets give training sets that
differ in that one unit."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from typing import Sequence

import numpy as np

from workbench.engine.data.records import DataError, Dataset, Record

# ---------------------------------------------------------------------------------------------
# Validation split
# ---------------------------------------------------------------------------------------------


def split_validation(ds: Dataset, *, fraction: float, seed: int) -> tuple[Dataset, Dataset]:
    """Hold out about `fraction` of the users (or of the examples when there are no users).

    With user ids no user is in both parts, so validation measures generalisation to new
    people. Whether a unit (a user, or a record without users) is held out depends only on
    that unit: a keyed hash (BLAKE2b, key derived from `seed`) of its identity -- the user_id,
    or the record's content (messages, text, label; not its line) -- mapped to [0, 1) and held
    out when below `fraction`. Removing or adding one unit therefore leaves every other unit on
    its side, so neighbouring datasets give training sets that differ in exactly that unit, as
    DP accounting assumes (REFERENCES.md section 7). The split is deterministic for `seed` but
    independent of the rest of the data; the held-out share is `fraction` only on average.
    Both parts keep the original order and `label_names`.
    """
    if not 0.0 < fraction < 1.0:
        raise DataError(
            f"validation fraction must be between 0 and 1 (exclusive); got {fraction}. Use e.g. 0.1 for 10%."
        )
    by_user = ds.num_users is not None
    salt = _salt("workbench-validation-split", seed)
    held_out: dict[str, bool] = {}  # unit identity -> held out (each unit hashed once)
    is_val = []
    for r in ds.records:
        key = "user:" + r.user_id if by_user and r.user_id is not None else "record:" + _record_identity(r)
        if key not in held_out:
            held_out[key] = _unit_interval(key, salt) < fraction
        is_val.append(held_out[key])
    train = tuple(r for r, v in zip(ds.records, is_val) if not v)
    val = tuple(r for r, v in zip(ds.records, is_val) if v)
    if not train or not val:
        unit = "users" if by_user else "examples"
        n_val = sum(held_out.values())
        raise DataError(
            f"{ds.name}: the validation split (validation_fraction={fraction}) put "
            f"{len(held_out) - n_val} of {len(held_out)} {unit} in training and {n_val} in "
            f"validation; both parts need at least one. Each unit is assigned on its own (by a "
            f"keyed hash, so the split is stable between neighbouring datasets), so with few "
            f"{unit} a part can come out empty. "
            + ("Raise validation_fraction" if not val else "Lower validation_fraction")
            + ", add data, or give a separate validation_data file."
        )
    return replace(ds, records=train), replace(ds, records=val)


def _salt(purpose: str, seed: int) -> bytes:
    """Key for BLAKE2b (at most 64 bytes) derived from a purpose string and the seed."""
    return hashlib.blake2b(f"{purpose}:{seed}".encode(), digest_size=32).digest()


def _keyed_digest(identity: str, salt: bytes) -> bytes:
    return hashlib.blake2b(identity.encode("utf-8"), key=salt, digest_size=16).digest()


def _unit_interval(identity: str, salt: bytes) -> float:
    """A float in [0, 1) that depends only on `identity` and `salt` (53 bits of the hash)."""
    return (int.from_bytes(_keyed_digest(identity, salt)[:8], "little") >> 11) / 2.0**53


def _record_identity(r: Record) -> str:
    """A record's identity by content (canonical JSON), never by its position in the file."""
    return json.dumps(
        {"messages": list(r.messages) if r.messages is not None else None, "text": r.text, "label": r.label},
        sort_keys=True,
        ensure_ascii=False,
        separators=(",", ":"),
    )


def apply_labels(ds: Dataset, labels: Sequence[str] | None) -> tuple[Dataset, str | None]:
    """Fix the label set from the run config instead of inferring it from the private data.

    With `labels` (class names from the config) the dataset gets `label_names=tuple(labels)`;
    a label in the data that `labels` does not list is a DataError naming it. With
    `labels=None` a classification dataset is returned unchanged with a warning: its label set
    was inferred from the data, so a label only one record uses reveals that record.
    """
    if labels is None:
        if ds.task != "classification":
            return ds, None
        return ds, (
            f"{ds.name}: the label set {list(ds.label_names or ())} was inferred from the "
            "(private) training data, so a label used by a single record reveals that "
            "record. Set `labels: [...]` in the run config to fix the classes in advance."
        )
    names = tuple(str(x) for x in labels)
    dupes = sorted({x for x in names if names.count(x) > 1})
    if len(names) < 2 or dupes:
        raise DataError(
            f"`labels` in the config must list at least two distinct class names; "
            f"got {list(names)}. List each class once, e.g. "
            "labels: [negative, positive], or leave `labels` out."
        )
    found = {r.label for r in ds.records if r.label is not None}
    unknown = sorted(found - set(names))
    if unknown:
        raise DataError(
            f"{ds.name}: label(s) {unknown} occur in the data but are not in "
            f"`labels` {list(names)} from the config. Add them to `labels` in the "
            "config, or fix the data."
        )
    return replace(ds, label_names=names), None


def cap_per_user(examples: Sequence, *, k: int, how: str, seed: int, name: str) -> list:
    """User-level DP: every example needs a user, and each user keeps at most `k` examples.

    `examples` have `.user_id` and `.input_ids` (e.g. `TokenizedExample`s). how="longest" keeps
    a user's k longest (ties by file order); how="random" draws k with a generator seeded by a
    keyed hash of (seed, user_id) only, so which examples one user keeps does not depend on any
    other user (neighbour stability, REFERENCES.md section 7). Order is preserved.
    """
    if how not in ("random", "longest"):
        raise ValueError(f"cap_per_user: how must be 'random' or 'longest'; got {how!r}.")
    if k < 1:
        raise ValueError(f"cap_per_user: k must be at least 1; got {k}.")
    if any(ex.user_id is None for ex in examples):
        raise DataError(
            f"{name}: privacy_unit=user needs a user_id for every example (a user_id column, or "
            "map one with columns: {user_id: your_column}). Use privacy_unit=example otherwise."
        )
    by_user: dict[str, list[int]] = {}
    for i, ex in enumerate(examples):
        by_user.setdefault(ex.user_id, []).append(i)
    salt = _salt("workbench-cap-per-user", seed)
    keep: list[int] = []
    for user, idx in by_user.items():
        if len(idx) > k:
            if how == "longest":
                idx = sorted(idx, key=lambda i: (-len(examples[i].input_ids), i))[:k]
            else:
                rng = np.random.default_rng(int.from_bytes(_keyed_digest(str(user), salt), "little"))
                idx = [idx[j] for j in rng.choice(len(idx), size=k, replace=False)]
        keep.extend(idx)
    return [examples[i] for i in sorted(keep)]


def check_labels(train: Dataset, val: Dataset) -> None:
    """Classification: every validation label must occur in training, else DataError naming them."""
    if train.task != "classification" or val.task != "classification":
        return
    seen = {r.label for r in train.records}
    missing = sorted({r.label for r in val.records} - seen)
    if missing:
        raise DataError(
            f"{val.name}: validation label(s) {missing} never occur in the training "
            f"data ({train.name}, labels {sorted(seen)}). Fix the labels, or use a "
            "larger or different validation split."
        )


def align_labels(train: Dataset, val: Dataset) -> Dataset:
    """`val` checked by `check_labels` and given train's label_names, so label ids agree.

    Use it when validation comes from its own file (its label_names may be a subset).
    """
    check_labels(train, val)
    return replace(val, label_names=train.label_names)
