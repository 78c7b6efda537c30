"""The Runs tab's Evaluate (issue 29): a stopped run's skipped evaluation on request; a message, never a traceback,
for a run it cannot evaluate. The browser drives it in tests/app/test_stop_browser.py."""

from __future__ import annotations

from factories import fake_run

from workbench.app import runs


def test_evaluate_in_the_runs_tab_says_why_a_run_cannot_be_evaluated(ctx):
    assert runs.evaluate_stored(ctx, None) == "Choose a run first."
    fake_run(ctx.store, "20260101-000000-aaaaaa", steps=3)  # a finished run without an adapter folder
    message = runs.evaluate_stored(ctx, "20260101-000000-aaaaaa")
    assert message.startswith("⚠️ run 20260101-000000-aaaaaa has no adapter to evaluate: none was saved")
    fake_run(ctx.store, "20260101-000000-bbbbbb", steps=3, finished=False)  # still running, in this process
    assert "is running: evaluate it once it has ended" in runs.evaluate_stored(ctx, "20260101-000000-bbbbbb")
    assert "no run with id" in runs.evaluate_stored(ctx, "nope")
    assert [e.kind for _, e in ctx.store.events("20260101-000000-aaaaaa", kinds=("eval",))] == ["eval"]  # unchanged
