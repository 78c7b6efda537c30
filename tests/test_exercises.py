"""The workshop's checks (issue 31): each accepts a right answer and rejects a wrong one with its hint, and the
numbers they judge by agree with dp_accounting computed here directly (an independent oracle)."""

from __future__ import annotations

import math
import subprocess
import sys
import time

import numpy as np
import pytest
from dp_accounting import dp_event, pld, rdp

from workbench import exercises as ex
from workbench.errors import UserError
from workbench.privacy.dp_events import event_to_json
from workbench.store.ledger import Ledger, LedgerEntry
from workbench.store.runs import RunStore


def pld_epsilon(event, delta=1e-5) -> float:
    """dp_accounting's PLD accountant with a fine grid (add/remove), on ``event`` as dp_accounting spells it."""
    accountant = pld.PLDAccountant(value_discretization_interval=1e-4)
    return accountant.compose(event).get_epsilon(delta)


def sampled_gaussian(q: float, sigma: float, steps: int):
    return dp_event.SelfComposedDpEvent(dp_event.PoissonSampledDpEvent(q, dp_event.GaussianDpEvent(sigma)), steps)


# -- the result ---------------------------------------------------------------------------------------------------
def test_a_result_reads_as_text_markdown_and_html_and_is_truthy_only_when_right():
    right = ex.CheckResult(True, "fine <3.", "a note", "1. x")
    wrong = ex.CheckResult(False, "too big.", "increase sigma", "1. x")
    assert right and not wrong
    assert str(right).startswith("✅ Right (1. x): fine <3.") and "Note: a note" in str(right)
    assert str(wrong).startswith("❌ Not yet (1. x): too big.") and "Hint: increase sigma" in repr(wrong)
    assert (
        wrong._repr_markdown_().startswith("**❌ Not yet (1. x).** too big.") and "*Hint:*" in wrong._repr_markdown_()
    )
    assert (
        "fine &lt;3." in right._repr_html_() and "#1a7f37" in right._repr_html_() and "#cf222e" in wrong._repr_html_()
    )


# -- 1. sigma for a budget ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("sigma", [0.55, 0.62, 0.68, 0.8, 2.0])
def test_the_sigma_check_agrees_with_dp_accounting(sigma):
    oracle = pld_epsilon(sampled_gaussian(0.01, sigma, 100))
    result = ex.check_sigma(sigma)
    assert bool(result) == (oracle <= 3.0), (sigma, oracle, result)
    shown = float(result.message.split(" is ")[1].split(",")[0])  # "... 100 steps at q = 0.01 is 2.367, ..."
    assert shown == pytest.approx(oracle, rel=0.02)


def test_the_sigma_check_accepts_the_smallest_sigma_and_rejects_less_with_the_way_to_move():
    smallest = ex._smallest_sigma()
    assert pld_epsilon(sampled_gaussian(0.01, smallest, 100)) <= 3.0 + 0.03
    assert pld_epsilon(sampled_gaussian(0.01, 0.97 * smallest, 100)) > 3.0
    right = ex.check_sigma(smallest)
    assert right.ok and f"{smallest:.3f}" in right.hint and "more noise than the budget needs" not in right.hint
    assert "more noise than the budget needs" in ex.check_sigma(2 * smallest).hint  # right, but wasteful
    wrong = ex.check_sigma(0.97 * smallest)
    assert not wrong.ok and "above 3" in wrong.message and wrong.hint.startswith("increase sigma")


@pytest.mark.parametrize("answer", ["a lot", None, 0, -1.0, math.nan, math.inf])
def test_the_sigma_check_says_what_an_answer_that_is_no_sigma_is(answer):
    result = ex.check_sigma(answer)
    assert not result.ok and result.hint


# -- 2. which is more private ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("pair", sorted(ex.PAIRS))
def test_the_comparison_names_the_setting_dp_accounting_finds_more_private(pair):
    p = ex.PAIRS[pair]
    oracle = {}
    for name, m in (("A", p.a), ("B", p.b)):
        accountant = rdp.RdpAccountant()  # another accountant than the check's: the order must not depend on it
        oracle[name] = accountant.compose(sampled_gaussian(m.sample_rate, m.noise_multiplier, m.steps)).get_epsilon(
            1e-5
        )
    best, worst = sorted(oracle, key=oracle.get)
    right, wrong = ex.check_more_private(best.lower(), pair=pair), ex.check_more_private(worst, pair=pair)
    assert right.ok and not wrong.ok
    assert wrong.hint == p.lesson + "." and "less private" in wrong.message
    assert "| A |" in p._repr_markdown_() and "epsilon" not in p._repr_markdown_()  # the table gives nothing away


def test_the_comparison_refuses_an_answer_that_is_no_setting():
    assert not ex.check_more_private("C") and "'A' or 'B'" in ex.check_more_private("C").hint
    assert not ex.check_more_private("A", pair=9)


# -- 3. a clipping norm from a private quantile --------------------------------------------------------------------
@pytest.fixture
def norms():
    """Per-example gradient norms shaped as real ones are (log-normal, heavy right tail)."""
    return np.random.default_rng(7).lognormal(mean=np.log(0.4), sigma=0.6, size=1000)


def test_the_private_quantile_estimate_finds_the_quantile_and_accounts_every_count(norms):
    est = ex.private_quantile(norms, quantile=0.5, noise_multiplier=40.0, rounds=60)
    assert abs(np.mean(norms <= est.value) - 0.5) < 0.05
    # 60 Gaussian counts on the whole data (q = 1), each of multiplier 40: dp_accounting directly
    oracle = pld_epsilon(dp_event.SelfComposedDpEvent(dp_event.GaussianDpEvent(40.0), 60))
    assert est.epsilon == pytest.approx(oracle, rel=0.02)
    assert "epsilon" in str(est) and float(est) == est.value


def test_the_clip_norm_check_accepts_a_norm_from_the_private_estimate(norms):
    est = ex.private_quantile(norms, quantile=0.8)
    result = ex.check_clip_norm(est, norms)
    assert result.ok, result
    assert "noisy count" in result.message and "not private" in result.hint  # says why not the histogram


def test_the_clip_norm_check_rejects_a_norm_that_clips_most_and_says_to_raise_it(norms):
    low = float(np.quantile(norms, 0.2)) * 1.0001  # not one of the exact values: judged by the count
    result = ex.check_clip_norm(low, norms)
    assert not result.ok and result.hint.startswith("raise C") and "not private" in result.hint


def test_the_clip_norm_check_refuses_a_norm_read_off_the_raw_data(norms):
    for raw in (float(np.median(norms)), float(np.quantile(norms, 0.9)), float(np.sort(norms)[-1])):
        result = ex.check_clip_norm(raw, norms)
        assert not result.ok and "read off the raw norms" in result.message and "not private" in result.hint


def test_the_clip_norm_check_is_a_noisy_count_not_the_raw_fraction():
    """At a C with exactly half of ten norms clipped, the count's noise (std 5 examples) decides: repeated checks
    give both verdicts. A check counting the raw norms would always say the same, and its verdicts would let a
    participant find the exact median by bisection."""
    values = np.arange(1.0, 11.0)
    verdicts = {ex.check_clip_norm(5.63, values).ok for _ in range(40)}
    assert verdicts == {True, False}


def test_the_clip_norm_check_says_what_is_wrong_with_no_number(norms):
    assert not ex.check_clip_norm("median", norms) and not ex.check_clip_norm(0.0, norms)
    for bad in ([], [1.0, math.nan], "norms"):
        with pytest.raises(ex.ExerciseError, match="non-empty sequence of finite numbers"):
            ex.check_clip_norm(1.0, bad)
    assert issubclass(ex.ExerciseError, UserError)


# -- 4. user-level epsilon ------------------------------------------------------------------------------------------
def test_the_user_level_check_accepts_the_els_epsilon_and_explains_the_two_usual_mistakes():
    user, example, (group_eps, group_delta) = ex._user_reference()
    assert example == pytest.approx(pld_epsilon(sampled_gaussian(0.02, 1.0, 200)), rel=0.02)
    assert user > example and group_delta > 1e-5
    assert ex.check_user_epsilon(user * 1.05)
    one_message = ex.check_user_epsilon(example)
    assert not one_message and "example-level epsilon" in one_message.hint
    group = ex.check_user_epsilon(group_eps)
    assert not group and "group privacy" in group.hint and f"{group_delta:.1e}" in group.hint
    assert ex.check_user_epsilon(100.0).hint.startswith("lower")


# -- 5. the ledger's total ------------------------------------------------------------------------------------------
def record(ledger: Ledger, run_id: str, sigma: float, steps: int) -> LedgerEntry:
    """A finished run's ledger row, as Session._end writes it (the same data: one fingerprint)."""
    event = sampled_gaussian(0.05, sigma, steps)
    entry = LedgerEntry(
        run_id=run_id,
        name=run_id,
        time=time.time(),
        fingerprint="same-data",
        dataset_name="inbox.jsonl",
        data_path="/tmp/inbox.jsonl",
        privacy_unit="example",
        neighboring="add_remove",
        delta=1e-5,
        epsilon=pld_epsilon(event),
        steps=steps,
        accountant="pld",
        dp_event=event_to_json(event),
        non_private=False,
    )
    ledger.record(entry)
    return entry


def test_the_ledger_check_accepts_the_composed_total_and_hints_at_the_sum_and_the_largest():
    store = RunStore()
    ledger = Ledger(store)
    a, b = record(ledger, "run-a", 1.0, 40), record(ledger, "run-b", 1.2, 60)
    oracle = pld_epsilon(dp_event.ComposedDpEvent([a.event, b.event]))
    assert max(a.epsilon, b.epsilon) < oracle < a.epsilon + b.epsilon
    right = ex.check_ledger_total(oracle, ["run-a", "run-b"], store=store)
    assert right.ok, right
    too_much = ex.check_ledger_total(a.epsilon + b.epsilon, ["run-a", "run-b"], store=store)
    assert not too_much and "loose" in too_much.hint
    too_little = ex.check_ledger_total(max(a.epsilon, b.epsilon), ["run-a", "run-b"], store=store)
    assert not too_little and "spends again" in too_little.hint
    unknown = ex.check_ledger_total(oracle, ["run-a", "nobody"], store=store)
    assert not unknown and "no dataset group" in unknown.message


# -- torch-free ---------------------------------------------------------------------------------------------------
def test_the_checks_load_no_torch(tmp_path):
    code = (
        "import sys; from workbench import exercises as ex; from workbench.store.runs import RunStore; "
        f"ex.check_sigma(0.7); ex.check_clip_norm(1.5, [1.0, 2.0, 3.0]); "
        f"ex.check_ledger_total(1.0, ['x'], store=RunStore({str(tmp_path)!r})); "
        "print(sorted(m for m in ('torch', 'transformers', 'peft', 'gradio') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "[]", out.stderr
