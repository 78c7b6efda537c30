"""Example-level and user-level epsilon side by side: the Plan tab and the PrivacyPlanner widget.

The oracles are ``privacy.user_epsilon_els`` (ELS: mixture-of-Gaussians PLD) and
``privacy.group_privacy_bound``; REFERENCES.md section 2 gives the spot value
q = 0.01, sigma = 1, T = 1000, delta = 1e-6, k = 2 -> about 4.55.
"""

from __future__ import annotations

import html
import math

import pytest

from workbench import privacy
from workbench.present import fmt_eps
from workbench.store.runs import RunStore

gr = pytest.importorskip("gradio")

from conftest import app_values  # noqa: E402  (shared factories)

from workbench.app import forms  # noqa: E402
from workbench.app import plan as plan_tab  # noqa: E402
from workbench.app import train as train_tab  # noqa: E402
from workbench.app.state import AppContext, Selection  # noqa: E402


def values(**changes):
    """The user-level plans here: 200 steps at sigma 1, k = 3."""
    return app_values(**{"max_steps": 200, "privacy_mode": "sigma", "max_examples_per_user": 3, **changes})


def run_plan(ctx, monkeypatch, **changes):
    """All of the Plan tab's updates, and the forms.PlanResult behind each summary."""
    stages = []
    summary = plan_tab.plan_summary
    monkeypatch.setattr(plan_tab, "plan_summary", lambda stage: stages.append(stage) or summary(stage))
    updates = [u for u in plan_tab.plan_updates(ctx, values(**changes)) if u is not None]
    return updates, stages


def oracle(stage: forms.PlanResult, k: int) -> float:
    return privacy.user_epsilon_els(
        noise_multiplier=stage.noise_multiplier,
        sample_rate=stage.sample_rate,
        steps=stage.steps,
        delta=stage.delta,
        max_examples_per_user=k,
    )


# -- Plan tab ---------------------------------------------------------------------------------------


def test_plan_tab_shows_user_level_epsilon_beside_example_level(ctx, monkeypatch):
    updates, stages = run_plan(ctx, monkeypatch, max_examples_per_user=3)
    *_, summary, error = updates[-1]
    assert error == ""
    # (the last update adds the pre-flight privacy check under the finished plan)
    assert "computing user-level ε…" in updates[-3][2], "the user-level value comes after the curves"
    assert "Privacy check" in summary and "Privacy check" not in updates[-2][2]
    assert all(s.user_level.pending for s in stages[:-1]) and not stages[-1].user_level.pending
    user, last = stages[-1].user_level, stages[-1]
    expected = oracle(last, 3)
    assert user.epsilon == pytest.approx(expected, rel=1e-6)
    assert user.example_epsilon == pytest.approx(last.final_epsilon("pld"), rel=1e-12)
    assert user.epsilon >= user.example_epsilon, "a user with 3 examples is less protected than one example"
    eps_k, delta_k = privacy.group_privacy_bound(epsilon=user.example_epsilon, delta=last.delta, group_size=3)
    assert (user.group_epsilon, user.group_delta) == pytest.approx((eps_k, delta_k), rel=1e-12)
    assert f"one user with up to k = 3 examples** (ELS, mixture-of-Gaussians PLD) | **{fmt_eps(expected)}**" in summary
    assert f"| one example (PLD) | {fmt_eps(user.example_epsilon)} |" in summary
    assert f"group-privacy bound (k ε at δ_k = δ (e^kε − 1)/(e^ε − 1)) | {fmt_eps(eps_k)} |" in summary
    assert f"{forms.dataset_info('demo').n_users:,} users" in summary


def test_plan_tab_k1_user_level_equals_example_level_pld(ctx, monkeypatch):
    updates, stages = run_plan(ctx, monkeypatch, max_examples_per_user=1, max_steps=50)
    user, last = stages[-1].user_level, stages[-1]
    pld = privacy.epsilon(
        noise_multiplier=1.0, sample_rate=last.sample_rate, steps=50, delta=last.delta, accountant="pld"
    )
    assert user.epsilon == pytest.approx(pld, rel=1e-6) and user.epsilon == pytest.approx(oracle(last, 1), rel=1e-6)
    assert "user-level ε equals example-level ε" in updates[-1][2]


@pytest.mark.parametrize("k", [0, -1, 2.5, "", None, "four"])
def test_bad_k_gives_a_message_not_an_exception(ctx, k):
    data_md, _, summary, error = plan_tab.update_plan(ctx, values(max_examples_per_user=k))
    assert error.startswith("⚠️") and "max examples per user k" in error and "Traceback" not in error
    assert ("empty" in error) if k in ("", None) else (f"Found {html.escape(repr(k))}" in error)  # the app escapes
    assert "N = " in data_md and summary == ""
    sel, text = train_tab.start_run(ctx, Selection(), values(max_examples_per_user=k))
    assert "max examples per user k" in text and sel == Selection() and ctx.store.list() == []


def test_non_private_plan_is_infinite_for_examples_and_users(ctx, monkeypatch):
    updates, stages = run_plan(ctx, monkeypatch, noise_multiplier=0)
    assert stages[-1].user_level.epsilon == math.inf and stages[-1].user_level.example_epsilon == math.inf
    assert "ε = ∞ for one example and for one user" in updates[-1][2]


def test_uls_config_notes_that_the_epsilon_is_already_user_level(_workbench_home, monkeypatch):
    ctx = AppContext(RunStore(_workbench_home), defaults={"privacy_unit": "user", "user_sampling": "uls"})
    updates, stages = run_plan(ctx, monkeypatch, max_steps=20)
    summary, error = updates[-1][2:]
    n_users = forms.dataset_info("demo").n_users
    assert error == "" and stages[-1].sample_rate == pytest.approx(16 / n_users)
    assert "User-level (ULS)" in summary and "example-level accounting with users as the unit" in summary


def test_user_unit_without_user_id_is_a_message(ctx, tmp_path):
    data = tmp_path / "no_users.jsonl"
    # distinct records: the validation split hashes each record's content, so 200 identical
    # records would be one unit and all land on one side
    data.write_text("".join(f'{{"prompt": "a{i}", "response": "b"}}\n' for i in range(200)))
    ctx.defaults = {"privacy_unit": "user"}
    _, _, _, error = plan_tab.update_plan(ctx, values(data_mode="path", data_path=str(data)))
    assert "no user_id column" in error and "Traceback" not in error


def test_k_control_is_a_plan_field_and_defaults_to_the_config(_workbench_home):
    from workbench.app import build_app

    assert "max_examples_per_user" in forms.PLAN_FIELDS  # passed by name: no place to keep
    app = build_app(RunStore(_workbench_home), defaults={"max_examples_per_user": 5})
    try:
        [k] = [b for b in app.blocks.values() if getattr(b, "elem_id", None) == "max-examples-per-user"]
        help_ = dict((key, h) for key, _, h in forms.RunConfig.help_table())["max_examples_per_user"]
        assert k.value == 5 and k.info == help_ and k.label == "Max examples per user k"
    finally:
        app.close()


# -- PrivacyPlanner -----------------------------------------------------------------------------------

pytest.importorskip("ipywidgets")

from workbench.widgets import PlanSettings, PrivacyPlanner  # noqa: E402
from workbench.widgets import planner as planner_mod  # noqa: E402

REFERENCE = dict(dataset_size=10_000, batch_size=100, steps=1000, delta=1e-6, noise_multiplier=1.0)


def test_planner_shows_example_and_user_level_side_by_side():
    planner = PrivacyPlanner(accountants=("rdp",), background=False, max_examples_per_user=2, **REFERENCE)
    r = planner.result
    common = dict(noise_multiplier=1.0, sample_rate=0.01, steps=1000, delta=1e-6)
    assert r.user_epsilon == pytest.approx(privacy.user_epsilon_els(**common, max_examples_per_user=2), rel=1e-6)
    assert r.user_epsilon == pytest.approx(4.55, abs=0.02), "REFERENCES.md section 2"
    assert r.example_epsilon == pytest.approx(privacy.epsilon(**common, accountant="pld"), rel=1e-9)
    assert r.group_bound == pytest.approx(
        privacy.group_privacy_bound(epsilon=r.example_epsilon, delta=1e-6, group_size=2), rel=1e-12
    )
    assert r.user_epsilon >= r.example_epsilon
    table = planner.user_level.value
    assert all(fmt_eps(e) in table for e in (r.user_epsilon, r.example_epsilon, r.group_bound[0]))
    assert "k = 2" in table and len(planner.results.children) == 2
    planner.max_examples_per_user.value = 1  # the observer recomputes
    assert planner.result.user_epsilon == pytest.approx(planner.result.example_epsilon, rel=1e-6)
    assert "user-level equals example-level" in planner.user_level.value


def test_planner_user_level_is_computed_after_the_curves_and_dropped_when_stale():
    seen = []

    def on_partial(result):
        seen.append(result.user_epsilon)

    settings = PlanSettings(accountants=("rdp", "edgeworth"), steps=100, max_examples_per_user=3)
    with pytest.raises(planner_mod._Stale):  # settings moved on after the last curve: no user-level work
        planner_mod.compute_plan(settings, is_current=lambda: len(seen) < 2, on_partial=on_partial)
    assert seen == [None, None]


def test_planner_worker_draws_the_user_level_column():
    planner = PrivacyPlanner(accountants=("rdp",), steps=100)
    planner.wait(60)
    planner.max_examples_per_user.value = 4
    result = planner.wait(60)
    assert result.settings.max_examples_per_user == 4 and result.user_epsilon is not None
    assert "computing" not in planner.status.value and "k = 4" in planner.user_level.value


def test_plan_for_an_els_target_uses_the_engines_user_level_sigma():
    from workbench.config import RunConfig
    from workbench.planning.plan import make_plan

    config = RunConfig(
        data="demo",
        batch_size=32,
        max_steps=20,
        target_epsilon=8.0,
        privacy_unit="user",
        user_sampling="els",
        max_examples_per_user=4,
        public_dataset_size=1000,  # ELS is analysed for add/remove only: it needs a public size
    )
    plan = forms.compute_plan(config, dataset_size=1000, num_users=300)
    engine = make_plan(config, dataset_size=1000, num_users=300)
    assert plan.noise_multiplier == pytest.approx(engine.noise_multiplier, rel=1e-9)


def test_the_app_and_the_widget_draw_one_plan():
    """One progressive plan (engine.plan.plan_curves) behind the Plan tab and the PrivacyPlanner: the
    same settings give the same sigma, the same curve points and the same user-level epsilon."""
    from workbench.config import RunConfig
    from workbench.widgets.planner import TARGET, PlanSettings, compute_plan

    config = RunConfig(data="demo", batch_size=50, max_steps=120, target_epsilon=4.0, max_examples_per_user=3)
    config = config.with_overrides({"delta": 1e-5, "neighboring": "add_remove", "public_dataset_size": 5000})
    app = forms.compute_plan(config, dataset_size=5000)
    widget = compute_plan(
        PlanSettings(
            dataset_size=5000,
            batch_size=50,
            steps=120,
            delta=1e-5,
            mode=TARGET,
            target_epsilon=4.0,
            accountants=("rdp", "prv", "pld"),
            selected="pld",
            max_examples_per_user=3,
        )
    )
    assert app.sample_rate == pytest.approx(widget.settings.sample_rate)
    assert app.noise_multiplier == pytest.approx(widget.noise_multiplier, rel=1e-12)
    for name in ("rdp", "pld", "prv"):
        assert app.curves[name] == widget.curves[name], name
    assert app.user_level.epsilon == pytest.approx(widget.user_epsilon, rel=1e-9)
