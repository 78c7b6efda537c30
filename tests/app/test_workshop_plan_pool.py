"""Workshop mode's Plan tab in worker processes (app/plan_pool.py, issue 31): the answer comes from a worker and
equals the in-process one, a repeated request is answered from the cache, a plan error reads as in process, a
failed pool falls back to the process, and closing the app stops the workers."""

from __future__ import annotations

import os
import signal
import time

import pytest
from conftest import app_values as values
from test_workshop_queue import FakeSession

from workbench.app import plan as plan_tab
from workbench.app.plan_pool import PlanPool
from workbench.app.state import AppContext
from workbench.app.workshop import Workshop
from workbench.store.runs import RunStore

gr = pytest.importorskip("gradio")


@pytest.fixture
def room(_workbench_home, tmp_path):
    store = RunStore(_workbench_home)
    people = tmp_path / "people.csv"
    people.write_text("name,password,role\nteacher,t-pass,instructor\nann,a-pass\n")
    w = Workshop.from_options(store, session_factory=FakeSession, participants_file=str(people))
    w.plan_pool = PlanPool(workers=1)
    ctx = AppContext(store)
    ctx.workshop = w
    yield ctx
    w.close()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _same(a: tuple, b: tuple) -> None:
    assert (a[0], a[2], a[3]) == (b[0], b[2], b[3])
    assert a[1] == b[1]  # plotly's figure equality: the same traces and layout


def test_the_workshop_plan_comes_from_a_worker_equals_the_in_process_one_and_is_cached(room, monkeypatch):
    ctx, pool = room, room.workshop.plan_pool
    asked = values(max_steps=137, batch_size=16)
    expected = plan_tab.update_plan(ctx, asked)
    assert not expected[3] and "σ" in expected[2]

    def in_process(*args, **kwargs):
        raise AssertionError("computed in the app's process")

    monkeypatch.setattr(plan_tab, "plan_updates", in_process)  # the worker process is not patched
    monkeypatch.setattr(plan_tab, "plan_updates_for", in_process)
    answers = [u for u in plan_tab.pooled_updates(ctx, pool, asked, "ann") if u is not None]
    assert pool.processes(), "no worker process was started"
    _same(answers[-1], expected)
    assert len(answers) in (1, 2)  # the first (RDP) answer when it came before the complete one
    started = time.perf_counter()
    again = list(plan_tab.pooled_updates(ctx, pool, dict(asked), "ann"))
    assert time.perf_counter() - started < 0.05 and again == [answers[-1]]  # the cache, no worker


def test_a_plan_error_reads_as_in_process_and_a_failed_pool_answers_in_process(room):
    ctx, pool = room, room.workshop.plan_pool
    bad = values(delta=1.5)
    routed = plan_tab.route_error(plan_tab.update_plan(ctx, bad))
    pooled = [u for u in plan_tab.pooled_updates(ctx, pool, bad, "ann") if u is not None][-1]
    assert "delta" in "".join(routed[3:]) and plan_tab.route_error(pooled)[2:] == routed[2:]
    for pid in pool.processes():
        os.kill(pid, signal.SIGKILL)
    time.sleep(0.5)
    asked = values(max_steps=91)
    answer = [u for u in plan_tab.pooled_updates(ctx, pool, asked, "ann") if u is not None][-1]
    _same(answer, plan_tab.update_plan(ctx, asked))


def test_closing_the_app_stops_the_plan_workers(room):
    from workbench.app import build_app

    w = room.workshop
    app = build_app(room.store, workshop=w)
    assert w.plan_pool.submit(plan_tab.plan_answer, values(max_steps=50), {}, True).result(timeout=120)
    pids = w.plan_pool.processes()
    assert pids and all(_alive(p) for p in pids)
    app.close()
    assert w.plan_pool.closed and not w.plan_pool.processes()
    deadline = time.time() + 10
    while any(_alive(p) for p in pids) and time.time() < deadline:
        time.sleep(0.1)
    assert not any(_alive(p) for p in pids)
    answer = [u for u in plan_tab.pooled_updates(room, w.plan_pool, values(max_steps=50), "ann") if u]
    assert answer and not answer[-1][3]  # after the close: computed in process, as outside a workshop


def _answer(values, defaults, first):
    """A stand-in plan (module level: the spawned worker imports it by name)."""
    time.sleep(0.2)
    return ("data", None, f"{values['n']}-{'first' if first else 'complete'}", "")


def test_requests_for_the_same_settings_share_one_computation_and_first_answers_go_first():
    from workbench.app.plan_pool import BACKGROUND

    pool = PlanPool(workers=1)
    try:
        order = []
        blocker = pool.submit(time.sleep, 1.0, priority=BACKGROUND)  # the one worker is busy meanwhile
        blocker.add_done_callback(lambda f: order.append("blocker"))
        a = pool.answer("a", _answer, {"n": 1}, {})
        assert pool.answer("a", _answer, {"n": 1}, {}) == a  # a second participant asking the same: shared
        b = pool.answer("b", _answer, {"n": 2}, {})
        gone = pool.answer("c", _answer, {"n": 3}, {})
        pool.leave("c")  # nobody waits for c any more: its jobs, not started, are dropped
        for name, (first, full) in {"a": a, "b": b}.items():
            first.add_done_callback(lambda f, n=name: order.append(f"{n} first"))
            full.add_done_callback(lambda f, n=name: order.append(f"{n} complete"))
        assert b[1].result(timeout=120)[2] == "2-complete" and a[0].result()[2] == "1-first"
        assert order == ["blocker", "a first", "b first", "a complete", "b complete"]
        assert gone[0].cancelled() and gone[1].cancelled()
        assert pool.stats()["shared"] == 1 and pool.stats()["jobs"] == 7
        assert pool.cached("a") == a[1].result()  # the complete answer is kept
    finally:
        pool.close()


def test_the_server_plans_the_likely_settings_before_the_room_asks(room, monkeypatch):
    ctx, pool = room, room.workshop.plan_pool
    opening = values(max_steps=37, batch_size=16)
    likely = plan_tab.warm_values(opening)
    assert likely[0] == opening and {v["batch_size"] for v in likely} >= {8, 16, 32, 64, 128}
    assert {v["target_epsilon"] for v in likely} >= {2.0, 4.0, 8.0}
    assert plan_tab.warm_plans(ctx, likely[:1]) == 1 and pool.wait_warm(300)
    expected = plan_tab.update_plan(ctx, opening)

    def computed(*args, **kwargs):
        raise AssertionError("computed again")

    monkeypatch.setattr(pool, "submit", computed)
    answer = list(plan_tab.pooled_updates(ctx, pool, dict(opening, batch_size=16.0), "ann"))  # 16.0: the same
    assert len(answer) == 1
    _same(answer[0], expected)
