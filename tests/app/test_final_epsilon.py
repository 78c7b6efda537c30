"""An ended run's epsilon is the one its summary stores, on every surface (issue 26, item 6): the Runs tab, Compare
(app and widget), the live header, the ledger, `workbench runs list` and the csv export. The attack: a view the
Train tab read mid-run (runs started in quick succession) must not leak its stale epsilon into the Runs tab, and a
summary that stores another epsilon than the last step's (a stopped run's planned epsilon) must win everywhere."""

from __future__ import annotations

import json
import re

import pytest
from factories import TINY_RUN, fake_run
from typer.testing import CliRunner

from workbench.app import compare as compare_tab
from workbench.app import runs as runs_tab
from workbench.app.live import header_html
from workbench.cli import app
from workbench.config import RunConfig
from workbench.events import RunEnded, StepMetrics
from workbench.present import fmt_eps
from workbench.session import Session
from workbench.store.export import run_tables
from workbench.store.ledger import Ledger
from workbench.widgets.comparison import compare as compare_widget


def _cli_epsilons() -> dict[str, str]:
    from workbench.cli.main import NAME_WIDTH

    out = CliRunner().invoke(app, ["runs", "list"]).output
    start = 24 + 1 + NAME_WIDTH + 1 + 12 + 1 + 14 + 1  # id, name (may hold spaces), status, model: then epsilon
    return {line.split()[0]: line[start : start + 9].strip() for line in out.splitlines()[1:] if line.strip()}


def _surfaces(ctx, run_ids: list[str]) -> dict[str, dict[str, str]]:
    """What each surface shows as each run's epsilon, as text (fmt_eps, or the CLI's 3 significant digits)."""
    rows = {row[0]: row[4] for row in runs_tab.list_runs(ctx)["data"]}
    _, _, scatter, _, _ = compare_tab.compare(ctx, run_ids)
    scatter_x = {t.text[0]: t.x[0] for t in scatter.data}
    choices = {rid: label for label, rid in compare_tab.open_choices(ctx, run_ids)}
    widget = compare_widget(run_ids, store=ctx.store)
    headers = {}
    for rid in run_ids:
        view, rec = ctx.views.get(rid), ctx.store.get(rid)
        headers[rid] = re.search(r'id="wb-epsilon">ε = ([^<]+)<', header_html(view, rec.status, None, now=0.0))[1]
    return {
        "runs tab": rows,
        "compare scatter": {rid: fmt_eps(scatter_x[ctx.views.get(rid).label]) for rid in run_ids},
        "compare open list": {rid: re.search(r"ε (\S+)", choices[rid])[1] for rid in run_ids},
        "widget": {v.run_id: fmt_eps(v.final_epsilon) for v in widget.views},
        "live header": headers,
        "csv export": {rid: fmt_eps(run_tables(ctx.store, rid)[2]["epsilon"]) for rid in run_ids},
    }


def test_every_surface_shows_quickly_finished_runs_stored_epsilon(ctx):
    """Tiny runs finished one after another, each read by the Train tab's view after its first step (as the
    live stream does): every surface shows each run's summary epsilon, none the epsilon of the step it was read at."""
    run_ids = []
    for target in (2.0, 4.0, 8.0):
        cfg = RunConfig(**TINY_RUN, max_steps=3, target_epsilon=target)
        session = Session(cfg, store=ctx.store)

        def follow(event, rid=session.run_id):  # the Train tab's stream reads the run while it trains
            if isinstance(event, StepMetrics) and event.step == 1:
                ctx.views.get(rid)

        session.subscribe(follow)
        session.run()
        assert session.status == "finished", session.summary
        run_ids.append(session.run_id)
    stored = {rid: ctx.store.get(rid).summary["epsilon"] for rid in run_ids}
    assert len({round(e, 6) for e in stored.values()}) == 3
    want = {rid: fmt_eps(e) for rid, e in stored.items()}
    for surface, shown in _surfaces(ctx, run_ids).items():
        assert {rid: shown[rid] for rid in run_ids} == want, surface
    ledger = {rid: Ledger(ctx.store).get(rid).epsilon for rid in run_ids}
    assert ledger == pytest.approx(stored, rel=1e-9)
    cli = _cli_epsilons()
    assert {rid: cli[rid] for rid in run_ids} == {rid: f"{e:.3g}" for rid, e in stored.items()}
    listed = json.loads(CliRunner().invoke(app, ["runs", "list", "--json"]).output)
    assert {r["run_id"]: r["summary"]["epsilon"] for r in listed if r["run_id"] in stored} == stored


def test_a_summary_that_stores_another_epsilon_than_the_last_step_wins_everywhere(ctx):
    """A stopped run may store another epsilon than its last step's (its planned epsilon): every surface shows the
    stored one; a run still training shows its last step's, marked as such."""
    ended, running = "20250101-000000-aaaaaa", "20250101-000001-bbbbbb"
    fake_run(ctx.store, ended, finished=False)  # steps at 0.1 per step: the last step says 1.0
    ctx.store.append(RunEnded(run_id=ended, status="stopped", reason="", summary={"epsilon": 7.0, "steps": 10}))
    fake_run(ctx.store, running, finished=False)
    other = "20250101-000002-cccccc"
    fake_run(ctx.store, other, eps_per_step=0.3)  # finished at 3.0
    shown = _surfaces(ctx, [ended, other])
    for surface, values in shown.items():
        assert values[ended] == "7" and values[other] == "3", (surface, values)
    assert _cli_epsilons()[ended] == "7"
    rows = {row[0]: row[4] for row in runs_tab.list_runs(ctx)["data"]}
    assert rows[running] == "1 so far"  # no stored value yet: the last step's, labelled
