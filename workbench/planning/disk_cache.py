"""A persistent cache of accounting results that took seconds: calibrated sigmas and user-level epsilons.

Both are pure functions of public inputs (the target, q, T, delta, the relation, the accountant, k) and return public
numbers, so they may be kept on disk: a workshop's plan workers share them (each worker process has its own
in-memory caches) and a server started again finds them. Off until ``use(path)`` names a file (the workshop's plan
workers do; nothing else does). Every key carries ``VERSION`` and dp_accounting's version, so a change of either
never serves an old value; a cached sigma is still checked against the exact accountant by its caller
(``Mechanism.calibrated``) before it is used. SQLite (the standard library's), one small table; a cache that
cannot be read or written is simply not used.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path

VERSION = 1  # raise when what is cached would change for the same inputs (the calibration's or the grid's rule)

_path: Path | None = None
_lock = threading.Lock()


def use(path: str | Path | None) -> None:
    """Keep results in the SQLite file ``path`` (None: off)."""
    global _path
    _path = Path(path) if path else None
    if _path is not None:
        try:
            _path.parent.mkdir(parents=True, exist_ok=True)
            _run("CREATE TABLE IF NOT EXISTS results (key TEXT PRIMARY KEY, value REAL NOT NULL)", ())
        except (OSError, sqlite3.Error):
            _path = None


def _run(sql: str, params: tuple) -> tuple | None:
    """One statement in its own connection (committed, closed); its first row."""
    with _lock:
        db = sqlite3.connect(_path, timeout=5)
        try:
            with db:
                return db.execute(sql, params).fetchone()
        finally:
            db.close()


def _key(kind: str, inputs: tuple) -> str:
    import dp_accounting

    return json.dumps([kind, VERSION, getattr(dp_accounting, "__version__", "?"), *inputs])


def get(kind: str, inputs: tuple) -> float | None:
    """The value kept for ``kind`` at ``inputs``, or None (off, not kept, or unreadable)."""
    if _path is None:
        return None
    try:
        row = _run("SELECT value FROM results WHERE key = ?", (_key(kind, inputs),))
    except sqlite3.Error:
        return None
    return None if row is None else float(row[0])


def put(kind: str, inputs: tuple, value: float) -> None:
    """Keep ``value`` for ``kind`` at ``inputs`` (nothing when off or unwritable)."""
    if _path is None:
        return
    try:
        _run("INSERT OR REPLACE INTO results (key, value) VALUES (?, ?)", (_key(kind, inputs), float(value)))
    except sqlite3.Error:
        pass
