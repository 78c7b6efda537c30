"""The run store shared by processes (the workshop's training workers write runs the server reads and writes).

Found when the workshop's training moved into worker processes (training_pool.py): the store's constructor opened
and closed the database file to create it 0600, which drops every POSIX lock the process holds on that file,
SQLite's included. Another process whose last connection closed then found the database unused, checkpointed it and
deleted the write-ahead log under the first process's open connections: "database disk image is malformed" within
seconds. These tests fail on that constructor.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import sqlite3
import time

from workbench.store.runs import RunStore, private_file


def _writer(home: str, seconds: float, run_id: str) -> None:
    """A second process that opens the store, writes and closes it again, over and over (as each run's worker and
    each `workbench train` does)."""
    end = time.time() + seconds
    while time.time() < end:
        store = RunStore(home)
        with store._conn() as c:
            c.execute("BEGIN IMMEDIATE")
            c.execute("UPDATE runs SET updated=? WHERE id=?", (time.time(), run_id))
            c.execute("COMMIT")
        store.list()
        store.close()


def test_two_processes_opening_the_store_keep_it_whole(tmp_path):
    store = RunStore(tmp_path)
    store.create_run("r1", config={}, name="shared", status="queued")
    other = mp.get_context("spawn").Process(target=_writer, args=(str(tmp_path), 3.0, "r1"))
    other.start()
    end, writes = time.time() + 3.0, 0
    try:
        while time.time() < end:
            again = RunStore(tmp_path)  # another store object in this process while its connection stays open
            with store._conn() as c:
                c.execute("BEGIN IMMEDIATE")
                c.execute("UPDATE runs SET updated=? WHERE id=?", (time.time(), "r1"))
                c.execute("COMMIT")
            store.list()
            again.close()
            writes += 1
    finally:
        other.join(30)
    assert other.exitcode == 0
    assert writes > 10
    db = sqlite3.connect(tmp_path / "runs.sqlite")
    assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    assert store.get("r1").name == "shared"


def test_an_existing_store_file_is_not_opened_again(tmp_path, monkeypatch):
    """The mechanism: private_file creates a missing file but never opens an existing one (a close would drop the
    process's locks on it)."""
    path = tmp_path / "runs.sqlite"
    private_file(path)
    assert path.exists() and (path.stat().st_mode & 0o777) == 0o600
    opened = []
    real_open = os.open

    def recording_open(p, *args, **kwargs):
        fd = real_open(p, *args, **kwargs)  # an open that fails (O_EXCL on an existing file) holds nothing
        opened.append(p)
        return fd

    monkeypatch.setattr(os, "open", recording_open)
    private_file(path)
    assert opened == []
