"""The privacy ledger: every run that trained, by the data it trained on, and what all of them cost together.

One row per run that took at least one step, written when the run ends (``Session._end``, on the
thread that owns the run store's connection), in the run store's SQLite database. Deleting a run
(``RunStore.delete``) leaves its row: the privacy a run spent is spent whether or not its files are
kept. ``forget`` takes a run out of the totals and records who, when and why in its own table;
forget only a run none of whose outputs (adapter, metrics, logs) anyone who must not learn the data
has seen.

Runs count together by the people they trained on, not by the file: each row keeps the keyed hashes of
its units (store/ledger_units.py: every example by its content, every user by its id), and runs whose
units intersect are one dataset group (a shuffled copy, a copy with one record edited, a user-level run on
the same people), with the overlap shown. Per group the total is the PLD composition of the stored events
(privacy/dp_events.py), tight rather than a sum, at the largest delta among the runs (every run's own
epsilon stays at its own delta).

Example-level and user-level runs on the same people: a group holding any user-level run gives a
user-level total. Each example-level run in it counts, for a person who had m of its examples, as the ELS
mixture of Gaussians with k = m (privacy/user_level.py ``example_event_for_person``: group privacy over
that person's examples, in its tight PLD form), with m the most examples any one person had in that run
(people known by user id, from any run in the group; an example no run gives a user is its own person).
This holds for add/remove of a person: an example-level replace_one run (it publishes the exact number of
examples, which a person's data changes) in a user-level group leaves the group without a total, with the
reason, as does a person with more than ``MAX_EXAMPLES_PER_PERSON`` examples in one example-level run.

A run stopped by hand counts as its full planned schedule (its event at the planned steps, with a note):
the stopping step may depend on what the person saw, so only the planned epsilon covers it. A replay
(``workbench runs replay``, same key, same data) is a copy of its original's release: its row names the
original and does not count again (and it cannot be exported, store/export.py). Runs analysed for different
neighbouring relations compose for replace_one (``dp_events.common_relation``; an ELS run mixed
with a replace_one run gives no total, with the reason). A non-private run (noise 0, or seeded
randomness: noise_seed) makes the total infinite, and the ledger names it.

A tuning session (a sweep in tuning mode) also stores the DP events of every setting it could draw
(``tuning_candidates``): its RepeatAndSelect bound is over all of them, not only the settings drawn.
"""

from __future__ import annotations

import getpass
import hmac
import json
import math
import socket
import time
from dataclasses import dataclass, field, replace
from typing import Any, Sequence

from workbench.errors import UserError
from workbench.privacy.accountants import PrivacyError
from workbench.privacy.dp_events import (
    common_relation,
    composed_epsilon,
    event_from_dict,
    event_from_json,
    event_to_dict,
    event_to_json,
)
from workbench.privacy.user_level import example_event_for_person
from workbench.store import ledger_units as units
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
CREATE TABLE IF NOT EXISTS ledger_unit_sets (
    fingerprint TEXT PRIMARY KEY,
    units BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS ledger_meta (
    name TEXT PRIMARY KEY,
    value BLOB NOT NULL
);
"""
# Columns added after the first ledgers were written (an older store gains them, NULL for its rows).
ADDED_COLUMNS = (("records_digest", "TEXT"), ("replay_of", "TEXT"))
MAX_EXAMPLES_PER_PERSON = 16  # the mixture PLD of a person's m examples costs seconds per few m
# No foreign key to runs: a row outlives its run. ``tuning_candidates``: per tuning session (its sweep's name),
# the JSON list of the DP events of every setting it could draw (``event_to_dict``), written when the sweep is
# created; a store from before that table gains it empty, and its sessions say their bound covers only the
# settings drawn. ``records_digest``: the keyed exact-records digest (order-sensitive; what a replay must match);
# NULL for rows stored before units were kept (their ``fingerprint`` is that digest, unkeyed). ``fingerprint`` of
# a newer row names its set of units in ``ledger_unit_sets``. ``replay_of``: the run a replay copies.

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
    "records_digest",
    "replay_of",
)


class LedgerError(UserError, ValueError):
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
    records_digest: str | None = None
    replay_of: str | None = None

    @property
    def legacy(self) -> bool:
        """Stored before the ledger kept unit identities (grouped by its exact-records fingerprint only)."""
        return self.records_digest is None

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
    """One dataset group (runs that share units): its runs, the composed total, and the runs forgotten.

    ``privacy_unit`` is the total's unit: 'user' when any run in the group is user-level. ``persons``: for a
    user-level total, each example-level run -> the most examples one person had in it (the k its event is
    counted with, ``accounted``). ``overlap``: which of the group's distinct datasets share how many units."""

    fingerprint: str
    dataset_name: str | None
    data_paths: tuple[str, ...]
    privacy_unit: str
    entries: tuple[LedgerEntry, ...]
    total: Total
    forgotten: tuple[tuple[LedgerEntry, Forgotten], ...] = field(default=())
    # tuning session -> the events of every setting it could draw (``Ledger.tuning_candidates``)
    tuning_candidates: dict[str, tuple] = field(default_factory=dict, compare=False)
    fingerprints: tuple[str, ...] = ()
    overlap: tuple[str, ...] = ()
    persons: dict[str, int] = field(default_factory=dict, compare=False)
    legacy: bool = False  # rows stored before units were kept: grouped by their exact-records fingerprint

    @property
    def label(self) -> str:
        return f"{self.dataset_name or '?'} · {self.privacy_unit}-level · {self.fingerprint[:12]}"

    def accounted(self, entry: LedgerEntry):
        """``entry``'s event as this group's total counts it (per person for an example-level run in a
        user-level group: ``privacy.user_level.example_event_for_person``)."""
        m = self.persons.get(entry.run_id)
        return entry.event if m is None else example_event_for_person(entry.event, m)

    @property
    def rule(self) -> str | None:
        """The sentence on how example-level runs count in a user-level total (None when there are none)."""
        if not self.persons:
            return None
        most = ", ".join(f"{run} {m}" for run, m in self.persons.items())
        return (
            "user-level total: every run on these people counts; an example-level run counts, for a person with m "
            "of its examples, as Poisson sampling of those m examples (the ELS mixture of Gaussians with k = m, "
            f"group privacy over the person's examples), with m the most any one person had (people by user id; "
            f"{most})"
        )

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
            events = [self.accounted(e) for e in rows]
            stored = self.tuning_candidates.get(name)
            most = max((self.persons.get(e.run_id, 1) for e in rows), default=1)
            if stored is not None and any(e.run_id in self.persons for e in rows):
                stored = tuple(example_event_for_person(c, most) for c in stored)  # per person, as the runs
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
            "fingerprints": list(self.fingerprints),
            "overlap": list(self.overlap),
            "examples_per_person": dict(self.persons),
            "rule": self.rule,
            "legacy": units.LEGACY_NOTE if self.legacy else None,
        }


def compose_entries(entries: Sequence[LedgerEntry], *, events: Sequence | None = None) -> Total:
    """The PLD composition of ``entries``' events (the ledger's total; also the cost of choosing among them).
    ``events``: the events to compose instead, one per entry (a user-level group's, ``DatasetLedger.accounted``)."""
    if not entries:
        return Total(0.0, None, None, 0)
    events = [e.event for e in entries] if events is None else list(events)
    non_private = tuple(e.label for e in entries if e.non_private)
    delta = max(e.delta for e in entries)
    try:
        neighboring, note = common_relation([e.neighboring for e in entries], events)
    except PrivacyError as err:
        return Total(math.inf if non_private else None, delta, None, len(entries), non_private, str(err))
    if non_private:
        note = f"non-private: {', '.join(non_private)} (no noise, or seeded randomness) makes the total infinite"
        return Total(math.inf, delta, neighboring, len(entries), non_private, note)
    epsilon = composed_epsilon(events, delta=delta, neighboring=neighboring)
    return Total(epsilon, delta, neighboring, len(entries), (), note)


class Ledger:
    """The ledger tables in ``store``'s database (its path, one connection per thread)."""

    def __init__(self, store: RunStore | None = None) -> None:
        self.store = store or RunStore()
        self._unit_key: bytes | None = None
        with self.store._conn() as c:
            c.executescript(SCHEMA)
            have = {row[1] for row in c.execute("PRAGMA table_info(ledger)")}
            for column, kind in ADDED_COLUMNS:
                if column not in have:
                    try:
                        c.execute(f"ALTER TABLE ledger ADD COLUMN {column} {kind}")
                    except Exception as err:  # noqa: BLE001 - another process added it first
                        if "duplicate column" not in str(err):
                            raise

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

    def record_run(
        self,
        *,
        run_id: str,
        name: str | None,
        prepared,
        steps: int,
        seeded: bool,
        stopped: bool = False,
        replay_of: str | None = None,
    ) -> LedgerEntry | None:
        """The row of a run that took ``steps`` steps with ``prepared`` (engine/prepare.py); None when it
        took none. The event is ``plan.dp_event(steps)``, the one ``plan.epsilon_at(steps)`` accounts; for a
        run ``stopped`` by hand, ``plan.dp_event(plan.steps)``: its full planned schedule (the note says so).
        ``replay_of``: the run this one replays (same key, same data): a copy, not counted again."""
        if steps <= 0:
            return None
        plan, cfg = prepared.plan, prepared.config
        non_private = not plan.private or seeded
        notes = []
        if seeded:
            notes.append("seeded randomness (noise_seed): anyone with the seed can replay the noise, no DP guarantee")
        elif not plan.private:
            notes.append("non-private: no noise")
        if stopped and not non_private and plan.steps > steps:
            notes.append(
                f"stopped by hand after {steps} of {plan.steps} steps: counted as its full planned schedule (the "
                "stopping step may depend on what was seen)"
            )
            steps = plan.steps
        if replay_of:
            notes.append(f"replay of {replay_of}: a copy of that release (same key, same data), not counted again")
        fingerprint, digest, key_note = self._data_names(prepared)
        notes += [n for n in (key_note, getattr(prepared, "dataset_note", None)) if n]  # a script's raw rows
        event = _non_private_event() if non_private else plan.dp_event(steps)
        entry = LedgerEntry(
            run_id=run_id,
            name=name,
            time=time.time(),
            fingerprint=fingerprint,
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
            note="; ".join(notes) or None,
            records_digest=digest,
            replay_of=replay_of,
        )
        self.record(entry)
        return entry

    def record_release(
        self,
        *,
        run_id: str,
        name: str | None,
        prepared,
        event,
        epsilon: float,
        delta: float,
        privacy_unit: str,
        neighboring: str,
        steps: int,
        accountant: str | None,
        non_private: bool,
        note: str | None = None,
    ) -> LedgerEntry:
        """The row of a release whose DP event is not one plan's (a federated run, workbench/federated/ledger.py):
        its data named by ``prepared``'s units as ``record_run`` names them, so it counts in one total with the
        runs on the same people."""
        fingerprint, digest, key_note = self._data_names(prepared)
        notes = [n for n in (note, key_note) if n]
        entry = LedgerEntry(
            run_id=run_id,
            name=name,
            time=time.time(),
            fingerprint=fingerprint,
            dataset_name=prepared.dataset_name,
            data_path=str(prepared.config.data),
            privacy_unit=privacy_unit,
            neighboring=neighboring,
            delta=delta,
            epsilon=math.inf if non_private else epsilon,
            steps=steps,
            accountant=accountant,
            dp_event=event_to_json(_non_private_event() if non_private else event),
            non_private=non_private,
            note="; ".join(notes) or None,
            records_digest=digest,
        )
        self.record(entry)
        return entry

    # -- units: which people a row trained on ------------------------------------------------------------
    def _key(self) -> bytes:
        """The home's unit key (store/ledger_units.py); its check value is stored the first time."""
        if self._unit_key is None:
            with self.store._conn() as c:
                row = c.execute("SELECT value FROM ledger_meta WHERE name='unit_key_check'").fetchone()
            key = units.unit_key(self.store.home, check=bytes(row[0]) if row else None)
            if row is None:
                with self.store._conn() as c:
                    c.execute(
                        "INSERT OR IGNORE INTO ledger_meta (name, value) VALUES ('unit_key_check', ?)",
                        (units.key_check(key),),
                    )
            self._unit_key = key
        return self._unit_key

    def _data_names(self, prepared) -> tuple[str, str | None, str | None]:
        """(fingerprint, keyed exact-records digest, a note) of ``prepared``'s data; its set of units stored.
        Without units (a caller that gives none) or without the key: the exact-records fingerprint, unlinked."""
        identities = getattr(prepared, "dataset_units", None)
        if identities is None:
            return prepared.dataset_fingerprint, None, None
        try:
            key = self._key()
        except units.UnitKeyError as err:
            return prepared.dataset_fingerprint, None, f"not linked to other runs by its units: {err}"
        blob = units.keyed_units(identities, key)
        fingerprint = units.set_fingerprint(blob, key)
        with self.store._conn() as c:
            c.execute("INSERT OR IGNORE INTO ledger_unit_sets (fingerprint, units) VALUES (?, ?)", (fingerprint, blob))
        return fingerprint, units.keyed_digest(prepared.dataset_fingerprint, key), None

    def unit_sets(self) -> dict[str, units.UnitSet]:
        """Fingerprint -> its stored set of units."""
        with self.store._conn() as c:
            rows = c.execute("SELECT fingerprint, units FROM ledger_unit_sets").fetchall()
        return {f: units.UnitSet(f, bytes(blob)) for f, blob in rows}

    def check_replay(self, run_id: str, records_digest: str, *, data: str) -> LedgerEntry:
        """Refuse (ReplayError, one message) to replay ``run_id`` on data whose exact-records digest
        (engine/fingerprint.py ``dataset_fingerprint``) is not the one it trained on: the replay reuses the run's
        key, so on a neighbouring dataset the two adapters share every noise draw and their difference cancels
        the noise. Returns the original's row."""
        from workbench.engine.randomness import ReplayError

        try:
            entry = self.get(run_id)
        except LedgerError:
            raise ReplayError(
                f"run {run_id} has no row in the privacy ledger (it took no step, or trained before the ledger "
                "existed): nothing shows which data it trained on, so it is not replayed."
            ) from None
        try:
            same = self._same_records(entry, records_digest)
        except units.UnitKeyError as err:
            raise ReplayError(f"run {run_id} cannot be checked against its data: {err}") from None
        if not same:
            raise ReplayError(
                f"refusing to replay run {entry.run_id}: {data} no longer holds the records it trained on (their "
                "fingerprint differs). A replay reuses the run's secret key, so on changed data both adapters would "
                "share every noise draw and their difference would cancel the noise. Train a new run instead."
            )
        return entry

    def trained_on(self, run_id: str, records_digest: str) -> bool | None:
        """Whether run ``run_id`` trained on the data whose exact-records digest (engine/fingerprint.py
        ``dataset_fingerprint``) is ``records_digest``; None when the ledger cannot tell (no row for the run, or the
        home's unit key is gone)."""
        try:
            return self._same_records(self.get(run_id), records_digest)
        except (LedgerError, units.UnitKeyError):
            return None

    def _same_records(self, entry: LedgerEntry, records_digest: str) -> bool:
        if entry.records_digest is None:  # a row from before units were kept: its fingerprint is the digest
            return hmac.compare_digest(entry.fingerprint, records_digest)
        return hmac.compare_digest(units.keyed_digest(records_digest, self._key()), entry.records_digest)

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

    def datasets(
        self, fingerprints: Sequence[str] | None = None, *, touching: units.UnitSet | None = None
    ) -> list[DatasetLedger]:
        """Per dataset group (runs whose units intersect; newest group first): its runs and their composed total.
        ``fingerprints`` / ``touching``: only the groups holding one of the fingerprints or sharing a unit with
        ``touching`` (either)."""
        forgotten = self._forgotten()
        by_fingerprint: dict[str, list[LedgerEntry]] = {}
        for entry in self.entries(include_forgotten=True):
            by_fingerprint.setdefault(entry.fingerprint, []).append(entry)
        sets = self.unit_sets()
        candidates = self.tuning_candidates()
        out = []
        for group in units.groups(list(by_fingerprint), sets):
            if (fingerprints is not None or touching is not None) and not (
                set(group) & set(fingerprints or ())
                or touching is not None
                and any(
                    f in sets and (sets[f].examples & touching.examples or sets[f].users & touching.users)
                    for f in group
                )
            ):
                continue
            rows = sorted((e for f in group for e in by_fingerprint[f]), key=lambda e: (e.time, e.run_id))
            out.append(_dataset(group, rows, sets, forgotten, candidates))
        return sorted(out, key=lambda d: -max(e.time for e in (*d.entries, *(e for e, _ in d.forgotten))))

    def data_units(self, identities) -> units.UnitSet:
        """The units of a dataset (``engine.fingerprint.unit_identities``) keyed as the ledger keys them."""
        blob = units.keyed_units(identities, self._key())
        return units.UnitSet(units.set_fingerprint(blob, self._key()), blob)

    def entries_for(self, run_ids: Sequence[str]) -> list[LedgerEntry]:
        """The rows of ``run_ids`` that the ledger holds (forgotten ones included: choosing still reads them)."""
        wanted = set(run_ids)
        return [e for e in self.entries(include_forgotten=True) if e.run_id in wanted]


def _dataset(group, rows, sets, forgotten, candidates) -> DatasetLedger:
    """One group's ledger: a user-level total when any run in it is user-level (module docstring)."""
    kept = tuple(e for e in rows if e.run_id not in forgotten)
    gone = tuple((e, forgotten[e.run_id]) for e in rows if e.run_id in forgotten)
    counted = [e for e in kept if not e.replay_of]  # a replay is a copy of its original's release
    unit = "user" if any(e.privacy_unit == "user" for e in counted) else rows[-1].privacy_unit
    persons: dict[str, int] = {}
    if unit == "user":
        owners = units.user_of(sets[f] for f in group if f in sets)
        persons = {
            e.run_id: sets[e.fingerprint].most_examples_per_person(owners) if e.fingerprint in sets else 1
            for e in counted
            if e.privacy_unit == "example"
        }
    named = [(next(e.dataset_name for e in rows if e.fingerprint == f) or f[:12], sets[f]) for f in group if f in sets]
    dataset = DatasetLedger(
        rows[-1].fingerprint,
        rows[-1].dataset_name,
        tuple(dict.fromkeys(e.data_path for e in rows if e.data_path)),
        unit,
        kept,
        Total(0.0, None, None, 0),
        gone,
        candidates,
        fingerprints=tuple(group),
        overlap=tuple(units.overlap_lines(named)) if len(named) > 1 else (),
        persons=persons,
        legacy=any(e.legacy for e in rows),
    )
    return replace(dataset, total=_group_total(dataset, counted))


def _group_total(dataset: DatasetLedger, counted: Sequence[LedgerEntry]) -> Total:
    """The composition of the counted runs, per person in a user-level group; None with the reason where the
    rule does not reach (module docstring)."""
    problems = []
    for e in counted:
        m = dataset.persons.get(e.run_id)
        if m is None or e.non_private:
            continue
        if e.neighboring != "add_remove":
            problems.append(
                f"{e.label} is example-level {e.neighboring}: it publishes the exact number of examples, which one "
                "person's data changes, so it has no per-person bound"
            )
        elif m > MAX_EXAMPLES_PER_PERSON:
            problems.append(
                f"a person had {m} examples in {e.label} (more than {MAX_EXAMPLES_PER_PERSON}, whose per-person "
                "mixture of Gaussians this ledger computes)"
            )
    if problems and not any(e.non_private for e in counted):
        delta = max(e.delta for e in counted)
        return Total(None, delta, None, len(counted), (), "no user-level total: " + "; ".join(problems))
    if not dataset.persons:
        return compose_entries(counted)
    events = [e.event if e.non_private else dataset.accounted(e) for e in counted]
    return compose_entries(counted, events=events)


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
