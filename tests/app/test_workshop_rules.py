"""The workshop's access rules called directly (no server, no browser, no training): each app function that acts on a
run refuses another participant's run with one message and leaves it as it was; the instructor is served; the
participants file and the join code's messages; a participant's data and uploads; the class view's numbers.
(test_workshop_http.py asks the same through every HTTP route.)"""

from __future__ import annotations

import pytest
from factories import fake_run
from test_workshop_queue import FakeSession

from workbench.app import compare as compare_tab
from workbench.app import live, runs, train
from workbench.app.state import AppContext, Selection
from workbench.app.workshop import (
    JoinError,
    RunNotYours,
    Workshop,
    WorkshopError,
    best_at,
    class_points,
    read_participants,
)
from workbench.store.runs import RunStore

REFUSED = "among your runs"


@pytest.fixture
def room(_workbench_home, tmp_path):
    store = RunStore(_workbench_home)
    people = tmp_path / "people.csv"
    people.write_text("name,password,role\nteacher,t-pass,instructor\nann,a-pass\nbob,b-pass\n")
    w = Workshop.from_options(
        store, session_factory=FakeSession, participants_file=str(people), join_code="ROOM42", max_queued=1
    )
    ctx = AppContext(store)
    ctx.workshop = w
    for run_id, owner, acc, eps in (("ann-1", "ann", 0.8, 0.1), ("ann-2", "ann", 0.6, 0.5), ("bob-1", "bob", 0.7, 0.2)):
        fake_run(store, run_id, steps=10, accuracy=acc, eps_per_step=eps)
        store.set_owner(run_id, owner)
    yield ctx
    for q in w.queue.snapshot():
        w.queue.cancel(q.run_id)


def test_a_participant_is_refused_another_participants_run_everywhere(room):
    ctx = room
    assert [r.id for r in ctx.runs("bob")] == ["bob-1"]
    assert {r.id for r in ctx.runs("teacher")} == {"ann-1", "ann-2", "bob-1"}
    assert REFUSED in runs.delete_run(ctx, "ann-1", "bob")
    assert REFUSED in runs.export_zip(ctx, "ann-1", "bob")[1] and runs.export_zip(ctx, "ann-1", "bob")[0] is None
    assert REFUSED in runs.evaluate_stored(ctx, "ann-1", "bob")
    assert REFUSED in train.stop_run(ctx, Selection("ann-1", follow=False), "bob")
    assert compare_tab.open_run(ctx, "ann-1", "bob")[0] is None
    with pytest.raises(RunNotYours, match=REFUSED):
        compare_tab.expand(ctx, ["bob-1", "ann-1"], "bob")
    assert "ann-1" not in str(runs.list_runs(ctx, "bob")) and "bob-1" in str(runs.list_runs(ctx, "bob"))
    shown = live.update(ctx, "ann-1", after=0, follow=False, user="bob")
    assert REFUSED in shown["header"] and not shown["steps"]
    followed = live.update(ctx, None, after=0, follow=True, user="bob")  # a following page: bob's newest run
    assert followed["run"] == "bob-1"
    # a run that does not exist reads the same to a participant: its existence is not confirmed
    assert REFUSED in runs.delete_run(ctx, "no-such-run", "bob")
    assert ctx.store.get("ann-1").status == "finished"  # nothing lost
    # the owner and the instructor are served
    assert live.update(ctx, "ann-1", after=0, follow=False, user="ann")["steps"]
    assert compare_tab.expand(ctx, ["ann-1", "bob-1"], "teacher") == ["ann-1", "bob-1"]
    assert runs.delete_run(ctx, "ann-2", "teacher") == "Deleted run `ann-2`."
    # outside a workshop, everything as before
    plain = AppContext(ctx.store)
    assert {r.id for r in plain.runs()} == {"ann-1", "bob-1"}
    assert live.update(plain, "ann-1", after=0, follow=False)["steps"]


def test_data_and_uploads_are_each_participants_own(room, tmp_path):
    ctx, w = room, room.workshop
    own = w.uploads_dir("ann") / "abc-mine.csv"
    own.parent.mkdir(parents=True)
    own.write_text("text,label\nx,y\n")
    other = w.uploads_dir("bob") / "abc-his.csv"
    other.parent.mkdir(parents=True)
    other.write_text("text,label\nx,y\n")
    ctx.check_data("ann", str(own))
    ctx.check_data("ann", "demo")
    ctx.check_data("ann", "ag_news")  # a dataset name
    for source in (str(other), str(tmp_path / "people.csv"), "/etc/passwd", str(ctx.store.home / "uploads" / "x")):
        with pytest.raises(WorkshopError, match="files of the server's are not open to participants"):
            ctx.check_data("ann", source)
    ctx.check_data("teacher", str(other))  # the instructor may
    assert ctx.uploads_for("ann") == ctx.store.home / "uploads" / "ann"


def test_start_goes_through_the_queue_and_says_the_limit(room):
    ctx = room
    from conftest import app_values

    sel, first = train.start_run(ctx, Selection(), app_values(max_steps=5), "ann")
    assert "Started run" in first, first
    sel2, second = train.start_run(ctx, Selection(), app_values(max_steps=5), "ann")
    assert "**queued**: 1st in line" in second, second
    before = len(ctx.store.list())
    _, third = train.start_run(ctx, Selection(), app_values(max_steps=5), "ann")
    assert "ann already has 1 run(s) waiting" in third and len(ctx.store.list()) == before
    _, theirs = train.start_run(ctx, Selection(), app_values(data_mode="path", data_path="/etc/passwd"), "bob")
    assert "not open to participants" in theirs
    ann_file = str(ctx.workshop.uploads_dir("ann") / "abc-x.csv")
    _, validation = train.start_run(ctx, Selection(), app_values(validation_data=ann_file), "bob")
    assert "not open to participants" in validation
    assert ctx.store.get(sel.run_id).owner == "ann" and ctx.store.get(sel2.run_id).owner == "ann"


def test_participants_file_and_join_messages(tmp_path, _workbench_home):
    bad = tmp_path / "bad.csv"
    bad.write_text("who,secret\nann,x\n")
    with pytest.raises(WorkshopError, match="header line 'name,password,role'"):
        read_participants(bad)
    twice = tmp_path / "twice.csv"
    twice.write_text("name,password\nann,x\nann,y\n")
    with pytest.raises(WorkshopError, match="line 3: the name 'ann' appears twice"):
        read_participants(twice)
    store = RunStore(_workbench_home)
    with pytest.raises(WorkshopError, match="needs an instructor login"):
        Workshop.from_options(store, session_factory=FakeSession, join_code="C")
    w = Workshop.from_options(store, session_factory=FakeSession, join_code="C", instructor="teach:pw")
    with pytest.raises(JoinError, match="join code is not this workshop's"):
        w.join("ann", "pass", "wrong")
    assert "Welcome, ann" in w.join("ann", "pass", "C")
    with pytest.raises(JoinError, match="the name 'ann' is taken"):
        w.join("ann", "other", "C")
    with pytest.raises(JoinError, match="the name 'teach' is taken"):
        w.join("teach", "other", "C")
    assert w.auth("ann", "pass") and not w.auth("ann", "other") and w.auth("teach", "pw")
    again = Workshop.from_options(store, session_factory=FakeSession, join_code="C", instructor="teach:pw")
    assert again.auth("ann", "pass")  # kept across a restart (hashed), so the name stays hers
    assert "pass" not in (store.home / "workshop-participants.json").read_text()


def test_class_view_numbers(room):
    ctx = room
    points, metric = class_points(ctx, _dataset(ctx))
    assert metric == "accuracy"
    # the fake runs: ann-1 eps 1.0 acc 0.8, ann-2 eps 5.0 acc 0.6, bob-1 eps 2.0 acc 0.7
    best = best_at(points, 2.0, metric)
    assert best is not None and best.run_id == "ann-1"
    assert best_at(points, 0.5, metric) is None


def _dataset(ctx):
    class Entries:  # the fake runs have no ledger rows: a dataset of all of them
        entries = [type("E", (), {"run_id": r.id})() for r in ctx.store.list()]

    return Entries()


def test_the_app_commands_workshop_flags_say_what_is_missing(_workbench_home):
    from typer.testing import CliRunner

    from workbench.cli.main import app

    runner = CliRunner()
    out = runner.invoke(app, ["app", "--workshop"])
    assert out.exit_code != 0 and "--participants-file FILE, --join-code CODE, or both" in out.output
    out = runner.invoke(app, ["app", "--workshop", "--join-code", "C"])
    assert out.exit_code != 0 and "needs an instructor login" in out.output
    out = runner.invoke(app, ["app", "--join-code", "C"])
    assert out.exit_code != 0 and "add --workshop" in out.output
