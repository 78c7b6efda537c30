"""A fresh calibration in few exact evaluations (issue 31): a coarse PLD only places the search, the exact accountant
decides, and the answer agrees with an independent dp_accounting calibration and never exceeds the target. The
workshop's disk cache of calibrations is checked against the exact accountant before a kept sigma is used."""

from __future__ import annotations

import importlib

import pytest
from dp_accounting import dp_event, mechanism_calibration
from dp_accounting.pld import pld_privacy_accountant
from dp_accounting.privacy_accountant import NeighboringRelation

from workbench import privacy
from workbench.planning import disk_cache
from workbench.planning.mechanism import Mechanism

calibration = importlib.import_module("workbench.privacy.calibrate")  # the module (the package exports the function)

CASES = [  # (target, q, T, delta, relation): the workshop's tiny runs, a demo run, a long run
    (8.0, 8 / 3000, 4, 1e-5, "replace_one"),
    (2.0, 0.01, 1000, 1e-6, "replace_one"),
    (4.0, 128 / 10_000, 200, 1e-5, "add_remove"),
    (1.0, 0.001, 100, 1e-6, "add_remove"),
]
RELATION = {"add_remove": NeighboringRelation.ADD_OR_REMOVE_ONE, "replace_one": NeighboringRelation.REPLACE_ONE}


def _oracle_sigma(target, q, steps, delta, relation, grid=1e-3):
    """dp_accounting's own calibration with its PLD accountant on a fine fixed grid (no code of ours)."""

    def event(sigma):
        return dp_event.SelfComposedDpEvent(dp_event.PoissonSampledDpEvent(q, dp_event.GaussianDpEvent(sigma)), steps)

    return mechanism_calibration.calibrate_dp_mechanism(
        lambda: pld_privacy_accountant.PLDAccountant(RELATION[relation], value_discretization_interval=grid),
        event,
        target,
        delta,
        mechanism_calibration.LowerEndpointAndGuess(0.1, 1.0),
        tol=1e-4 * 0.1,
    )


def _oracle_epsilon(sigma, q, steps, delta, relation):
    """dp_accounting's PLD accountant at the discretisation ``privacy.epsilon`` uses for these inputs."""
    grid = privacy.accountants.pld_grid(noise_multiplier=sigma, sample_rate=q, steps=steps, delta=delta)
    accountant = pld_privacy_accountant.PLDAccountant(RELATION[relation], value_discretization_interval=grid)
    step = dp_event.PoissonSampledDpEvent(q, dp_event.GaussianDpEvent(sigma))
    return accountant.compose(dp_event.SelfComposedDpEvent(step, steps)).get_epsilon(delta)


@pytest.mark.parametrize("target, q, steps, delta, relation", CASES)
def test_calibration_agrees_with_dp_accounting_and_never_exceeds_the_target(target, q, steps, delta, relation):
    sigma = privacy.calibrate(target_epsilon=target, sample_rate=q, steps=steps, delta=delta, neighboring=relation)
    assert _oracle_epsilon(sigma, q, steps, delta, relation) <= target  # the exact accountant, not ours
    smaller = sigma * (1 - 1e-3)
    assert privacy.epsilon(noise_multiplier=smaller, sample_rate=q, steps=steps, delta=delta, neighboring=relation) > (
        target
    ), "not the smallest sigma"
    oracle = _oracle_sigma(target, q, steps, delta, relation)
    assert oracle * (1 - 1e-3) <= sigma <= oracle * 1.01  # pessimistic discretisation: a little more noise, never less


def test_a_fresh_calibration_takes_few_exact_evaluations(monkeypatch):
    target, q, steps, delta, relation = CASES[0]
    privacy.accountants._epsilon_cached.cache_clear()
    calibration._search.cache_clear()
    seen = []
    exact = calibration._epsilon_or_inf

    def counted(accountant, sigma, *args):
        seen.append(sigma)
        return exact(accountant, sigma, *args)

    monkeypatch.setattr(calibration, "_epsilon_or_inf", counted)
    sigma = privacy.calibrate(target_epsilon=target, sample_rate=q, steps=steps, delta=delta, neighboring=relation)
    assert len(set(seen)) <= 5, seen  # the halving walk from 1 and Brent took 9 or more
    monkeypatch.setattr(calibration, "_hint", lambda *a: None)  # the old search, for the same answer
    privacy.accountants._epsilon_cached.cache_clear()
    calibration._search.cache_clear()
    plain = privacy.calibrate(target_epsilon=target, sample_rate=q, steps=steps, delta=delta, neighboring=relation)
    assert sigma == pytest.approx(plain, rel=2e-4)


def test_a_wrong_hint_never_sets_the_noise(monkeypatch):
    target, q, steps, delta, relation = CASES[2]
    kw = dict(sample_rate=q, steps=steps, delta=delta, neighboring=relation)
    right = privacy.calibrate(target_epsilon=target, **kw)
    for factor in (0.5, 2.0):  # a stand-in that understates, or overstates, epsilon by half
        coarse = calibration._coarse_pld_epsilon
        monkeypatch.setattr(calibration, "_coarse_pld_epsilon", lambda *a, f=factor, c=coarse: f * c(*a))
        privacy.accountants._epsilon_cached.cache_clear()
        calibration._search.cache_clear()
        sigma = privacy.calibrate(target_epsilon=target, **kw)
        assert privacy.epsilon(noise_multiplier=sigma, **kw) <= target
        assert sigma == pytest.approx(right, rel=2e-4)
        monkeypatch.setattr(calibration, "_coarse_pld_epsilon", coarse)


def test_a_kept_sigma_is_checked_by_the_exact_bound_before_it_is_used(tmp_path, monkeypatch):
    disk_cache.use(tmp_path / "accounting.sqlite")
    try:
        mechanism = Mechanism(sample_rate=0.01, steps=100, delta=1e-5, noise_multiplier=None)
        sigma = mechanism.calibrated(4.0).noise_multiplier
        inputs = (4.0, 0.01, 100, 1e-5, "pld", "add_remove")
        assert disk_cache.get("sigma", inputs) == sigma

        def refuse(**kw):
            raise AssertionError("calibrated again although a checked sigma was kept")

        monkeypatch.setattr(privacy, "calibrate", refuse)
        assert mechanism.calibrated(4.0).noise_multiplier == sigma  # from the disk
        monkeypatch.undo()
        disk_cache.put("sigma", inputs, sigma * 0.9)  # a kept value that would overshoot (a bug, a stale file)
        again = mechanism.calibrated(4.0)
        assert again.noise_multiplier == pytest.approx(sigma, rel=2e-4) and again.epsilon() <= 4.0
    finally:
        disk_cache.use(None)
