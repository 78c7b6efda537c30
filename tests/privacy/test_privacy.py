"""Privacy accounting: library oracles, published reference values, one contract per backend.

Reference values: REFERENCES.md section 3 (Opacus, TF Privacy and jax_privacy tests).
"""

from __future__ import annotations

import doctest
import importlib
import math

import numpy as np
import pytest
from dp_accounting import dp_event
from dp_accounting.pld import pld_privacy_accountant
from dp_accounting.rdp import rdp_privacy_accountant
from scipy import integrate, optimize, stats

from workbench.privacy import (
    ACCOUNTANTS,
    EpsilonTracker,
    PrivacyError,
    accountants,
    calibrate,
    edgeworth,
    epsilon,
    epsilon_curve,
    group_privacy_bound,
    is_approximation,
    user_epsilon_els,
    user_level,
)

# Opacus's PRV sizes its grid with its own RDP accountant, which warns about its order range;
# that does not touch the reported epsilon.
pytestmark = pytest.mark.filterwarnings("ignore:Optimal order is the:UserWarning")


def dpsgd_event(q: float, sigma: float, steps: int) -> dp_event.DpEvent:
    step = dp_event.PoissonSampledDpEvent(q, dp_event.GaussianDpEvent(sigma))
    return dp_event.SelfComposedDpEvent(step, steps)


# ---------------------------------------------------------------------------------------------
# Published reference values (REFERENCES.md section 3).


@pytest.mark.parametrize(
    "q, sigma, steps, delta, expected",
    [
        (0.04, 1.5, 2250, 1e-5, 7.32911117143),  # opacus tests/accountants_test.py
        (0.0025, 1.3, 6000, 1e-5, 0.7242234026),  # tensorflow_privacy compute_dp_sgd_privacy
        (0.001, 1.0, 30000, 1e-7, 1.4154988495),
        (0.01, 0.7, 120, 1e-5, 3.2392676),
    ],
)
def test_rdp_reference_values(q, sigma, steps, delta, expected):
    got = epsilon(noise_multiplier=sigma, sample_rate=q, steps=steps, delta=delta, accountant="rdp")
    assert got == pytest.approx(expected, rel=1e-3)


def test_prv_reference_value():
    # Opacus's test uses int(90 // 0.04) == 2249 steps.
    got = epsilon(noise_multiplier=1.5, sample_rate=0.04, steps=2249, delta=1e-5, accountant="prv")
    assert got == pytest.approx(6.777395712150674, abs=0.01)


@pytest.mark.parametrize(
    "q, sigma, steps, delta, expected, tolerance",
    [
        (0.01, 0.7, 120, 1e-5, 2.4612381, 0.005),  # tensorflow_privacy, PLD half of the pair
        (0.1, 3.0, 512, 1e-6, 3.77, 0.02),  # jax_privacy accounting.py doctest
    ],
)
def test_pld_reference_values(q, sigma, steps, delta, expected, tolerance):
    got = epsilon(noise_multiplier=sigma, sample_rate=q, steps=steps, delta=delta)
    assert got == pytest.approx(expected, abs=tolerance)


def test_tf_privacy_pair_pld_is_tighter_than_rdp():
    kwargs = dict(noise_multiplier=0.7, sample_rate=0.01, steps=120, delta=1e-5)
    assert epsilon(**kwargs) < epsilon(**kwargs, accountant="rdp")


def test_docstring_examples():
    assert doctest.testmod(accountants).failed == 0


# ---------------------------------------------------------------------------------------------
# pld and rdp are dp_accounting, not our re-derivation.

DIRECT_SETTINGS = [
    (0.04, 1.5, 2250, 1e-5),
    (0.01, 1.0, 1000, 1e-6),
    (0.1, 3.0, 512, 1e-6),
    (0.2, 1.2, 50, 1e-5),
]


@pytest.mark.parametrize("q, sigma, steps, delta", DIRECT_SETTINGS)
def test_rdp_equals_rdp_accountant(q, sigma, steps, delta):
    direct = rdp_privacy_accountant.RdpAccountant().compose(dpsgd_event(q, sigma, steps))
    ours = epsilon(noise_multiplier=sigma, sample_rate=q, steps=steps, delta=delta, accountant="rdp")
    assert ours == pytest.approx(direct.get_epsilon(delta), rel=1e-12)


@pytest.mark.parametrize("q, sigma, steps, delta", DIRECT_SETTINGS)
def test_pld_equals_pld_accountant(q, sigma, steps, delta):
    ours = epsilon(noise_multiplier=sigma, sample_rate=q, steps=steps, delta=delta)
    # Same grid: the same computation (up to float rounding of composing with the identity).
    grid = accountants.pld_grid(noise_multiplier=sigma, sample_rate=q, steps=steps, delta=delta)
    same = pld_privacy_accountant.PLDAccountant(value_discretization_interval=grid)
    same_eps = same.compose(dpsgd_event(q, sigma, steps)).get_epsilon(delta)
    assert ours == pytest.approx(same_eps, rel=1e-9)
    # dp_accounting's default grid (1e-4): within 1%.
    default = pld_privacy_accountant.PLDAccountant().compose(dpsgd_event(q, sigma, steps))
    assert ours == pytest.approx(default.get_epsilon(delta), rel=0.01)


def test_pld_grid_keeps_small_epsilons_tight():
    # dp_accounting at a fixed 1e-3 grid reports 0.125 here (pessimistic discretisation); the
    # adaptive grid stays within 1% of a 1e-5-grid oracle (0.0587), and not below it.
    kwargs = dict(noise_multiplier=50.0, sample_rate=0.01, steps=10000, delta=1e-5)
    event = dpsgd_event(0.01, 50.0, 10000)
    fine = pld_privacy_accountant.PLDAccountant(value_discretization_interval=1e-5)
    coarse = pld_privacy_accountant.PLDAccountant(value_discretization_interval=1e-3)
    oracle = fine.compose(event).get_epsilon(1e-5)
    ours = epsilon(**kwargs)
    assert oracle * (1 - 1e-9) <= ours <= oracle * 1.01
    assert coarse.compose(event).get_epsilon(1e-5) > 1.5 * ours


# ---------------------------------------------------------------------------------------------
# Calibration.

CALIBRATION = dict(target_epsilon=8.0, sample_rate=0.04, steps=int(90 / 0.04), delta=1e-5)


@pytest.mark.parametrize("accountant, expected", [("rdp", 1.416), ("prv", 1.34765625)])
def test_calibration_matches_opacus(accountant, expected):
    # Opacus stops its bisection within 0.01 of the target eps, so it sits slightly above ours.
    assert CALIBRATION["steps"] == 2250
    sigma = calibrate(**CALIBRATION, accountant=accountant)
    assert sigma == pytest.approx(expected, rel=2e-3)


@pytest.mark.parametrize("accountant", [a for a in ACCOUNTANTS if a != "edgeworth"])
def test_calibration_never_overshoots_and_is_smallest(accountant):
    sigma = calibrate(**CALIBRATION, accountant=accountant)
    kwargs = dict(sample_rate=0.04, steps=2250, delta=1e-5, accountant=accountant)
    assert epsilon(noise_multiplier=sigma, **kwargs) <= CALIBRATION["target_epsilon"]
    assert epsilon(noise_multiplier=sigma * (1 - 1e-3), **kwargs) > CALIBRATION["target_epsilon"]


def test_edgeworth_never_calibrates():
    # An approximation can understate epsilon: the noise it set spent 8.26 by PLD when asked for 8.
    with pytest.raises(PrivacyError, match="approximation"):
        calibrate(**CALIBRATION, accountant="edgeworth")


def test_calibration_pld_sits_between_rdp_and_nothing():
    # PLD is tighter than RDP, so it needs less noise for the same target.
    assert calibrate(**CALIBRATION) < calibrate(**CALIBRATION, accountant="rdp")


def test_calibration_unreachable_target_is_a_message():
    with pytest.raises(PrivacyError, match="unreachable"):
        calibrate(target_epsilon=1e-6, sample_rate=1.0, steps=10000, delta=1e-5, accountant="rdp")


def test_calibration_huge_target_returns_floor():
    sigma = calibrate(target_epsilon=1e4, sample_rate=0.01, steps=10, delta=1e-5, accountant="rdp")
    # (the function calibrate shadows the module of the same name on the package)
    assert sigma == importlib.import_module("workbench.privacy.calibrate").SIGMA_FLOOR


@pytest.mark.parametrize(
    "bad, match",
    [
        (dict(target_epsilon=0.0), "target_epsilon"),
        (dict(target_epsilon=-1.0), "target_epsilon"),
        (dict(steps=0), "steps"),
        (dict(sample_rate=0.0), "sample_rate"),
        (dict(accountant="moments"), "pld, rdp, prv, edgeworth"),
    ],
)
def test_calibration_bad_input(bad, match):
    with pytest.raises(PrivacyError, match=match):
        calibrate(**{**CALIBRATION, **bad})


# ---------------------------------------------------------------------------------------------
# One contract, every backend (dp_accounting style).

BASE = dict(noise_multiplier=1.0, sample_rate=0.01, steps=300, delta=1e-5)


class AccountantContract:
    accountant: str = ""

    def eps(self, **overrides) -> float:
        return epsilon(**{**BASE, **overrides}, accountant=self.accountant)

    def test_decreasing_in_noise(self):
        values = [self.eps(noise_multiplier=s) for s in (0.8, 1.0, 1.5, 3.0)]
        assert all(a > b for a, b in zip(values, values[1:])), values

    def test_increasing_in_steps(self):
        values = [self.eps(steps=t) for t in (50, 150, 300, 600)]
        assert all(a < b for a, b in zip(values, values[1:])), values

    def test_increasing_in_sample_rate(self):
        values = [self.eps(sample_rate=q) for q in (0.005, 0.01, 0.02)]
        assert all(a < b for a, b in zip(values, values[1:])), values

    def test_decreasing_in_delta(self):
        assert self.eps(delta=1e-3) < self.eps(delta=1e-5)

    def test_zero_steps_is_zero(self):
        assert self.eps(steps=0) == 0.0
        assert self.eps(steps=0, noise_multiplier=0.0) == 0.0

    def test_zero_noise_is_infinite(self):
        assert self.eps(noise_multiplier=0.0) == math.inf

    def test_returns_float(self):
        assert type(self.eps()) is float

    @pytest.mark.parametrize(
        "bad, words",
        [
            (dict(sample_rate=1.5), ["sample_rate", "1.5"]),
            (dict(sample_rate=0.0), ["sample_rate", "0.0"]),
            (dict(noise_multiplier=-1.0), ["noise_multiplier", "-1.0"]),
            (dict(noise_multiplier=float("nan")), ["noise_multiplier", "nan"]),
            (dict(noise_multiplier="1.0"), ["noise_multiplier", "'1.0'"]),
            (dict(steps=-1), ["steps", "-1"]),
            (dict(steps=2.5), ["steps", "2.5"]),
            (dict(steps=True), ["steps", "True"]),
            (dict(delta=0.0), ["delta", "0.0"]),
            (dict(delta=1.0), ["delta", "1.0"]),
        ],
    )
    def test_bad_input_names_the_value(self, bad, words):
        with pytest.raises(PrivacyError) as info:
            self.eps(**bad)
        for word in words:
            assert word in str(info.value)

    def test_numpy_numbers_are_accepted(self):
        value = self.eps(noise_multiplier=np.float32(1.0), steps=np.int64(300))
        assert value == pytest.approx(self.eps(), rel=1e-6)

    def test_tracker_equals_epsilon(self):
        run = {k: BASE[k] for k in ("noise_multiplier", "sample_rate", "delta")}
        tracker = EpsilonTracker(**run, accountant=self.accountant)
        for t in (0, 1, 150, 300):
            assert tracker.epsilon_at(t) == self.eps(steps=t)

    def test_curve(self):
        curve = epsilon_curve(**BASE, accountant=self.accountant, max_points=4)
        assert len(curve) <= 4
        assert curve[0] == (0, 0.0)
        assert curve[-1] == (300, self.eps())
        assert all(a[1] <= b[1] for a, b in zip(curve, curve[1:]))

    def test_is_approximation(self):
        assert is_approximation(self.accountant) == (self.accountant == "edgeworth")


class TestPldContract(AccountantContract):
    accountant = "pld"


class TestRdpContract(AccountantContract):
    accountant = "rdp"


class TestPrvContract(AccountantContract):
    accountant = "prv"


class TestEdgeworthContract(AccountantContract):
    accountant = "edgeworth"


def test_contract_covers_every_accountant():
    covered = {c.accountant for c in AccountantContract.__subclasses__()}
    assert covered == set(ACCOUNTANTS)


def test_default_accountant_is_pld():
    assert ACCOUNTANTS[0] == "pld"
    assert epsilon(**BASE) == epsilon(**BASE, accountant="pld")


def test_unknown_accountant_lists_choices():
    with pytest.raises(PrivacyError, match="pld, rdp, prv, edgeworth"):
        epsilon(**BASE, accountant="gdp")
    with pytest.raises(PrivacyError, match="'PLD'"):
        is_approximation("PLD")


def test_privacy_error_is_a_value_error():
    assert issubclass(PrivacyError, ValueError)


def test_pld_is_tighter_than_rdp_and_close_to_prv():
    pld = epsilon(**BASE)
    assert pld < epsilon(**BASE, accountant="rdp")
    assert pld == pytest.approx(epsilon(**BASE, accountant="prv"), abs=0.02)


def test_prv_refuses_settings_that_would_take_minutes():
    # sigma=0.1, q=0.01, T=1000 needs 2e8 grid points in Opacus's PRV (many minutes).
    with pytest.raises(PrivacyError, match="pld"):
        epsilon(noise_multiplier=0.1, sample_rate=0.01, steps=1000, delta=1e-5, accountant="prv")


# ---------------------------------------------------------------------------------------------
# Tracker and curve.


def test_tracker_caches(monkeypatch):
    calls = []
    backend = accountants._BACKENDS["rdp"]
    monkeypatch.setitem(accountants._BACKENDS, "rdp", lambda *a: calls.append(a) or backend(*a))
    accountants._epsilon_cached.cache_clear()
    tracker = EpsilonTracker(noise_multiplier=1.1, sample_rate=0.02, delta=1e-5, accountant="rdp")
    first = [tracker.epsilon_at(t) for t in range(1, 50)]
    again = [tracker.epsilon_at(t) for t in range(1, 50)]
    assert first == again and len(calls) == 49
    assert first == sorted(first)


def test_tracker_validates():
    with pytest.raises(PrivacyError, match="delta"):
        EpsilonTracker(noise_multiplier=1.0, sample_rate=0.01, delta=2.0)
    tracker = EpsilonTracker(noise_multiplier=1.0, sample_rate=0.01, delta=1e-5)
    with pytest.raises(PrivacyError, match="steps"):
        tracker.epsilon_at(-3)


def test_curve_is_evenly_spaced_and_ends_at_the_last_step():
    curve = epsilon_curve(
        noise_multiplier=1.0, sample_rate=0.01, steps=2250, delta=1e-5, accountant="rdp", max_points=200
    )
    steps = [t for t, _ in curve]
    assert len(curve) <= 200 and steps[0] == 0 and steps[-1] == 2250
    assert max(np.diff(steps)) - min(np.diff(steps)) <= 1
    assert curve[-1][1] == epsilon(noise_multiplier=1.0, sample_rate=0.01, steps=2250, delta=1e-5, accountant="rdp")
    assert all(a[1] < b[1] for a, b in zip(curve, curve[1:]))


def test_curve_short_runs_and_edges():
    kwargs = dict(noise_multiplier=1.0, sample_rate=0.01, delta=1e-5, accountant="rdp")
    assert [t for t, _ in epsilon_curve(**kwargs, steps=5)] == [0, 1, 2, 3, 4, 5]
    assert epsilon_curve(**kwargs, steps=0) == [(0, 0.0)]
    assert epsilon_curve(**kwargs, steps=40, max_points=1) == [(40, epsilon(**kwargs, steps=40))]
    with pytest.raises(PrivacyError, match="max_points"):
        epsilon_curve(**kwargs, steps=40, max_points=0)


def test_pld_curve_matches_epsilon_at_every_point():
    kwargs = dict(noise_multiplier=1.2, sample_rate=0.02, delta=1e-5)
    for t, eps in epsilon_curve(**kwargs, steps=1000, max_points=5):
        assert eps == epsilon(**kwargs, steps=t)


# ---------------------------------------------------------------------------------------------
# Edgeworth.


@pytest.mark.parametrize(
    "q, sigma, steps",
    [
        (0.04, 1.5, 2250),
        (0.01, 1.0, 10000),
        (0.004, 0.8, 5000),
        (0.01, 2.0, 10000),
        (0.1, 1.0, 1000),
    ],
)
def test_edgeworth_close_to_pld_for_long_runs(q, sigma, steps):
    # Measured over a grid of q, sigma >= 0.8, T >= 1000: within 7% either side (edgeworth.py).
    kwargs = dict(noise_multiplier=sigma, sample_rate=q, steps=steps, delta=1e-5)
    assert epsilon(**kwargs, accountant="edgeworth") == pytest.approx(epsilon(**kwargs), rel=0.07)


def gaussian_epsilon(mu: float, delta: float) -> float:
    """Exact epsilon of a Gaussian mechanism with mu = sensitivity / std (Balle & Wang 2018)."""

    def gap(eps):
        first = stats.norm.cdf(-eps / mu + mu / 2)
        return first - math.exp(eps + stats.norm.logcdf(-eps / mu - mu / 2)) - delta

    return optimize.brentq(gap, 0, mu * mu / 2 + 20 * mu + 1, xtol=1e-12)


@pytest.mark.parametrize("sigma, steps", [(1.0, 1), (0.3, 1), (5.0, 100), (20.0, 10000)])
def test_edgeworth_is_exact_without_subsampling(sigma, steps):
    # q = 1: the loss is Gaussian, higher cumulants vanish, the expansion is exact.
    got = epsilon(noise_multiplier=sigma, sample_rate=1.0, steps=steps, delta=1e-5, accountant="edgeworth")
    assert got == pytest.approx(gaussian_epsilon(math.sqrt(steps) / sigma, 1e-5), rel=1e-6)


@pytest.mark.parametrize("q, sigma", [(0.01, 1.0), (0.3, 0.5), (0.999, 2.0), (0.01, 50.0)])
def test_edgeworth_cumulants_match_quadrature(q, sigma):
    mu = 1 / sigma

    def loss(x):
        return float(edgeworth.privacy_loss(np.array(x), sample_rate=q, noise_multiplier=sigma))

    def moment(k, density, mean=0.0):
        f = lambda x: (loss(x) - mean) ** k * density(x)
        return integrate.quad(f, -40, 40 + mu, points=[0, mu], limit=400, epsabs=1e-300)[0]

    null = stats.norm(0, 1).pdf
    alternative = lambda x: (1 - q) * stats.norm.pdf(x) + q * stats.norm.pdf(x, mu)
    x_cum, y_cum = edgeworth.step_cumulants(q, sigma)
    for density, cum in ((null, x_cum), (alternative, y_cum)):
        m1 = moment(1, density)
        m2, m3, m4 = (moment(k, density, m1) for k in (2, 3, 4))
        expected = (m1, m2, m3, m4 - 3 * m2 * m2)
        for got, want in zip(cum, expected):
            assert got == pytest.approx(want, rel=1e-6, abs=1e-14 * max(1, abs(m2)))
    # The likelihood ratio integrates to one under the null: E_X[exp(l)] = 1.
    mass = integrate.quad(lambda x: math.exp(loss(x)) * null(x), -40, 40 + mu)[0]
    assert mass == pytest.approx(1)


@pytest.mark.parametrize(
    "q, sigma, steps",
    [
        (0.999, 0.3, 1),
        (1.0, 0.3, 1),
        (0.5, 0.3, 1),
        (0.01, 50.0, 1),
        (1e-5, 50.0, 1),
        (0.01, 0.3, 10000),
        (1.0, 0.3, 10000),
        (0.999, 50.0, 10000),
        (1e-9, 1.0, 1),
        (0.01, 1e4, 1),
    ],
)
def test_edgeworth_extremes_give_a_float_or_a_message(q, sigma, steps):
    try:
        value = epsilon(noise_multiplier=sigma, sample_rate=q, steps=steps, delta=1e-5, accountant="edgeworth")
    except PrivacyError as err:
        assert "pld" in str(err)
    else:
        assert type(value) is float and math.isfinite(value) and value >= 0


def test_edgeworth_short_runs_understate_epsilon():
    # Recorded behaviour, not a virtue: with few steps the expansion is far *below* PLD
    # (T=1: 19% of PLD; T=120: 64%), and improves with T (T=1000: within a few %).
    ratios = {}
    for steps in (1, 120, 1000):
        kwargs = dict(noise_multiplier=0.7, sample_rate=0.01, steps=steps, delta=1e-5)
        ratios[steps] = epsilon(**kwargs, accountant="edgeworth") / epsilon(**kwargs)
    assert ratios[1] < 0.3
    assert 0.5 < ratios[120] < 0.8
    assert 0.9 < ratios[1000] < 1.07


# ---------------------------------------------------------------------------------------------
# User level.

ELS = dict(noise_multiplier=1.0, sample_rate=0.01, steps=1000, delta=1e-6)


def test_els_one_example_per_user_is_example_level():
    assert user_epsilon_els(**ELS, max_examples_per_user=1) == epsilon(**ELS)


def test_els_mixture_path_with_one_example_matches_pld():
    # The MoG event with sensitivities {0, 1} is the subsampled Gaussian.
    mixture = user_level.mixture_epsilon(**ELS, k=1)
    assert mixture == pytest.approx(epsilon(**ELS), rel=5e-3)


@pytest.mark.parametrize("k, expected", [(1, 2.12), (2, 4.55), (4, 10.0)])
def test_els_reference_values(k, expected):
    assert user_epsilon_els(**ELS, max_examples_per_user=k) == pytest.approx(expected, rel=0.02)


def test_group_privacy_is_looser_than_els():
    example_eps = epsilon(**ELS)
    for k in (2,):  # k=4 holds too (6.6 <= 8.5) but costs another few seconds
        group_eps, group_delta = group_privacy_bound(epsilon=example_eps, delta=ELS["delta"], group_size=k)
        els = user_epsilon_els(**{**ELS, "delta": group_delta}, max_examples_per_user=k)
        assert els <= group_eps


def test_group_privacy_formula():
    eps, delta = group_privacy_bound(epsilon=1.0, delta=1e-6, group_size=3)
    assert eps == 3.0
    assert delta == pytest.approx(1e-6 * (math.e**3 - 1) / (math.e - 1))
    assert group_privacy_bound(epsilon=2.0, delta=1e-5, group_size=1) == (2.0, pytest.approx(1e-5))
    assert group_privacy_bound(epsilon=0.0, delta=1e-6, group_size=4) == (0.0, pytest.approx(4e-6))
    assert group_privacy_bound(epsilon=50.0, delta=1e-6, group_size=40) == (2000.0, 1.0)
    assert group_privacy_bound(epsilon=math.inf, delta=1e-6, group_size=2) == (math.inf, 1.0)


def test_user_level_bad_input():
    with pytest.raises(PrivacyError, match="max_examples_per_user"):
        user_epsilon_els(**ELS, max_examples_per_user=0)
    with pytest.raises(PrivacyError, match="group_size"):
        group_privacy_bound(epsilon=1.0, delta=1e-6, group_size=0)
    with pytest.raises(PrivacyError, match="epsilon"):
        group_privacy_bound(epsilon=-1.0, delta=1e-6, group_size=2)


def test_els_edges():
    assert user_epsilon_els(**{**ELS, "steps": 0}, max_examples_per_user=3) == 0.0
    assert user_epsilon_els(**{**ELS, "noise_multiplier": 0.0}, max_examples_per_user=3) == math.inf
