"""The workshop's training workers (workbench/training_pool.py): queued runs train in a worker process started once,
their events are stored once and reach the server's subscribers, Stop reaches the worker, and a worker that dies
ends its run 'failed' with a message and is replaced. Tiny model; each test starts one worker (a few seconds)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time

import pytest
from factories import TINY_RUN

from workbench.config import RunConfig
from workbench.events import RunEnded, StepMetrics
from workbench.running.queue import FairQueue
from workbench.store.runs import ACTIVE, RunStore
from workbench.training_pool import SERVER_NICE, TrainingPool

TINY = dict(TINY_RUN, max_seq_len=64, eval_every=1000, baseline_eval=False)  # one evaluation, at the end


@pytest.fixture
def pooled(_workbench_home):
    store = RunStore(_workbench_home)
    pool = TrainingPool(store.home)
    queue = FairQueue(store, session_factory=pool)
    assert pool.wait_ready(120), "the worker did not import the engine within 2 minutes"
    yield store, pool, queue
    pool.close()


def _ended(store, run_id, timeout=120.0):
    end = time.monotonic() + timeout
    while store.get(run_id).status in ACTIVE:
        assert time.monotonic() < end, f"run {run_id} still {store.get(run_id).status} after {timeout} s"
        time.sleep(0.05)
    return store.get(run_id)


def test_a_queued_run_trains_in_the_worker_and_its_events_reach_the_server_once(pooled):
    store, pool, queue = pooled
    config = RunConfig().with_overrides({**TINY, "max_steps": 5})
    first = queue.submit(config, owner="ann")
    second = queue.submit(config, owner="bob")
    seen: list = []
    queue.session(second).subscribe(seen.append)
    for run_id in (first, second):
        record = _ended(store, run_id)
        assert record.status == "finished", record.reason
        assert record.owner in ("ann", "bob")
    session = queue.session(second)
    assert session.wait(30) is not None and session.status == "finished"
    assert [e.step for e in seen if isinstance(e, StepMetrics)] == [1, 2, 3, 4, 5]
    assert isinstance(seen[-1], RunEnded) and seen[-1].summary["steps"] == 5
    stored = [e for _, e in store.events(second)]
    assert [e.kind for e in stored] == [e.kind for e in session.events]  # stored by the worker, not twice
    assert session.summary["epsilon"] == pytest.approx(store.get(second).summary["epsilon"])
    pids = pool.processes()
    assert len(pids) == 1 and pids[0] != os.getpid()


def test_stop_reaches_the_worker_and_a_run_stopped_while_it_waits_never_trains(pooled):
    store, pool, queue = pooled
    long = queue.submit(RunConfig().with_overrides({**TINY, "max_steps": 100_000}), owner="ann")
    waiting = queue.submit(RunConfig().with_overrides({**TINY, "max_steps": 5}), owner="bob")
    stepped = threading.Event()
    queue.session(long).subscribe(lambda e: stepped.set() if isinstance(e, StepMetrics) else None)
    assert stepped.wait(120)
    queue.cancel(waiting)
    asked = time.monotonic()
    queue.cancel(long)
    record = _ended(store, long, timeout=30)
    assert time.monotonic() - asked < 10
    assert record.status == "stopped" and "stopped" in record.reason
    assert _ended(store, waiting).reason == "stopped before it started"
    assert not [e for _, e in store.events(waiting) if isinstance(e, StepMetrics)]


def test_a_worker_that_dies_ends_its_run_failed_and_the_next_run_gets_a_new_worker(pooled):
    store, pool, queue = pooled
    doomed = queue.submit(RunConfig().with_overrides({**TINY, "max_steps": 100_000}), owner="ann")
    stepped = threading.Event()
    queue.session(doomed).subscribe(lambda e: stepped.set() if isinstance(e, StepMetrics) else None)
    assert stepped.wait(120)
    (pid,) = pool.processes()
    os.kill(pid, 9)
    record = _ended(store, doomed, timeout=30)
    assert record.status == "failed"
    assert "training process stopped unexpectedly" in record.reason and "Start the run again" in record.reason
    assert [e for _, e in store.events(doomed) if isinstance(e, StepMetrics)]  # what it stored is kept
    after = queue.submit(RunConfig().with_overrides({**TINY, "max_steps": 3}), owner="bob")
    assert _ended(store, after).status == "finished"
    assert pool.processes() != [pid]


def test_the_server_yields_the_cores_to_a_worker_started_before(tmp_path):
    """yield_to_training lowers every thread of the server (and the threads it starts later) and leaves the
    worker at the priority it started with. In a child interpreter: a lowered priority cannot be raised again."""
    code = textwrap.dedent(
        f"""
        import os, threading
        from workbench.training_pool import TrainingPool
        if __name__ == "__main__":
            pool = TrainingPool({str(tmp_path)!r})
            before = os.getpriority(os.PRIO_PROCESS, pool.processes()[0])
            assert pool.yield_to_training()
            later = []
            t = threading.Thread(target=lambda: later.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id())))
            t.start(); t.join()
            print(before, os.getpriority(os.PRIO_PROCESS, threading.get_native_id()), later[0],
                  os.getpriority(os.PRIO_PROCESS, pool.processes()[0]))
            pool.close()
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-2000:]
    before, server, new_thread, worker = map(int, out.stdout.split()[-4:])
    assert worker == before
    assert server == new_thread == min(19, before + SERVER_NICE)
