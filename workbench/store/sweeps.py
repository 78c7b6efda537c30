"""Sweeps in the run store: one group of runs over a grid of settings and seeds (``workbench/sweeps.py``).

Two tables in the run store's SQLite database, created if missing (an existing database keeps every
run: nothing in the ``runs`` or ``events`` tables changes):

- ``sweeps``: one row per sweep: its name, the base config, the grid, the seeds and, in tuning mode,
  the distribution of the number of runs with its parameters and the number drawn.
- ``sweep_runs``: one row per member (one combination of settings and a seed): its label, its
  overrides of the base config, the id of the run that trains it (once started), its state, and the
  ids of earlier attempts (a resumed member trains again as a new run; the earlier one is kept).

A member's state is written before its run starts ('started') and when the run ends; a sweep killed
mid-run leaves 'started' with a run that reads as interrupted, which ``resume`` trains again. A run
deleted after it finished stays finished for its sweep.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from workbench.store.runs import RunNotFound, RunStore

SCHEMA = """
CREATE TABLE IF NOT EXISTS sweeps (
    name TEXT PRIMARY KEY,
    created REAL NOT NULL,
    base_config TEXT NOT NULL,
    grid TEXT NOT NULL,
    seeds TEXT NOT NULL,
    tuning TEXT
);
CREATE TABLE IF NOT EXISTS sweep_runs (
    sweep TEXT NOT NULL REFERENCES sweeps(name) ON DELETE CASCADE,
    idx INTEGER NOT NULL,
    label TEXT NOT NULL,
    overrides TEXT NOT NULL,
    run_id TEXT,
    state TEXT NOT NULL DEFAULT 'pending',
    attempts TEXT NOT NULL DEFAULT '[]',
    PRIMARY KEY (sweep, idx)
);
CREATE INDEX IF NOT EXISTS sweep_runs_run ON sweep_runs(run_id);
"""

# A member's states: pending (never started), started (its run is training or was killed),
# finished / stopped / failed (how its run ended).
DONE = "finished"


class SweepNotFound(KeyError):
    def __str__(self) -> str:
        return f"no sweep named {self.args[0]!r}. `workbench sweep list` shows the stored sweeps."


@dataclass(frozen=True)
class Member:
    index: int
    label: str
    overrides: dict[str, Any]
    run_id: str | None = None
    state: str = "pending"
    attempts: tuple[str, ...] = ()


@dataclass(frozen=True)
class SweepRecord:
    name: str
    created: float
    base_config: dict[str, Any]
    grid: list[tuple[str, list[Any]]]
    seeds: list[int]
    tuning: dict[str, Any] | None
    members: tuple[Member, ...] = field(default=())

    @property
    def keys(self) -> list[str]:
        """The swept settings (grid keys, then 'seed' when there is more than one seed)."""
        return [k for k, _ in self.grid] + (["seed"] if len(self.seeds) > 1 or self.tuning else [])

    @property
    def run_ids(self) -> list[str]:
        return [m.run_id for m in self.members if m.run_id]

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "created": self.created,
            "base_config": self.base_config,
            "grid": [[k, v] for k, v in self.grid],
            "seeds": self.seeds,
            "tuning": self.tuning,
            "members": [
                {
                    "index": m.index,
                    "label": m.label,
                    "overrides": m.overrides,
                    "run_id": m.run_id,
                    "state": m.state,
                    "attempts": list(m.attempts),
                }
                for m in self.members
            ],
        }


class SweepStore:
    """The sweep tables in ``store``'s database (one connection per thread, like the store's)."""

    def __init__(self, store: RunStore | None = None) -> None:
        self.store = store or RunStore()
        with self.store._conn() as c:
            c.executescript(SCHEMA)

    # -- writing -----------------------------------------------------------------------------------
    def create(
        self,
        name: str,
        *,
        base_config: dict[str, Any],
        grid: list[tuple[str, list[Any]]],
        seeds: list[int],
        members: list[tuple[str, dict[str, Any]]],
        tuning: dict[str, Any] | None = None,
    ) -> SweepRecord:
        """Store a new sweep and its members (label, overrides) in one transaction."""
        with self.store._conn() as c:
            c.execute("BEGIN IMMEDIATE")
            try:
                if c.execute("SELECT 1 FROM sweeps WHERE name=?", (name,)).fetchone():
                    raise ValueError(f"a sweep named {name!r} exists")
                c.execute(
                    "INSERT INTO sweeps (name, created, base_config, grid, seeds, tuning) VALUES (?,?,?,?,?,?)",
                    (
                        name,
                        time.time(),
                        json.dumps(base_config),
                        json.dumps([[k, v] for k, v in grid]),
                        json.dumps(seeds),
                        json.dumps(tuning) if tuning is not None else None,
                    ),
                )
                c.executemany(
                    "INSERT INTO sweep_runs (sweep, idx, label, overrides) VALUES (?,?,?,?)",
                    [(name, i, label, json.dumps(o)) for i, (label, o) in enumerate(members)],
                )
                c.execute("COMMIT")
            except BaseException:
                c.execute("ROLLBACK")
                raise
        return self.get(name)

    def start_member(self, name: str, index: int, run_id: str) -> None:
        """Link the member to the run about to train it (before it starts; earlier attempts are kept)."""
        with self.store._conn() as c:
            row = c.execute("SELECT run_id, attempts FROM sweep_runs WHERE sweep=? AND idx=?", (name, index)).fetchone()
            attempts = json.loads(row[1]) + ([row[0]] if row[0] else [])
            c.execute(
                "UPDATE sweep_runs SET run_id=?, state='started', attempts=? WHERE sweep=? AND idx=?",
                (run_id, json.dumps(attempts), name, index),
            )

    def end_member(self, name: str, index: int, state: str) -> None:
        with self.store._conn() as c:
            c.execute("UPDATE sweep_runs SET state=? WHERE sweep=? AND idx=?", (state, name, index))

    def set_tuning(self, name: str, tuning: dict[str, Any]) -> None:
        with self.store._conn() as c:
            c.execute("UPDATE sweeps SET tuning=? WHERE name=?", (json.dumps(tuning), name))

    # -- reading -----------------------------------------------------------------------------------
    def exists(self, name: str) -> bool:
        with self.store._conn() as c:
            return c.execute("SELECT 1 FROM sweeps WHERE name=?", (name,)).fetchone() is not None

    def get(self, name: str) -> SweepRecord:
        with self.store._conn() as c:
            row = c.execute(
                "SELECT name, created, base_config, grid, seeds, tuning FROM sweeps WHERE name=?", (name,)
            ).fetchone()
            if row is None:
                raise SweepNotFound(name)
            members = c.execute(
                "SELECT idx, label, overrides, run_id, state, attempts FROM sweep_runs WHERE sweep=? ORDER BY idx",
                (name,),
            ).fetchall()
        return SweepRecord(
            name=row[0],
            created=row[1],
            base_config=json.loads(row[2]),
            grid=[(k, v) for k, v in json.loads(row[3])],
            seeds=json.loads(row[4]),
            tuning=json.loads(row[5]) if row[5] else None,
            members=tuple(
                Member(i, label, json.loads(o), run_id, state, tuple(json.loads(a)))
                for i, label, o, run_id, state, a in members
            ),
        )

    def list(self) -> list[SweepRecord]:
        with self.store._conn() as c:
            names = [r[0] for r in c.execute("SELECT name FROM sweeps ORDER BY created DESC").fetchall()]
        return [self.get(n) for n in names]

    def sweep_of(self, run_id: str) -> tuple[str, Member] | None:
        """The sweep and member a run trains (or trained, as an earlier attempt), if any."""
        with self.store._conn() as c:
            row = c.execute("SELECT sweep FROM sweep_runs WHERE run_id=?", (run_id,)).fetchone()
        if row is None:
            return None
        rec = self.get(row[0])
        return rec.name, next(m for m in rec.members if m.run_id == run_id)

    def status(self, member: Member) -> str:
        """What the member's run says now: pending, running, queued, finished, stopped, failed, interrupted,
        or missing (started, and its run is gone)."""
        if member.state == DONE:
            return DONE
        if member.run_id is None:
            return "pending"
        try:
            return self.store.get(member.run_id).status
        except RunNotFound:
            return "missing" if member.state == "started" else member.state

    def counts(self, rec: SweepRecord) -> dict[str, int]:
        out: dict[str, int] = {}
        for m in rec.members:
            s = self.status(m)
            out[s] = out.get(s, 0) + 1
        return out


__all__ = ["SweepStore", "SweepRecord", "Member", "SweepNotFound", "DONE"]
