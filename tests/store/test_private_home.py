"""The workbench home holds private data (uploads, telemetry, run keys, the baseline cache with the data's absolute
paths): another user of the machine must not read it. The home is 0700, the files the store writes 0600, and a home
an older version left world-readable is tightened (issue 26, item 7)."""

from __future__ import annotations

import os
import sqlite3
import stat

import pytest
from factories import fake_run

from workbench.engine.baseline import CACHE_FILE, untuned_metrics
from workbench.store.runs import RunStore


@pytest.fixture
def usual_umask():
    old = os.umask(0o022)  # the usual one: files 0644, folders 0755 unless asked otherwise
    yield
    os.umask(old)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_the_home_and_the_files_the_store_writes_are_the_owners_only(tmp_path, usual_umask):
    home = tmp_path / "home"
    store = RunStore(home)
    fake_run(store, "20250101-000000-aaaaaa")  # writes through the WAL
    untuned_metrics("k", lambda: {"val_loss": 1.0}, cache=home / CACHE_FILE, about={"data": str(tmp_path / "d.jsonl")})
    assert mode(home) == 0o700
    files = [home / "runs.sqlite", home / "runs.sqlite-wal", home / "runs.sqlite-shm", home / CACHE_FILE]
    assert {f.name: mode(f) for f in files if f.exists()} == {f.name: 0o600 for f in files if f.exists()}
    assert (home / "runs.sqlite-wal").exists() and (home / CACHE_FILE).exists()


def test_a_world_readable_home_from_an_older_version_is_tightened(tmp_path, usual_umask):
    home = tmp_path / "old"
    home.mkdir(mode=0o755)
    sqlite3.connect(home / "runs.sqlite").execute("CREATE TABLE t (x)").connection.close()  # 0644, as SQLite makes it
    (home / CACHE_FILE).write_text("{}")
    assert mode(home) == 0o755 and mode(home / "runs.sqlite") == 0o644
    RunStore(home)
    untuned_metrics("k", lambda: {"val_loss": 1.0}, cache=home / CACHE_FILE, about={})
    assert (mode(home), mode(home / "runs.sqlite"), mode(home / CACHE_FILE)) == (0o700, 0o600, 0o600)
