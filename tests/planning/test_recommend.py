"""The batch-size recommendation (planning/recommend.py): the smallest noise-batch ratio sigma / B within a
compute budget, never a setting that overshoots the target epsilon, more budget never a worse ratio, and
bad input as one clear message (exit code 2 from `workbench plan --recommend`)."""

from __future__ import annotations

import json
import math

import pytest
from dp_accounting import dp_event, pld, privacy_accountant, rdp
from typer.testing import CliRunner

from workbench import privacy
from workbench.cli import app
from workbench.planning import recommend as rec_mod
from workbench.planning.recommend import RecommendError, recommend

SMALL = dict(dataset_size=200, target_epsilon=4.0, delta=1e-5, min_steps=10)  # batches 8 ... 64


def _event(c) -> dp_event.DpEvent:
    step = dp_event.PoissonSampledDpEvent(c.sample_rate, dp_event.GaussianDpEvent(c.noise_multiplier))
    return dp_event.SelfComposedDpEvent(step, c.steps)


def test_more_budget_never_recommends_a_worse_ratio():
    ratios = []
    for budget in (100, 400, 2000):
        r = recommend(**SMALL, budget_examples=budget, whole_budget=False)  # the curve never holds the minimum
        assert r.best.examples <= budget and r.best.steps >= SMALL["min_steps"]
        assert r.best.noise_batch_ratio == min(c.noise_batch_ratio for c in r.candidates if c.steps >= 10)
        ratios.append(r.best.noise_batch_ratio)
    assert ratios == sorted(ratios, reverse=True) and ratios[-1] < ratios[0]


def test_every_candidate_stays_within_the_target_by_dp_accounting():
    """Checked with dp_accounting itself: its RDP accountant exactly, its PLD accountant at its own grid."""
    r = recommend(**SMALL, budget_examples=400, accountant="rdp", whole_budget=False, public_dataset_size=210)
    assert r.accountant == "rdp" and r.neighboring == "add_remove" and r.candidates  # rdp: add/remove only
    for c in r.candidates:
        assert c.sample_rate == pytest.approx(c.batch_size / 210)  # the declared public size, not the data's 200
        eps = rdp.RdpAccountant().compose(_event(c)).get_epsilon(1e-5)
        assert eps <= 4.0 * (1 + 1e-9), c
    r = recommend(**SMALL, budget_examples=400)  # pld, auto: replace one
    assert r.accountant == "pld" and r.neighboring == "replace_one"
    for c in r.candidates:
        relation = privacy_accountant.NeighboringRelation.REPLACE_ONE
        accountant = pld.PLDAccountant(relation, value_discretization_interval=1e-3)
        assert accountant.compose(_event(c)).get_epsilon(1e-5) <= 4.0 * (1 + 1e-3), c


def test_edgeworth_never_sets_the_noise():
    r = recommend(**SMALL, budget_examples=400, accountant="edgeworth", neighboring="replace_one", whole_budget=False)
    assert r.accountant == "pld" and r.to_dict()["accountant"] == "pld"


def test_recommendation_reads_as_a_heuristic_with_the_paper():
    from workbench.present.recommend import recommend_figure, recommend_markdown

    r = recommend(**SMALL, budget_examples=400)
    text = recommend_markdown(r)
    assert "heuristic" in text and "Scaling Laws for Differentially Private Language Models" in text
    assert "Learning rate (heuristic)" in text
    fig = recommend_figure(r)
    star = [t for t in fig.data if t.name == "recommended"]
    assert star and star[0].x[0] == r.best.batch_size and star[0].y[0] == pytest.approx(r.best.noise_batch_ratio)
    assert fig.layout.xaxis.type == "log" and "σ/B" in fig.layout.title.text
    assert recommend_figure(None).data == ()


BAD = {
    "N too small": (dict(dataset_size=10, budget_examples=1000), "too small"),
    "budget below one step": (dict(budget_examples=5), "too small for one step"),
    "budget below min steps": (dict(budget_examples=50), "fewer than min steps"),
    "no budget": (dict(), "no compute budget"),
    "minutes without speed": (dict(budget_minutes=3.0), "examples per second"),
    "two budgets": (dict(budget_examples=100, budget_minutes=3.0, examples_per_second=10.0), "not both"),
    "unreachable": (dict(target_epsilon=1e-8, budget_examples=400), "unreachable"),
    "ELS": (dict(privacy_unit="user", user_sampling="els", budget_examples=400), "ULS"),
    "delta too big": (dict(delta=0.01, budget_examples=400), "not below 1/N"),
    "bad target": (dict(target_epsilon=-1.0, budget_examples=400), "target epsilon"),
    "bad accountant": (dict(accountant="exact", budget_examples=400), "accountant"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_clear_error(case):
    changes, needle = BAD[case]
    with pytest.raises(RecommendError, match=needle) as err:
        recommend(**{**SMALL, **changes})
    assert isinstance(err.value, privacy.PrivacyError) and "\n" not in str(err.value)


def test_budget_in_minutes():
    r = recommend(**SMALL, budget_minutes=2.0, examples_per_second=10 / 3, whole_budget=False)
    assert r.budget_examples == 400


def test_cli_recommend_json_and_text():
    runner = CliRunner()
    args = ["plan", "-n", "200", "--target-epsilon", "4", "--delta", "1e-5", "--recommend", "--min-steps", "10"]
    out = runner.invoke(app, [*args, "--budget-examples", "400", "--json"])
    assert out.exit_code == 0, out.output
    data = json.loads(out.stdout)
    best = data["recommended"]
    assert data["heuristic"] is True and best["epsilon"] <= 4.0 and best["batch_size"] * best["steps"] <= 400
    assert best["noise_batch_ratio"] == pytest.approx(best["noise_multiplier"] / best["batch_size"])
    assert {c["series"] for c in data["candidates"]} == {"min_steps", "whole_budget"}
    out = runner.invoke(app, [*args, "--budget-examples", "400"])
    assert out.exit_code == 0 and "<- recommended" in out.stdout and "heuristic" in out.stdout


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--budget-examples", "5"], "too small for one step"),
        (["--budget-minutes", "3"], "examples per second"),
        # replace-one: a typed -n is public (add/remove under auto), where huge sigma does reach 1e-8
        (["--budget-examples", "400", "--target-epsilon", "1e-8", "--neighboring", "replace_one"], "unreachable"),
        (["--budget-examples", "400", "--accountant", "exact"], "accountant"),
    ],
)
def test_cli_bad_input_exits_2_with_one_message(extra, needle):
    out = CliRunner().invoke(app, ["plan", "-n", "200", "--recommend", "--min-steps", "10", *extra])
    assert out.exit_code == 2, out.output
    assert needle in out.output and out.output.startswith("error:") and "Traceback" not in out.output


def test_cli_plan_without_recommend():
    out = CliRunner().invoke(app, ["plan", "-n", "1100", "--json"])
    data = json.loads(out.stdout)
    assert (
        out.exit_code == 0
        and data["dataset_size"] == 1100
        and data["epsilon"] <= 8.0
        and math.isfinite(data["epsilon"])
    )
    assert CliRunner().invoke(app, ["plan"]).exit_code == 2


def test_plan_tab_privacy_unit_choice_reaches_the_config():
    pytest.importorskip("gradio")
    from workbench.app import forms

    assert "privacy_unit" in forms.PLAN_FIELDS
    cfg = forms.config_from_values({"privacy_unit": "user:uls"})
    assert (cfg.privacy_unit, cfg.user_sampling) == ("user", "uls")
    assert forms.config_from_values({"privacy_unit": "example"}).privacy_unit == "example"
    assert forms.privacy_unit_value(cfg) == "user:uls"


def test_planner_widget_recommends_and_marks_it_stale():
    pytest.importorskip("ipywidgets")
    from workbench.widgets import PrivacyPlanner

    planner = PrivacyPlanner(accountants=("rdp",), background=False, dataset_size=200, target_epsilon=4.0)
    r = planner.recommend(100, 10)
    assert r is not None and r.best.batch_size * r.best.steps <= 100
    assert "Recommended" in planner.recommend_text.value and "heuristic" in planner.recommend_text.value
    assert any(t.name == "recommended" for t in planner.recommend_figure.data)
    planner.steps.value = 2000  # the sliders moved: the shown recommendation is for the old ones
    assert "press Recommend again" in planner.recommend_text.value
    assert planner.recommend(5, 10) is None and "too small for one step" in planner.recommend_text.value


def test_plan_tab_recommend_is_progressive_and_errors_sit_beside_the_budget(ctx):
    pytest.importorskip("gradio")
    from conftest import app_values

    from workbench.app import plan as plan_tab

    updates = list(plan_tab.recommend_updates(ctx, app_values(), 100, 10))
    shown = [u for u in updates if u is not None]
    assert None in updates and len(shown) > 1  # a place to stop after each calibration
    fig, text, error = shown[-1]
    assert error == "" and "Recommended" in text and "Scaling Laws" in text
    assert any(t.name == "recommended" for t in fig.data)
    for budget, needle in (("", "whole number"), (5, "too small for one step")):
        *_, (fig, text, error) = plan_tab.recommend_updates(ctx, app_values(), budget, 10)
        assert text == "" and error.startswith("⚠️") and needle in error
    *_, (_, text, error) = plan_tab.recommend_updates(ctx, app_values(privacy_unit="user:els"), 100, 10)
    assert "ULS" in error


def test_a_calibration_that_overshoots_is_dropped_not_recommended(monkeypatch):
    calibrate = privacy.calibrate

    def too_little_noise(**kw):
        sigma = calibrate(**kw)
        return sigma * 0.9 if kw["sample_rate"] > 0.1 else sigma  # B = 32 and 64 overshoot

    rec_mod._candidate.cache_clear()  # last in the file: the cache is cleared for the tests before it
    monkeypatch.setattr(privacy, "calibrate", too_little_noise)
    try:
        r = recommend(**SMALL, budget_examples=2000)
    finally:
        rec_mod._candidate.cache_clear()
    assert r.best.batch_size == 16 and all(c.batch_size <= 16 for c in r.candidates)
    assert any("B = 32" in s and "> target" in s for s in r.skipped)
