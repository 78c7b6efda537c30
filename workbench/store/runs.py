"""The run store: every run, its config, status and every event, in one SQLite database (WAL).

Writers commit each event as it arrives, so a process killed mid-run leaves every event written
before the kill.  A run still marked 'running' whose process is gone reads as 'interrupted'.
Readers (the app, other processes) open their own connections; WAL lets them read while a run
writes.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import sqlite3
import stat
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from workbench.errors import UserError
from workbench.events import (
    EvalMetrics,
    Event,
    RunEnded,
    RunStarted,
    StepMetrics,
    event_from_dict,
    stored_epsilon,
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    name TEXT,
    created REAL NOT NULL,
    updated REAL NOT NULL,
    status TEXT NOT NULL,
    reason TEXT,
    pid INTEGER,
    host TEXT,
    config TEXT NOT NULL,
    summary TEXT
);
CREATE TABLE IF NOT EXISTS events (
    run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    seq INTEGER NOT NULL,
    kind TEXT NOT NULL,
    time REAL NOT NULL,
    step INTEGER,
    payload TEXT NOT NULL,
    PRIMARY KEY (run_id, seq)
);
CREATE INDEX IF NOT EXISTS events_kind ON events(run_id, kind, seq);
"""
# Columns added after the first schema, each with its type: a store made before gains them on open (ALTER TABLE
# ... ADD COLUMN keeps every row; the new column reads NULL in the old ones).
ADDED_COLUMNS = {"owner": "TEXT"}  # owner: the workshop participant who started the run (None outside a workshop)
RUN_COLUMNS = "id, name, created, updated, status, reason, pid, host, config, summary, owner"

ACTIVE = ("running", "queued")


class RunNotFound(UserError, KeyError):
    def __str__(self) -> str:
        return f"no run with id {self.args[0]!r}. `workbench runs list` shows the stored runs."


def workbench_home() -> Path:
    return Path(os.environ.get("WORKBENCH_HOME", Path.home() / ".workbench")).expanduser()


def private_dir(path: Path) -> Path:
    """``path`` (with its parents) readable by its owner only: created 0700, an existing one tightened to 0700. The
    workbench home holds private data (uploads, telemetry, run keys, the baseline cache's data paths)."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    _tighten(path, 0o700)
    return path


def private_file(path: Path) -> Path:
    """``path`` created empty 0600 when missing, an existing one tightened to 0600 (SQLite gives the -wal and -shm
    files it creates the mode of their database).

    An existing file is never opened here: closing any descriptor of a file drops every POSIX lock this process
    holds on it, SQLite's included, and another process (a training worker, ``workbench train``, a notebook) could
    then check the database out from under this one's connections and delete its write-ahead log (a malformed
    database within seconds when the workshop's workers were first built; tests/store/test_store_processes.py)."""
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600))
    except FileExistsError:
        pass
    _tighten(path, 0o600)
    return path


def _tighten(path: Path, mode: int) -> None:
    try:
        if stat.S_IMODE(path.stat().st_mode) & 0o077:
            path.chmod(mode)
    except OSError:  # not ours to change (a home shared on purpose): leave it as it is
        pass


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6]


@dataclass(frozen=True)
class RunRecord:
    id: str
    name: str | None
    created: float
    updated: float
    status: str  # queued | running | finished | stopped | failed | interrupted
    reason: str | None
    config: dict[str, Any]
    summary: dict[str, Any] | None
    owner: str | None = None  # the workshop participant who started it (workbench app --workshop); None outside one

    @property
    def final_epsilon(self) -> float | None:
        """The epsilon the run's summary stores once it ended (inf when non-private); None while it runs or when it
        ended without a summary (killed). Every surface shows this value for an ended run, never a step event's."""
        return None if self.status in ACTIVE else stored_epsilon(self.summary)

    def to_dict(self) -> dict[str, Any]:
        owner = {"owner": self.owner} if self.owner is not None else {}  # outside a workshop: as before
        return {
            "run_id": self.id,
            "name": self.name,
            "created": self.created,
            "updated": self.updated,
            "status": self.status,
            "reason": self.reason,
            "config": self.config,
            "summary": self.summary,
            **owner,
        }


def _add_columns(conn: sqlite3.Connection) -> None:
    """The columns of ADDED_COLUMNS a store made by an earlier version lacks, added in place (rows kept)."""
    have = {row[1] for row in conn.execute("PRAGMA table_info(runs)")}
    for name, kind in ADDED_COLUMNS.items():
        if name not in have:
            try:
                conn.execute(f"ALTER TABLE runs ADD COLUMN {name} {kind}")
            except sqlite3.OperationalError as err:  # another process added it between the read and the ALTER
                if "duplicate column" not in str(err):
                    raise


def _died(status: str, pid: int | None, host: str | None) -> bool:
    """An active run whose training process (on this host) is gone: it reads as interrupted."""
    return status in ACTIVE and host == socket.gethostname() and not _pid_alive(pid)


def _pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunStore:
    """One SQLite database under ``home``; safe to share between threads (one connection each)."""

    def __init__(self, home: str | Path | None = None) -> None:
        self.home = private_dir(Path(home) if home is not None else workbench_home())
        self.path = private_file(self.home / "runs.sqlite")
        for side in ("-wal", "-shm"):  # from an older version, created 0644 with their database
            if self.path.with_name(self.path.name + side).exists():
                _tighten(self.path.with_name(self.path.name + side), 0o600)
        self._local = threading.local()
        self._seq_lock = threading.Lock()
        with self._conn() as c:
            c.executescript(SCHEMA)
            _add_columns(c)

    def run_dir(self, run_id: str) -> Path:
        return self.home / "runs" / run_id

    @contextmanager
    def _conn(self) -> Iterator[sqlite3.Connection]:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=True)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA foreign_keys=ON")
            self._local.conn = conn
        yield conn

    # -- writing -----------------------------------------------------------------------------------
    def create_run(
        self,
        run_id: str,
        *,
        config: dict[str, Any],
        name: str | None = None,
        status: str = "running",
        owner: str | None = None,
    ) -> None:
        now = time.time()
        with self._conn() as c:
            c.execute(
                "INSERT INTO runs (id, name, created, updated, status, pid, host, config, owner) "
                "VALUES (?,?,?,?,?,?,?,?,?)",
                (run_id, name, now, now, status, os.getpid(), socket.gethostname(), json.dumps(config), owner),
            )

    def set_status(self, run_id: str, status: str, *, reason: str | None = None, summary: dict | None = None) -> None:
        with self._conn() as c:
            c.execute(
                "UPDATE runs SET status=?, reason=COALESCE(?, reason), summary=COALESCE(?, summary), updated=?, pid=? WHERE id=?",
                (
                    status,
                    reason,
                    json.dumps(summary) if summary is not None else None,
                    time.time(),
                    os.getpid(),
                    run_id,
                ),
            )

    def set_owner(self, run_id: str, owner: str | None) -> None:
        """Give a run to a workshop participant (None: to no one)."""
        with self._conn() as c:
            c.execute("UPDATE runs SET owner=? WHERE id=?", (owner, run_id))

    def append(self, event: Event) -> None:
        """Write one event (committed at once)."""
        payload = json.dumps(event.to_dict())
        step = getattr(event, "step", None)
        with self._seq_lock, self._conn() as c:
            c.execute("BEGIN IMMEDIATE")
            try:
                (seq,) = c.execute(
                    "SELECT COALESCE(MAX(seq), 0) + 1 FROM events WHERE run_id=?", (event.run_id,)
                ).fetchone()
                c.execute(
                    "INSERT INTO events (run_id, seq, kind, time, step, payload) VALUES (?,?,?,?,?,?)",
                    (event.run_id, seq, event.kind, event.time, step, payload),
                )
                c.execute("UPDATE runs SET updated=? WHERE id=?", (event.time, event.run_id))
                if isinstance(event, RunEnded):
                    c.execute(
                        "UPDATE runs SET status=?, reason=?, summary=? WHERE id=?",
                        (event.status, event.reason, json.dumps(event.to_dict()["summary"]), event.run_id),
                    )
                c.execute("COMMIT")
            except BaseException:
                c.execute("ROLLBACK")
                raise

    def __call__(self, event: Event) -> None:
        """A store is a subscriber."""
        self.append(event)

    def delete(self, run_id: str) -> None:
        run = self.get(run_id)
        if run.status == "running":
            raise ValueError(f"run {run_id} is still running; stop it before deleting it.")
        with self._conn() as c:
            c.execute("DELETE FROM events WHERE run_id=?", (run_id,))
            c.execute("DELETE FROM runs WHERE id=?", (run_id,))
        shutil.rmtree(self.run_dir(run_id), ignore_errors=True)

    # -- reading -----------------------------------------------------------------------------------
    def _record(self, row) -> RunRecord:
        run_id, name, created, updated, status, reason, pid, host, config, summary, owner = row
        if _died(status, pid, host):
            status, reason = "interrupted", reason or "the training process ended without finishing the run"
        return RunRecord(
            run_id,
            name,
            created,
            updated,
            status,
            reason,
            json.loads(config),
            json.loads(summary) if summary else None,
            owner,
        )

    def get(self, run_id: str) -> RunRecord:
        with self._conn() as c:
            row = c.execute(f"SELECT {RUN_COLUMNS} FROM runs WHERE id=?", (run_id,)).fetchone()
            if row is None:
                matches = c.execute(f"SELECT {RUN_COLUMNS} FROM runs WHERE id LIKE ?", (run_id + "%",)).fetchall()
                if len(matches) != 1:
                    raise RunNotFound(run_id)
                row = matches[0]
        return self._record(row)

    def list(self, *, owner: str | None = None) -> list[RunRecord]:
        """Every run, newest first; ``owner``: only that workshop participant's."""
        where, args = ("WHERE owner=? ", (owner,)) if owner is not None else ("", ())
        with self._conn() as c:
            rows = c.execute(f"SELECT {RUN_COLUMNS} FROM runs {where}ORDER BY created DESC", args).fetchall()
        return [self._record(r) for r in rows]

    def version(self) -> str:
        """A short token that changes whenever a run is created, deleted, written to or ends (also by
        dying: a dead process's run reads as interrupted).  Pollers compare it to skip work."""
        with self._conn() as c:
            rows = c.execute("SELECT id, status, updated, pid, host FROM runs ORDER BY id").fetchall()
        state = [
            (rid, "interrupted" if _died(status, pid, host) else status, updated)
            for rid, status, updated, pid, host in rows
        ]
        return hashlib.sha1(repr(state).encode()).hexdigest()[:16]

    def events(
        self, run_id: str, *, after_seq: int = 0, kinds: tuple[str, ...] | None = None
    ) -> list[tuple[int, Event]]:
        """(seq, event) pairs after ``after_seq``; readers poll with the last seq they saw."""
        q = "SELECT seq, payload FROM events WHERE run_id=? AND seq>?"
        args: list[Any] = [run_id, after_seq]
        if kinds:
            q += f" AND kind IN ({','.join('?' * len(kinds))})"
            args += list(kinds)
        with self._conn() as c:
            rows = c.execute(q + " ORDER BY seq", args).fetchall()
        return [(seq, event_from_dict(json.loads(p))) for seq, p in rows]

    def latest(self, run_id: str, kind: str) -> Event | None:
        with self._conn() as c:
            row = c.execute(
                "SELECT payload FROM events WHERE run_id=? AND kind=? ORDER BY seq DESC LIMIT 1", (run_id, kind)
            ).fetchone()
        return event_from_dict(json.loads(row[0])) if row else None

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None


__all__ = [
    "RunStore",
    "RunRecord",
    "RunNotFound",
    "workbench_home",
    "private_dir",
    "private_file",
    "new_run_id",
    "RunStarted",
    "StepMetrics",
    "EvalMetrics",
]
