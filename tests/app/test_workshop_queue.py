"""The workshop's fair queue (workbench/running/queue.py) and the store's owner column: fast, no browser, no training.

A stand-in session does what a real one does with the queue's gate (waits on it, "trains" until the test ends it,
stores its end); the order runs start in is read from the gate being opened, so the tests check the scheduling
itself."""

from __future__ import annotations

import sqlite3
import threading
import time

import pytest

from workbench.config import RunConfig
from workbench.events import RunEnded
from workbench.running.queue import FairQueue, QueueError, QueueLimitError, ordinal, wait_text
from workbench.store.runs import RunStore, new_run_id


class FakeSession:
    """A session that trains until ``finish()``: it stores itself queued with its owner, waits on the queue's gate,
    and on finish emits RunEnded as a real one does."""

    started_order: list[str] = []

    def __init__(self, config, *, store, owner, name=None, device_lock):
        self.config, self.store, self.owner, self.gate = config, store, owner, device_lock
        self.run_id = new_run_id() + f"-{owner}"
        self.status = "created"
        self._subs = []
        self._stop = threading.Event()
        self._finish = threading.Event()

    def subscribe(self, fn):
        self._subs.append(fn)

    def start(self):
        self.store.create_run(self.run_id, config=self.config.to_dict(), status="queued", owner=self.owner)
        self.status = "queued"
        threading.Thread(target=self._run, daemon=True).start()
        return self.run_id

    def stop(self):
        self._stop.set()
        self._finish.set()

    def finish(self):
        self._finish.set()

    def _run(self):
        while not self.gate.acquire(timeout=0.01):
            if self._stop.is_set():
                return self._end("stopped", {})
        FakeSession.started_order.append(self.run_id)
        self.status = "running"
        self.store.set_status(self.run_id, "running")
        self._finish.wait()
        self._end("stopped" if self._stop.is_set() else "finished", {"steps": 10, "wall_time": 20.0})
        self.gate.release()

    def _end(self, status, summary):
        self.status = status
        event = RunEnded(run_id=self.run_id, status=status, reason="", summary=summary)
        self.store.append(event)
        for fn in self._subs:
            fn(event)


@pytest.fixture
def queue(tmp_path):
    FakeSession.started_order = []
    q = FairQueue(RunStore(tmp_path), slots=1, max_queued=3, session_factory=FakeSession)
    yield q
    for job in list(q.snapshot()):
        q.cancel(job.run_id)


def _submit(q, owner, steps=10):
    run_id = q.submit(RunConfig(model="tiny", max_steps=steps), owner=owner)
    return run_id


def _finish(q, run_id):
    q._jobs[run_id].session.finish()  # noqa: SLF001 - the stand-in's hand


def _wait_started(n, timeout=5.0):
    end = time.monotonic() + timeout
    while len(FakeSession.started_order) < n and time.monotonic() < end:
        time.sleep(0.01)
    assert len(FakeSession.started_order) >= n, FakeSession.started_order


def test_round_robin_not_first_come_first_served(queue):
    a1 = _submit(queue, "ann")
    a2, a3 = _submit(queue, "ann"), _submit(queue, "ann")
    b1 = _submit(queue, "bob")
    c1 = _submit(queue, "cy")
    b2 = _submit(queue, "bob")
    _wait_started(1)
    queued = [q.run_id for q in queue.snapshot() if q.status == "queued"]
    # everyone's first run before anyone's second, then the seconds, in arrival order within a round
    assert queued == [b1, c1, a2, b2, a3]
    for expected in [a1, b1, c1, a2, b2, a3]:
        _wait_started(len(FakeSession.started_order))
        assert FakeSession.started_order[-1] == expected
        _finish(queue, expected)
        if expected != a3:
            _wait_started(len(FakeSession.started_order) + 1)
    assert queue.wait_idle(5)
    # every run is stored with its owner and ended status
    stored = {r.id: r for r in queue.store.list()}
    assert {stored[r].owner for r in (a1, a2, a3)} == {"ann"} and stored[c1].owner == "cy"
    assert all(r.status == "finished" for r in stored.values())


def test_positions_and_estimates(queue):
    a1 = _submit(queue, "ann", steps=30)
    _wait_started(1)
    b1, c1 = _submit(queue, "bob", steps=60), _submit(queue, "cy", steps=60)
    snap = {q.run_id: q for q in queue.snapshot()}
    assert snap[a1].status == "running" and snap[a1].position == 0
    assert (snap[b1].position, snap[c1].position) == (1, 2)
    # the prior (1 s a step): b1 waits for a1's 30 steps, c1 for a1's and b1's
    assert snap[b1].wait_s == pytest.approx(30, abs=2) and snap[c1].wait_s == pytest.approx(90, abs=2)
    _finish(queue, a1)  # 10 steps in 20 s: 2 s a step from now on
    _wait_started(2)
    snap = {q.run_id: q for q in queue.snapshot()}
    assert snap[c1].position == 1 and snap[c1].wait_s == pytest.approx(120, abs=3)
    assert wait_text(3, 240) == "3rd in line, about 4 min" and wait_text(1, 20) == "1st in line, under a minute"
    assert [ordinal(n) for n in (1, 2, 3, 4, 11, 12, 13, 21, 22)] == [
        "1st", "2nd", "3rd", "4th", "11th", "12th", "13th", "21st", "22nd"
    ]  # fmt: skip


def test_two_slots_run_two_at_once(tmp_path):
    FakeSession.started_order = []
    q = FairQueue(RunStore(tmp_path), slots=2, max_queued=2, session_factory=FakeSession, cores=2)
    a, b, c = _submit(q, "ann"), _submit(q, "bob"), _submit(q, "cy")
    _wait_started(2)
    snap = {s.run_id: s for s in q.snapshot()}
    assert [snap[r].status for r in (a, b, c)] == ["running", "running", "queued"]
    assert q.threads_per_slot == 1
    for r in (a, b, c):
        _finish(q, r)
        time.sleep(0.05)
    assert q.wait_idle(5)


def test_limit_pause_move_cancel_and_ended_runs(queue):
    a1 = _submit(queue, "ann")
    _wait_started(1)
    a2, a3, a4 = _submit(queue, "ann"), _submit(queue, "ann"), _submit(queue, "ann")
    before = len(queue.store.list())
    with pytest.raises(QueueLimitError, match="ann already has 3 run"):
        _submit(queue, "ann")
    assert len(queue.store.list()) == before  # refused: nothing stored
    b1 = _submit(queue, "bob")
    queue.pause()
    queue.move(a4, 1)
    assert [q.run_id for q in queue.snapshot() if q.status == "queued"][0] == a4
    message = queue.cancel(a3)
    assert "before it started" in message
    _finish(queue, a1)
    time.sleep(0.2)
    assert FakeSession.started_order == [a1]  # paused: nothing else starts
    queue.resume()
    _wait_started(2)
    assert FakeSession.started_order[1] == a4
    assert queue.store.get(a3).status == "stopped"  # cancelled, kept
    with pytest.raises(QueueError, match=r"already ended \(finished\).*stays stored"):
        queue.cancel(a1)
    with pytest.raises(QueueError, match="already ended"):
        queue.move(a3, 1)
    with pytest.raises(QueueError, match="not in this workshop's queue"):
        queue.cancel("no-such-run")
    for r in (a4, a2, b1):
        _finish(queue, r)
        time.sleep(0.05)
    assert queue.wait_idle(5)


def test_store_gains_the_owner_column_and_keeps_old_runs(tmp_path):
    old = sqlite3.connect(tmp_path / "runs.sqlite")
    old.executescript(
        "CREATE TABLE runs (id TEXT PRIMARY KEY, name TEXT, created REAL NOT NULL, updated REAL NOT NULL, "
        "status TEXT NOT NULL, reason TEXT, pid INTEGER, host TEXT, config TEXT NOT NULL, summary TEXT);"
        "INSERT INTO runs VALUES ('old-run', 'kept', 1.0, 2.0, 'finished', NULL, 1, 'elsewhere', '{}', '{\"epsilon\": 3}');"
    )
    old.commit()
    old.close()
    store = RunStore(tmp_path)
    rec = store.get("old-run")
    assert (rec.name, rec.status, rec.summary, rec.owner) == ("kept", "finished", {"epsilon": 3}, None)
    assert "owner" not in rec.to_dict()  # outside a workshop, as before
    store.create_run("new-run", config={}, owner="ann", status="finished")
    assert [r.id for r in store.list(owner="ann")] == ["new-run"]
    assert {r.id for r in store.list()} == {"old-run", "new-run"}
    RunStore(tmp_path)  # opening again adds nothing twice
