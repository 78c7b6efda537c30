"""The privacy ledger: every run that trained, by the data it trained on, and what all of them cost together.

One row per run that took at least one step, written when the run ends (``Session._end``, on the
thread that owns the run store's connection), in the run store's SQLite database. Deleting a run
(``RunStore.delete``) leaves its row: the privacy a run spent is spent whether or not its files are
kept. ``forget`` takes a run out of the totals and records who, when and why in its own table;
forget only a run none of whose outputs (adapter, metrics, logs) anyone who must not learn the data
has seen.

Per dataset fingerprint (engine/fingerprint.py: the records and the privacy unit) the total is the
PLD composition of the stored events (privacy/dp_events.py), tight rather than a sum, at the largest
delta among the runs (every run's own epsilon stays at its own delta). Runs analysed for different
neighbouring relations compose for replace_one (``dp_events.common_relation``; an ELS run mixed
with a replace_one run gives no total, with the reason). A non-private run (noise 0, or seeded
randomness: noise_seed) makes the total infinite, and the ledger names it.

A tuning session (a sweep in tuning mode) also stores the DP events of every setting it could draw
(``tuning_candidates``): its RepeatAndSelect bound is over all of them, not only the settings drawn.
"""

from __future__ import annotations

import getpass
import json
import math
import socket
import time
from dataclasses import dataclass, field, replace
from typing import Any, Sequence

from workbench.privacy.accountants import PrivacyError
from workbench.privacy.dp_events import (
    common_relation,
    composed_epsilon,
    event_from_dict,
    event_from_json,
    event_to_dict,
    event_to_json,
)
from workbench.store.runs import RunStore

SCHEMA = """
CREATE TABLE IF NOT EXISTS ledger (
    run_id TEXT PRIMARY KEY,
    name TEXT,
    time REAL NOT NULL,
    fingerprint TEXT NOT NULL,
    dataset_name TEXT,
    data_path TEXT,
    privacy_unit TEXT NOT NULL,
    neighboring TEXT NOT NULL,
    delta REAL NOT NULL,
    epsilon REAL,
    steps INTEGER NOT NULL,
    accountant TEXT,
    dp_event TEXT NOT NULL,
    non_private INTEGER NOT NULL DEFAULT 0,
    note TEXT,
    tuning_session TEXT,
    tuning_distribution TEXT,
    tuning_mean REAL,
    tuning_shape REAL
);
CREATE INDEX IF NOT EXISTS ledger_fingerprint ON ledger(fingerprint);
CREATE TABLE IF NOT EXISTS ledger_forgotten (
    run_id TEXT PRIMARY KEY,
    time REAL NOT NULL,
    who TEXT NOT NULL,
    reason TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS tuning_candidates (
    session TEXT PRIMARY KEY,
    events TEXT NOT NULL
);
"""
# No foreign key to runs: a row outlives its run. ``tuning_candidates``: per tuning session (its sweep's name),
# the JSON list of the DP events of every setting it could draw (``event_to_dict``), written when the sweep is
# created; a store from before that table gains it empty, and its sessions say their bound covers only the
# settings drawn.

DRAWN_ONLY = (
    "this session was stored before the ledger kept the settings it could draw: its RepeatAndSelect bound covers "
    "only the settings drawn, and is too small if a setting never drawn (e.g. less noise) costs more; the "
    "composition of all runs is valid"
)

_COLUMNS = (
    "run_id",
    "name",
    "time",
    "fingerprint",
    "dataset_name",
    "data_path",
    "privacy_unit",
    "neighboring",
    "delta",
    "epsilon",
    "steps",
    "accountant",
    "dp_event",
    "non_private",
    "note",
    "tuning_session",
    "tuning_distribution",
    "tuning_mean",
    "tuning_shape",
)


class LedgerError(ValueError):
    """A ledger request that cannot be done (an unknown run, a run forgotten twice); one message."""


@dataclass(frozen=True)
class LedgerEntry:
    run_id: str
    name: str | None
    time: float
    fingerprint: str
    dataset_name: str | None
    data_path: str | None
    privacy_unit: str
    neighboring: str
    delta: float
    epsilon: float  # the run's own epsilon at its own delta (inf when non-private)
    steps: int
    accountant: str | None
    dp_event: str  # JSON (privacy/dp_events.py)
    non_private: bool
    note: str | None = None
    tuning_session: str | None = None
    tuning_distribution: str | None = None
    tuning_mean: float | None = None
    tuning_shape: float | None = None

    @property
    def event(self):
        return event_from_json(self.dp_event)

    @property
    def label(self) -> str:
        return f"{self.run_id}" + (f" ({self.name})" if self.name else "")

    def to_dict(self) -> dict[str, Any]:
        out = {c: getattr(self, c) for c in _COLUMNS}
        out["dp_event"] = json.loads(self.dp_event)
        return out


@dataclass(frozen=True)
class Forgotten:
    run_id: str
    time: float
    who: str
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "time": self.time, "who": self.who, "reason": self.reason}


@dataclass(frozen=True)
class Total:
    """Runs composed: epsilon at ``delta`` for ``neighboring`` (None with ``note`` when they cannot be)."""

    epsilon: float | None
    delta: float | None
    neighboring: str | None
    runs: int
    non_private_runs: tuple[str, ...] = ()
    note: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "epsilon": self.epsilon,
            "delta": self.delta,
            "neighboring": self.neighboring,
            "runs": self.runs,
            "non_private_runs": list(self.non_private_runs),
            "note": self.note,
        }


@dataclass(frozen=True)
class DatasetLedger:
    """One dataset (fingerprint): its runs, the composed total, and the runs forgotten."""

    fingerprint: str
    dataset_name: str | None
    data_paths: tuple[str, ...]
    privacy_unit: str
    entries: tuple[LedgerEntry, ...]
    total: Total
    forgotten: tuple[tuple[LedgerEntry, Forgotten], ...] = field(default=())
    # tuning session -> the events of every setting it could draw (``Ledger.tuning_candidates``)
    tuning_candidates: dict[str, tuple] = field(default_factory=dict, compare=False)

    @property
    def label(self) -> str:
        return f"{self.dataset_name or '?'} · {self.privacy_unit}-level · {self.fingerprint[:12]}"

    def tuning_sessions(self) -> dict[str, Any]:
        """Each tuning session among the runs -> its ``privacy.tuning.TuningCost`` (best of its runs released).

        The RepeatAndSelect bound is over every setting the session could draw (its stored candidates, and
        the events its runs recorded); a session stored without candidates gets the bound over the settings
        drawn, with the ``DRAWN_ONLY`` note."""
        from workbench.privacy.tuning import tuning_cost

        sessions: dict[str, list[LedgerEntry]] = {}
        for e in self.entries:
            if e.tuning_session:
                sessions.setdefault(e.tuning_session, []).append(e)
        out = {}
        for name, rows in sessions.items():
            events = [e.event for e in rows]
            stored = self.tuning_candidates.get(name)
            candidates = None
            if stored is not None:  # what the session could draw; a run's own event too, should it differ
                candidates = list({event_to_json(e): e for e in (*stored, *events)}.values())
            try:
                relation, _ = common_relation([e.neighboring for e in rows], events)
                cost = tuning_cost(
                    events,
                    delta=max(e.delta for e in rows),
                    neighboring=relation,
                    mean=rows[0].tuning_mean,
                    shape=rows[0].tuning_shape,
                    candidates=candidates,
                )
            except PrivacyError as err:
                out[name] = str(err)
                continue
            if stored is None and cost.repeat_and_select is not None:
                cost = replace(cost, note="; ".join(n for n in (cost.note, DRAWN_ONLY) if n))
            out[name] = cost
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "fingerprint": self.fingerprint,
            "dataset_name": self.dataset_name,
            "data_paths": list(self.data_paths),
            "privacy_unit": self.privacy_unit,
            "runs": [e.to_dict() for e in self.entries],
            "total": self.total.to_dict(),
            "forgotten": [{**f.to_dict(), "name": e.name, "epsilon": e.epsilon} for e, f in self.forgotten],
        }


def compose_entries(entries: Sequence[LedgerEntry]) -> Total:
    """The PLD composition of ``entries``' events (the ledger's total; also the cost of choosing among them)."""
    if not entries:
        return Total(0.0, None, None, 0)
    non_private = tuple(e.label for e in entries if e.non_private)
    delta = max(e.delta for e in entries)
    try:
        neighboring, note = common_relation([e.neighboring for e in entries], [e.event for e in entries])
    except PrivacyError as err:
        return Total(math.inf if non_private else None, delta, None, len(entries), non_private, str(err))
    if non_private:
        note = f"non-private: {', '.join(non_private)} (no noise, or seeded randomness) makes the total infinite"
        return Total(math.inf, delta, neighboring, len(entries), non_private, note)
    epsilon = composed_epsilon([e.event for e in entries], delta=delta, neighboring=neighboring)
    return Total(epsilon, delta, neighboring, len(entries), (), note)


class Ledger:
    """The ledger tables in ``store``'s database (its path, one connection per thread)."""

    def __init__(self, store: RunStore | None = None) -> None:
        self.store = store or RunStore()
        with self.store._conn() as c:
            c.executescript(SCHEMA)

    # -- writing -----------------------------------------------------------------------------------
    def record(self, entry: LedgerEntry) -> None:
        """Write (or rewrite) the row of ``entry.run_id``."""
        values = [getattr(entry, c) for c in _COLUMNS]
        values[_COLUMNS.index("non_private")] = int(entry.non_private)
        with self.store._conn() as c:
            c.execute(
                f"INSERT OR REPLACE INTO ledger ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})",
                values,
            )

    def record_run(self, *, run_id: str, name: str | None, prepared, steps: int, seeded: bool) -> LedgerEntry | None:
        """The row of a run that took ``steps`` steps with ``prepared`` (engine/prepare.py); None when it
        took none. The event is ``plan.dp_event(steps)``, the one ``plan.epsilon_at(steps)`` accounts."""
        if steps <= 0:
            return None
        plan, cfg = prepared.plan, prepared.config
        non_private = not plan.private or seeded
        note = None
        if seeded:
            note = "seeded randomness (noise_seed): anyone with the seed can replay the noise, no DP guarantee"
        elif not plan.private:
            note = "non-private: no noise"
        event = _non_private_event() if non_private else plan.dp_event(steps)
        entry = LedgerEntry(
            run_id=run_id,
            name=name,
            time=time.time(),
            fingerprint=prepared.dataset_fingerprint,
            dataset_name=prepared.dataset_name,
            data_path=str(cfg.data),
            privacy_unit=plan.privacy_unit,
            neighboring=plan.neighboring,
            delta=plan.delta,
            epsilon=math.inf if non_private else plan.epsilon_at(steps),
            steps=steps,
            accountant=plan.accountant,
            dp_event=event_to_json(event),
            non_private=non_private,
            note=note,
        )
        self.record(entry)
        return entry

    def set_tuning(self, run_ids: Sequence[str], *, session: str, distribution: str, mean: float, shape: float) -> None:
        """Mark ``run_ids`` as one tuning session with a random number of runs (for a sweep command)."""
        with self.store._conn() as c:
            for run_id in run_ids:
                c.execute(
                    "UPDATE ledger SET tuning_session=?, tuning_distribution=?, tuning_mean=?, tuning_shape=? "
                    "WHERE run_id=?",
                    (session, distribution, mean, shape, self.get(run_id).run_id),
                )

    def set_tuning_candidates(self, session: str, events: Sequence) -> None:
        """Store the DP events of every setting tuning session ``session`` could draw (before any run; for a
        sweep command). Events already stored for ``session`` are kept: the bound covers all of them."""
        with self.store._conn() as c:
            c.execute("BEGIN IMMEDIATE")
            try:
                row = c.execute("SELECT events FROM tuning_candidates WHERE session=?", (session,)).fetchone()
                kept = [event_from_dict(d) for d in json.loads(row[0])] if row else []
                union = {event_to_json(e): e for e in (*kept, *events)}
                text = json.dumps([event_to_dict(e) for e in union.values()])
                c.execute("INSERT OR REPLACE INTO tuning_candidates (session, events) VALUES (?,?)", (session, text))
                c.execute("COMMIT")
            except BaseException:
                c.execute("ROLLBACK")
                raise

    def tuning_candidates(self) -> dict[str, tuple]:
        """Tuning session -> the DP events of every setting it could draw (sessions stored before: absent)."""
        with self.store._conn() as c:
            rows = c.execute("SELECT session, events FROM tuning_candidates").fetchall()
        return {session: tuple(event_from_dict(d) for d in json.loads(text)) for session, text in rows}

    def forget(self, run_id: str, reason: str, *, who: str | None = None) -> Forgotten:
        """Take a run out of the totals; who, when and why are kept (the run's row too)."""
        entry = self.get(run_id)
        if self._forgotten().get(entry.run_id):
            raise LedgerError(f"run {entry.run_id} was already forgotten.")
        record = Forgotten(entry.run_id, time.time(), who or _who(), reason.strip() or "(no reason given)")
        with self.store._conn() as c:
            c.execute(
                "INSERT INTO ledger_forgotten (run_id, time, who, reason) VALUES (?,?,?,?)",
                (record.run_id, record.time, record.who, record.reason),
            )
        return record

    # -- reading -----------------------------------------------------------------------------------
    def entries(self, *, include_forgotten: bool = False) -> list[LedgerEntry]:
        """Rows in time order; forgotten ones only when asked."""
        with self.store._conn() as c:
            rows = c.execute(f"SELECT {', '.join(_COLUMNS)} FROM ledger ORDER BY time, run_id").fetchall()
        out = [_entry(r) for r in rows]
        if include_forgotten:
            return out
        forgotten = self._forgotten()
        return [e for e in out if e.run_id not in forgotten]

    def get(self, run_id: str) -> LedgerEntry:
        """The row of ``run_id`` (or of the one run whose id starts with it)."""
        with self.store._conn() as c:
            rows = c.execute(f"SELECT {', '.join(_COLUMNS)} FROM ledger WHERE run_id=?", (run_id,)).fetchall()
            if not rows:
                rows = (
                    c.execute(
                        f"SELECT {', '.join(_COLUMNS)} FROM ledger WHERE substr(run_id, 1, ?) = ?",
                        (len(run_id), run_id),
                    ).fetchall()
                    if run_id
                    else []
                )
        if len(rows) != 1:
            raise LedgerError(f"no run {run_id!r} in the privacy ledger. `workbench ledger` lists the runs it holds.")
        return _entry(rows[0])

    def forgotten(self) -> list[Forgotten]:
        return list(self._forgotten().values())

    def _forgotten(self) -> dict[str, Forgotten]:
        with self.store._conn() as c:
            rows = c.execute("SELECT run_id, time, who, reason FROM ledger_forgotten ORDER BY time").fetchall()
        return {r[0]: Forgotten(*r) for r in rows}

    def datasets(self, fingerprints: Sequence[str] | None = None) -> list[DatasetLedger]:
        """Per dataset fingerprint (newest run first): its runs and their composed total."""
        forgotten = self._forgotten()
        groups: dict[str, list[LedgerEntry]] = {}
        for entry in self.entries(include_forgotten=True):
            if fingerprints is None or entry.fingerprint in fingerprints:
                groups.setdefault(entry.fingerprint, []).append(entry)
        candidates = self.tuning_candidates()
        out = []
        for fingerprint, rows in groups.items():
            kept = tuple(e for e in rows if e.run_id not in forgotten)
            gone = tuple((e, forgotten[e.run_id]) for e in rows if e.run_id in forgotten)
            paths = tuple(dict.fromkeys(e.data_path for e in rows if e.data_path))
            out.append(
                DatasetLedger(
                    fingerprint,
                    rows[-1].dataset_name,
                    paths,
                    rows[-1].privacy_unit,
                    kept,
                    compose_entries(kept),
                    gone,
                    candidates,
                )
            )
        return sorted(out, key=lambda d: -max(e.time for e in (*d.entries, *(e for e, _ in d.forgotten))))

    def entries_for(self, run_ids: Sequence[str]) -> list[LedgerEntry]:
        """The rows of ``run_ids`` that the ledger holds (forgotten ones included: choosing still reads them)."""
        wanted = set(run_ids)
        return [e for e in self.entries(include_forgotten=True) if e.run_id in wanted]


def _non_private_event():
    from dp_accounting import dp_event

    return dp_event.NonPrivateDpEvent()


def _entry(row) -> LedgerEntry:
    values = dict(zip(_COLUMNS, row))
    values["non_private"] = bool(values["non_private"])
    values["epsilon"] = math.inf if values["epsilon"] is None else float(values["epsilon"])
    return LedgerEntry(**values)


def _who() -> str:
    try:
        user = getpass.getuser()
    except Exception:  # noqa: BLE001 - no user name in this environment
        user = "unknown"
    return f"{user}@{socket.gethostname()}"
