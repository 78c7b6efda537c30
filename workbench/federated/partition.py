"""Which client holds which records: by user, by a column (a clinic), or a Dirichlet label split.

Every layout is neighbour-stable: a record's client depends only on that record (its user id, its column's
value, or its own identity and label) and on public settings (K, the salt, the seed), never on the other records.
Removing one client's data (or one record, or one user) therefore changes nothing in the other clients'
partitions, as the accounting of each level assumes.

- ``by-user``: a keyed hash (BLAKE2b, key from ``salt``) of the user id, mod K; a user's records stay together.
- ``by-column:NAME``: one client per distinct value of the column NAME when K equals their number (the client named
  by its value), else each value hashed to one of K clients.
- ``dirichlet:ALPHA``: the usual heterogeneous label split (Hsu et al. 2019): for each label a vector of client
  shares drawn from Dirichlet(ALPHA) with a public ``seed``, and each record placed by a keyed hash of its identity
  into that label's shares. The seed is public on purpose: a partition is the data's layout, the setting of the
  experiment, not randomness a privacy guarantee rests on (no epsilon here depends on which client holds what).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from workbench.errors import UserError


class FederatedError(UserError, ValueError):
    """Bad federated settings or data (clients, rounds, the partition); the message says what to do."""


@dataclass(frozen=True)
class PartitionSpec:
    kind: str  # "by-user", "by-column" or "dirichlet"
    column: str | None = None
    alpha: float | None = None

    def __str__(self) -> str:
        if self.kind == "by-column":
            return f"by-column:{self.column}"
        return f"dirichlet:{self.alpha:g}" if self.kind == "dirichlet" else self.kind


def parse_partition(text: str) -> PartitionSpec:
    """``by-user``, ``by-column:NAME`` or ``dirichlet:ALPHA``; FederatedError for anything else."""
    kind, _, arg = text.strip().partition(":")
    if kind == "by-user" and not arg:
        return PartitionSpec("by-user")
    if kind == "by-column" and arg:
        return PartitionSpec("by-column", column=arg)
    if kind == "dirichlet":
        try:
            alpha = float(arg)
        except ValueError:
            alpha = -1.0
        if alpha > 0:
            return PartitionSpec("dirichlet", alpha=alpha)
    raise FederatedError(
        f"--partition {text!r} is not a layout: use by-user, by-column:NAME (a column of the data file, e.g. "
        "by-column:clinic) or dirichlet:ALPHA (ALPHA > 0, e.g. dirichlet:0.3)."
    )


def _unit(key: str, salt: str) -> float:
    """A keyed hash of ``key`` mapped to [0, 1)."""
    digest = hashlib.blake2b(key.encode(), key=salt.encode()[:64], digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def record_identity(record) -> str:
    """A record's identity from its content (not its line): the same record hashes the same in any file."""
    return json.dumps([record.messages, record.text, record.label], sort_keys=True, default=str)


@dataclass(frozen=True)
class Partition:
    """K clients' record indices (into the records given) and their names."""

    spec: PartitionSpec
    names: tuple[str, ...]
    indices: tuple[tuple[int, ...], ...]

    @property
    def sizes(self) -> list[int]:
        return [len(ix) for ix in self.indices]


def partition(
    records: Sequence,
    *,
    clients: int,
    spec: PartitionSpec,
    salt: str = "workbench-federated",
    seed: int = 0,
    column_values: Sequence[str | None] | None = None,
    dataset: str = "the data",
    allow_empty: bool = False,
) -> Partition:
    """The records' layout over ``clients`` clients (module docstring). ``column_values``: each record's value of
    the partition column (by-column). FederatedError for more clients than units, a missing column, or a client
    left empty (unless ``allow_empty``: the layout itself, for comparing neighbouring datasets)."""
    if clients < 1:
        raise FederatedError(f"--clients must be at least 1. Found {clients}.")
    if spec.kind == "by-user":
        users = [r.user_id for r in records]
        if any(u is None for u in users):
            raise FederatedError(
                f"{dataset} has records without a user_id, so --partition by-user cannot place them: add a user_id "
                "column (or map one with columns: {user_id: your_column}), or use by-column:NAME or dirichlet:ALPHA."
            )
        units = sorted(set(users))
        _enough(clients, len(units), "users", dataset)
        owner = {u: int(_unit("user:" + u, salt) * clients) for u in units}
        assign, names = [owner[u] for u in users], [f"client-{i}" for i in range(clients)]
    elif spec.kind == "by-column":
        if column_values is None or any(v is None for v in column_values):
            raise FederatedError(
                f"{dataset} has no column {spec.column!r} on every record, so --partition by-column:{spec.column} "
                "cannot place them: name a column the file has (one value per record, e.g. a clinic), or use by-user."
            )
        values = sorted(set(column_values))
        _enough(clients, len(values), f"distinct values of {spec.column!r}", dataset)
        if clients == len(values):  # one client per value, named by it
            index = {v: i for i, v in enumerate(values)}
            assign, names = [index[v] for v in column_values], [str(v) for v in values]
        else:
            assign = [int(_unit("value:" + str(v), salt) * clients) for v in column_values]
            names = [f"client-{i}" for i in range(clients)]
    else:
        assign, names = _dirichlet(records, clients=clients, alpha=spec.alpha, salt=salt, seed=seed), None
        _enough(clients, len(records), "records", dataset)
        names = [f"client-{i}" for i in range(clients)]
    indices = [[] for _ in range(clients)]
    for i, c in enumerate(assign):
        indices[c].append(i)
    empty = [names[c] for c in range(clients) if not indices[c]]
    if empty and not allow_empty:
        raise FederatedError(
            f"--partition {spec} over {clients} clients leaves {len(empty)} client(s) with no records "
            f"({', '.join(empty[:5])}): each unit is placed by a keyed hash (so the layout is neighbour-stable), "
            "and with few units per client one can come out empty. Lower --clients."
        )
    return Partition(spec, tuple(names), tuple(tuple(ix) for ix in indices))


def _enough(clients: int, units: int, what: str, dataset: str) -> None:
    if clients > units:
        raise FederatedError(
            f"--clients {clients} is more than the {units} {what} in {dataset}: each client needs at least one. "
            f"Lower --clients to at most {units}."
        )


def _dirichlet(records: Sequence, *, clients: int, alpha: float, salt: str, seed: int) -> list[int]:
    """Each record's client: its label's Dirichlet(alpha) client shares, drawn from a generator keyed by the public
    seed and the label alone (so they do not depend on the other records), and the record's keyed hash in [0, 1)
    placed in their cumulative sums."""
    labels = sorted({str(r.label) for r in records})
    shares = {}
    for label in labels:  # the label's own generator: its shares depend on the seed and the label only
        key = int.from_bytes(hashlib.sha256(f"{seed}:{label}".encode()).digest()[:8], "big")
        shares[label] = np.cumsum(np.random.default_rng(key).dirichlet([alpha] * clients))
    out = []
    for r in records:
        u = _unit("record:" + record_identity(r), salt)
        out.append(min(int(np.searchsorted(shares[str(r.label)], u, side="right")), clients - 1))
    return out


def column_values(path: str, column: str, lines: Sequence[int | None]) -> list[str | None]:
    """The value of ``column`` on each record's line (or row) of the data file ``path`` (by-column). A value
    that is not text is written as JSON; a record whose line has no such column gets None."""
    from workbench.engine.data.readers import _read_file  # the same reader as the records' (one parser)

    p = Path(path).expanduser()
    if not p.is_file():
        raise FederatedError(
            f"--partition by-column:{column} needs a data file with that column; {path} is not one. Use by-user "
            "or dirichlet:ALPHA with this data."
        )
    table = _read_file(p)
    if column not in table.columns:
        raise FederatedError(
            f"{p.name} has no column {column!r} (its columns: {', '.join(table.columns)}). Name one of them in "
            f"--partition by-column:NAME, or use by-user."
        )
    by_line = {line: row.get(column) for line, row in table.rows}
    return [None if by_line.get(line) is None else _text(by_line[line]) for line in lines]


def _text(value) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)
