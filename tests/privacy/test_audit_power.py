"""Issue 26, item 8: an audit that has power where users run it.

(a) The audit states its power (the most it could show at m, q, T and its guesses) before a run and in the summary.
(b) At the demo's settings (batch 64 of 1,100, 20 steps) the white-box scoring catches a run without noise (bound
    >= 3) and a mechanism whose noise is 100x too small above its claim, and a correct run stays at or below the
    epsilon it is compared against (the canaries' own). The DP step runs alone with simulated gradients
    (audit_sim.py), so these take seconds.
(c) Readings before the final step are interim, not bounds; a run stopped by hand reports no bound.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from audit_sim import DEMO, simulate
from factories import TINY_RUN
from typer.testing import CliRunner

from workbench import privacy
from workbench.cli import app
from workbench.config import RunConfig
from workbench.privacy.audit import (
    audit_design,
    audit_power,
    audit_scores,
    canary_epsilon,
    epsilon_lower_bound,
    participation,
)
from workbench.session import Session
from workbench.store.runs import RunStore

Q = DEMO["batch"] / DEMO["population"]


def _sigma(target: float) -> float:
    return privacy.calibrate(target_epsilon=target, sample_rate=Q, steps=DEMO["steps"], delta=DEMO["delta"])


# -- (a) power ------------------------------------------------------------------------------------------


def test_power_at_full_batch_is_every_guess_right():
    """q = 1: every included canary takes part, and the best k of the grid is all right: 950 of 950 (5.08)."""
    assert participation(sample_rate=1.0, steps=3) == 1.0
    expected = epsilon_lower_bound(
        num_canaries=1000, num_guesses=950, num_correct=950, delta=1e-5, confidence=1 - 0.05 / 10
    )
    assert audit_power(canaries=1000, sample_rate=1.0, steps=4, delta=1e-5) == pytest.approx(expected)
    assert audit_design(canaries=1000, sample_rate=1.0, steps=4, delta=1e-5).guesses == "two_sided"


def test_power_at_the_demo_is_what_an_ideal_auditor_reaches():
    """Batch 64 of 1,100 for 20 steps: 30 % of the included canaries never take part, so two-sided guesses can
    show at most 1.7, one-sided 4.03 (the design's choice). An ideal auditor (it sees exactly how often each canary
    was sampled) reaches the power on average; scores unrelated to inclusion stay far below it."""
    p = participation(sample_rate=Q, steps=20)
    assert p == pytest.approx(1 - (1 - Q) ** 20)
    two = audit_power(canaries=1000, sample_rate=Q, steps=20, delta=1e-5, guesses="two_sided")
    design = audit_design(canaries=1000, sample_rate=Q, steps=20, delta=1e-5)
    assert two < 2 and design.guesses == "one_sided" and 3.9 < design.power < 4.1
    reached = []
    for seed in range(5):
        rng = np.random.default_rng(seed)
        included = rng.random(1000) < 0.5
        times = rng.binomial(20, Q, size=1000) * included  # steps each canary took part in: the ideal score
        reached.append(design.audit(times + 1e-6 * rng.random(1000), included, kind="ideal").epsilon_lower_bound)
        unrelated = design.audit(rng.random(1000), included, kind="null").epsilon_lower_bound
        assert unrelated < 1.0
    assert np.mean(reached) == pytest.approx(design.power, abs=0.3)
    assert max(reached) <= design.power + 0.3


def _demo_data(tmp_path, n: int = 1100) -> list[str]:
    rows = "\n".join(json.dumps({"text": f"note {i}: refill {7 * i}"}) for i in range(n))
    (tmp_path / "train.jsonl").write_text(rows)
    (tmp_path / "val.jsonl").write_text(rows.split("\n", 1)[0])
    return ["--set", f"data={tmp_path / 'train.jsonl'}", "--set", f"validation_data={tmp_path / 'val.jsonl'}"]


def test_workbench_check_states_the_audit_power_before_the_run(tmp_path):
    """The attack: a bound of 0.0 printed beside the claim reads as evidence. Before the run, `workbench check`
    says the most the audit could show at these settings."""
    sets = ["model=tiny", "batch_size=64", "max_steps=20", "audit=gradient_canaries", "target_epsilon=8"]
    out = CliRunner().invoke(app, ["check", *_demo_data(tmp_path), *[x for s in sets for x in ("--set", s)]])
    design = audit_design(canaries=1000, sample_rate=Q, steps=20, delta=1e-5)
    assert f"audit power: at most about {design.power:.2f}" in out.output, out.output
    assert "top k guessed in" in out.output and "70% of the included ones take part" in out.output


@pytest.mark.slow  # the demo data's plan, calibrated by three accountants
def test_the_plan_tab_shows_the_power_when_the_audit_box_is_ticked(ctx):
    pytest.importorskip("gradio")
    from conftest import app_values

    from workbench.app import plan as plan_tab

    _, _, ticked, error = plan_tab.update_plan(ctx, app_values(batch_size=64, max_steps=20, audit=True))
    assert error == "" and "audit power: at most about" in ticked
    _, _, plain, _ = plan_tab.update_plan(ctx, app_values(batch_size=64, max_steps=20, audit=False))
    assert "audit power" not in plain


# -- (b) catching a broken mechanism at the demo's settings, and validity --------------------------------------


@pytest.mark.slow  # seconds of simulated steps or a tiny-model run on 2 cores
def test_without_noise_the_white_box_audit_reaches_3_where_the_plain_projection_cannot():
    """Noise off, clipping on, batch 64 of 1,100, 20 steps: projecting the release alone drowns each canary in the
    real data's clipped sums (bound < 1: what issue 26 measured, 0.12); subtracting them leaves the canaries and
    the bound reaches the power."""
    plain, _ = simulate(noise_multiplier=0.0, scoring="released", **DEMO)
    white, canaries = simulate(noise_multiplier=0.0, **DEMO)
    assert plain.epsilon_lower_bound < 1.0, plain
    assert white.epsilon_lower_bound >= 3.0, white
    assert white.correct == white.guesses and white.power == pytest.approx(white.epsilon_lower_bound, abs=0.05)
    assert canaries.design.guesses == "one_sided" and white.scoring.startswith("white-box")


@pytest.mark.slow  # seconds of simulated steps or a tiny-model run on 2 cores
def test_after_the_subtraction_an_excluded_canary_sees_only_the_noise():
    """What is left in an excluded canary's score is the noise (std sigma C sqrt(T) on a unit direction) and the
    other canaries' projections (small at d = 30,720): the real data's clipped sums are gone, and nothing more."""
    sigma = _sigma(8.0)
    _, canaries = simulate(noise_multiplier=sigma, **DEMO)
    out = canaries.scores()[~canaries.included]
    expected = sigma * DEMO["clip"] * math.sqrt(DEMO["steps"])
    assert abs(out.mean()) < 4 * expected / math.sqrt(len(out))
    assert out.std() == pytest.approx(expected, rel=0.12)


@pytest.mark.slow  # seconds of simulated steps or a tiny-model run on 2 cores
def test_a_correct_run_stays_below_the_epsilon_it_is_compared_with():
    """Calibrated noise: the bound stays at or below the canaries' own epsilon, here the claim (8 and 1: the
    canaries are units of the same add/remove mechanism). Three seeds each, and far below it: at a 5 % failure
    rate per run a flake would need a real leak. At epsilon 1 the audit's power (4.03) is well above the claim,
    so staying below it is a test that can fail (the next test shows it failing on a broken mechanism)."""
    for target in (8.0, 1.0):
        sigma = _sigma(target)
        compared = canary_epsilon(
            noise_multiplier=sigma, sample_rate=Q, steps=DEMO["steps"], delta=DEMO["delta"], accountant="pld"
        )
        assert compared == pytest.approx(target, rel=1e-3)
        for seed in range(3):
            res, _ = simulate(noise_multiplier=sigma, seed=seed, **DEMO)
            assert res.epsilon_lower_bound <= compared, (target, seed, res)


@pytest.mark.slow  # seconds of simulated steps or a tiny-model run on 2 cores
def test_noise_100x_too_small_is_caught_above_a_claim_of_1():
    """The accountant is told sigma for epsilon 1, the step adds a hundredth of it: the audit exceeds the claim."""
    res, _ = simulate(noise_multiplier=_sigma(1.0), noise_scale=0.01, **DEMO)
    assert res.epsilon_lower_bound > 3.0, res


def test_the_comparison_epsilon_is_the_canaries_add_remove_one():
    """replace-one claims are larger than add/remove ones; a canary is added or not, so its own epsilon is the
    add/remove one of the same q, sigma, T (dp_accounting's PLD), never the replace-one claim."""
    args = dict(noise_multiplier=0.5863, sample_rate=0.01, steps=1000, delta=1e-5)
    assert canary_epsilon(**args) == pytest.approx(8.00, abs=0.01)  # REFERENCES.md 7: 8.00 add/remove, 9.374 replace
    assert canary_epsilon(**args) < privacy.epsilon(**args, neighboring="replace_one")
    assert canary_epsilon(**{**args, "noise_multiplier": 0.0}) == math.inf
    with pytest.raises(ValueError, match="participating"):
        audit_scores([1.0, 0.0], [True, False], delta=1e-5, participating=0.0)


# -- (c) interim readings and the engine's summary ----------------------------------------------------------


def _notes(tmp_path, n: int = 40) -> dict:
    rows = "\n".join(json.dumps({"text": f"note {i}: please refill my prescription number {7 * i}"}) for i in range(n))
    (tmp_path / "n.jsonl").write_text(rows)
    (tmp_path / "v.jsonl").write_text(rows.split("\n", 1)[0])
    return dict(data=str(tmp_path / "n.jsonl"), validation_data=str(tmp_path / "v.jsonl"))


RUN = dict(
    TINY_RUN,
    eval_max_examples=4,
    batch_size=8,
    max_steps=4,
    noise_multiplier=1.0,
    audit="gradient_canaries",
    audit_canaries=50,
)


@pytest.mark.slow  # seconds of simulated steps or a tiny-model run on 2 cores
def test_readings_before_the_final_step_are_interim_and_the_summary_says_how_to_read_the_bound(tmp_path):
    """The attack: a bound shown at every few steps, the largest picked (or a stop decided on one) is not covered
    by the 95 %. Only the final step carries a bound; the others are labelled interim."""
    store = RunStore()
    summary = Session(RunConfig(**RUN, **_notes(tmp_path)), store=store).run()
    steps = [e for _, e in store.events(summary["run_id"]) if e.kind == "step"]
    assert all(e.audit_epsilon_lower_bound is None and e.audit_interim is not None for e in steps[:-1])
    assert steps[-1].audit_interim is None and steps[-1].audit_epsilon_lower_bound is not None
    audit = summary["audit"]
    assert audit["interim"] is False and audit["epsilon_lower_bound"] == steps[-1].audit_epsilon_lower_bound
    q = summary["sample_rate"]
    design = audit_design(canaries=50, sample_rate=q, steps=4, delta=summary["delta"])
    assert audit["power"] == pytest.approx(design.power) and audit["guess_sides"] == design.guesses
    assert audit["compared_epsilon"] == pytest.approx(
        canary_epsilon(noise_multiplier=1.0, sample_rate=q, steps=4, delta=summary["delta"])
    )
    assert "canaries' own epsilon" in audit["compared_to"] and audit["scoring"].startswith("white-box")
    shown = CliRunner().invoke(app, ["audit", summary["run_id"]]).output
    assert "power" in shown and "compared with" in shown and "INTERIM" not in shown
    assert "could show at most about" in (Path(summary["adapter_dir"]) / "README.md").read_text()


@pytest.mark.slow  # seconds of simulated steps or a tiny-model run on 2 cores
def test_a_run_stopped_by_hand_reports_an_interim_reading_not_a_bound(tmp_path):
    session = Session(RunConfig(**RUN, **_notes(tmp_path)))
    session.subscribe(lambda e: session.stop() if e.kind == "step" and e.step == 2 else None)
    summary = session.run()
    assert summary["status"] == "stopped" and summary["audit"]["interim"] is True
    steps = [e for e in session.events if e.kind == "step"]
    assert all(e.audit_epsilon_lower_bound is None for e in steps)
    out = CliRunner().invoke(app, ["audit", summary["run_id"]])
    assert out.exit_code == 0 and "INTERIM reading, not a bound" in out.output
