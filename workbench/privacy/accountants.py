"""Epsilon of DP-SGD: the Poisson-subsampled Gaussian mechanism composed T times.

One small interface over four backends (REFERENCES.md section 2):

- ``pld`` (default): Google ``dp_accounting.pld`` privacy-loss distributions. Tight, and a
  pessimistic (upper-bound) estimate at any discretisation.
- ``rdp``: Google ``dp_accounting.rdp.RdpAccountant`` (Renyi DP, Balle et al. 2020 Thm 21
  conversion). A looser upper bound; cheap.
- ``prv``: Opacus ``PRVAccountant`` (Gopi et al. 2021), an upper bound within about 0.01 of PLD.
- ``edgeworth``: our Edgeworth expansion (``edgeworth.py``). An *approximation*, not a bound.

Every value is a pure function of (noise_multiplier, sample_rate, steps, delta, accountant,
neighboring), so ``EpsilonTracker`` (called once per training step) and ``epsilon`` always agree.

Neighbouring relation (REFERENCES.md section 7): ``add_remove`` (one unit added or removed,
dp_accounting's default) or ``replace_one`` (one unit replaced by another; the dataset size is
then the same in both worlds and may be published). dp_accounting's PLD analyses both for the
Poisson-subsampled Gaussian; its RDP accountant, Opacus' PRV and the Edgeworth expansion analyse
add/remove only, so asking them for replace_one is refused with a message, never approximated.
"""

from __future__ import annotations

import functools
import math

import numpy as np
from dp_accounting import dp_event, privacy_accountant
from dp_accounting.pld import privacy_loss_distribution
from dp_accounting.rdp import rdp_privacy_accountant

from workbench.privacy import edgeworth
from workbench.privacy.validation import (  # noqa: F401 (re-exported: callers import them from here)
    ACCOUNTANTS,
    NEIGHBORING,
    PrivacyError,
    check_accountant,
    check_count,
    check_delta,
    check_neighboring,
    check_noise_multiplier,
    check_real,
    check_sample_rate,
)

_RELATION = {
    "add_remove": privacy_accountant.NeighboringRelation.ADD_OR_REMOVE_ONE,
    "replace_one": privacy_accountant.NeighboringRelation.REPLACE_ONE,
}


def is_approximation(accountant: str) -> bool:
    """True when ``accountant`` gives an estimate rather than an upper bound (only edgeworth)."""
    return check_accountant(accountant) == "edgeworth"


def bound_accountant(accountant: str) -> str:
    """The upper-bound accountant that sets the noise and stops training when ``accountant`` is asked for:
    itself, or PLD for the Edgeworth approximation, which is only ever shown beside it."""
    return "pld" if is_approximation(accountant) else accountant


# ---------------------------------------------------------------------------------------------
# PLD. The grid (value_discretization_interval) sets accuracy and cost. dp_accounting's
# pessimistic discretisation overstates epsilon, negligibly for eps ~ 1-10 at 1e-3 but by 2x for
# eps ~ 0.06 (sigma=50, q=0.01, T=1e4: 0.125 vs 0.059). Measured over 20 settings, a grid of
# eps/5000 keeps the overstatement under 0.3%. An RDP bound (below; < 1 ms once its one-step
# vector is cached, and never below the true eps) stands in for eps; the grid is also kept to
# at most 20,000 points over one step's loss range, so that one epsilon costs well under 1 s
# (small eps with small sigma then overstates by up to ~5%: q=1e-4, sigma=1, T=1e4).
# Every grid gives an upper bound, and a larger eps (or a smaller sigma, larger q) never gets a
# finer grid, so monotonicity in sigma, q and T is kept.

PLD_GRIDS = (1e-2, 5e-3, 2e-3, 1e-3, 5e-4, 2e-4, 1e-4, 5e-5, 2e-5, 1e-5)
PLD_GRID_PER_EPSILON = 1 / 5000
PLD_MAX_POINTS_PER_STEP = 20_000


def _one_step_loss_width(sigma: float, q: float) -> float:
    # Loss range of one step with 1e-22 tail mass cut (|x| <= 10): about twice the largest loss
    # log(1 - q + q exp(mu (10 + mu/2))), mu = 1/sigma.
    mu = 1.0 / sigma
    log_rest = math.log1p(-q) if q < 1 else -math.inf
    return 2 * float(np.logaddexp(log_rest, math.log(q) + mu * (10 + mu / 2)))


@functools.lru_cache(maxsize=16)
def _pld_one_step(
    sigma: float, q: float, grid: float, neighboring: str = "add_remove"
) -> privacy_loss_distribution.PrivacyLossDistribution:
    # Exactly what PLDAccountant(neighboring_relation) builds for PoissonSampledDpEvent(q,
    # GaussianDpEvent(sigma)); cached because it is half the cost of one epsilon.
    return privacy_loss_distribution.from_gaussian_mechanism(
        standard_deviation=sigma,
        sampling_prob=q,
        value_discretization_interval=grid,
        neighboring_relation=_RELATION[neighboring],
    )


def pld_grid(*, noise_multiplier: float, sample_rate: float, steps: int, delta: float) -> float:
    """The PLD discretisation interval that ``epsilon(accountant="pld")`` uses for these inputs."""
    rough = _rdp_epsilon(noise_multiplier, sample_rate, steps, delta, INTEGER_RDP_ORDERS)
    width = _one_step_loss_width(noise_multiplier, sample_rate)
    wanted = max(rough * PLD_GRID_PER_EPSILON, width / PLD_MAX_POINTS_PER_STEP)
    return next((g for g in PLD_GRIDS if g <= wanted), PLD_GRIDS[-1])


def _pld_epsilon_at(
    sigma: float, q: float, steps: int, delta: float, grid: float, neighboring: str = "add_remove"
) -> float:
    composed = _pld_one_step(sigma, q, grid, neighboring).self_compose(steps)
    return float(composed.get_epsilon_for_delta(delta))


def _pld_epsilon(sigma: float, q: float, steps: int, delta: float, neighboring: str = "add_remove") -> float:
    grid = pld_grid(noise_multiplier=sigma, sample_rate=q, steps=steps, delta=delta)
    return _pld_epsilon_at(sigma, q, steps, delta, grid, neighboring)


# ---------------------------------------------------------------------------------------------
# RDP. RdpAccountant composes T steps as T * (one-step RDP vector); we cache the one-step
# vector and apply dp_accounting's own RDP -> (eps, delta) conversion, which gives bit-for-bit
# the value RdpAccountant().compose(SelfComposedDpEvent(event, T)).get_epsilon(delta) gives.

# Integer orders only: exact closed forms, no fractional-order series (which logs "failed to
# converge" for large q / small sigma). A valid, slightly looser bound; used to pick PLD grids.
INTEGER_RDP_ORDERS = tuple(range(2, 65)) + (128, 256, 512, 1024)


@functools.lru_cache(maxsize=64)
def _rdp_one_step(sigma: float, q: float, orders: tuple[float, ...] | None = None) -> tuple[np.ndarray, np.ndarray]:
    accountant = rdp_privacy_accountant.RdpAccountant(orders=orders)
    accountant.compose(dp_event.PoissonSampledDpEvent(q, dp_event.GaussianDpEvent(sigma)))
    return accountant.orders, accountant.rdp


def _rdp_epsilon(sigma: float, q: float, steps: int, delta: float, orders: tuple[float, ...] | None = None) -> float:
    orders, rdp = _rdp_one_step(sigma, q, orders)
    return float(rdp_privacy_accountant.compute_epsilon(orders, steps * rdp, delta)[0])


# ---------------------------------------------------------------------------------------------
# PRV (Opacus). Its grid grows as (RDP epsilon bound) * sqrt(T) / eps_error; small sigma makes
# it explode (sigma=0.1, q=0.01, T=1000: 2e8 points, many minutes), so refuse beyond a size.

PRV_EPS_ERROR = 0.01  # Opacus default; the reference values were produced with it
PRV_MAX_GRID_POINTS = 2_000_000  # about 1-3 s on one core


def _prv_grid_points(sigma: float, q: float, steps: int, delta: float) -> float:
    # Same domain as opacus PRVAccountant._get_domain (accountants/prv.py).
    from opacus.accountants.analysis.prv import (
        PoissonSubsampledGaussianPRV,
        compute_safe_domain_size,
    )

    delta_error = delta / 1000
    half_width = compute_safe_domain_size(
        prvs=[PoissonSubsampledGaussianPRV(q, sigma)],
        max_self_compositions=[steps],
        eps_error=PRV_EPS_ERROR,
        delta_error=delta_error,
    )
    mesh = PRV_EPS_ERROR / math.sqrt(steps * math.log(12 / delta_error) / 2)
    return 2 * half_width / mesh


def _prv_epsilon(sigma: float, q: float, steps: int, delta: float) -> float:
    from opacus.accountants import PRVAccountant

    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        points = _prv_grid_points(sigma, q, steps, delta)
        if points > PRV_MAX_GRID_POINTS:
            raise PrivacyError(
                f"The prv accountant would need {points:.3g} grid points for "
                f"noise_multiplier={sigma}, sample_rate={q}, steps={steps} (epsilon is very "
                f"large here); use accountant='pld' or 'rdp'."
            )
        accountant = PRVAccountant()
        accountant.history = [(sigma, q, steps)]  # (noise_multiplier, sample_rate, num_steps)
        try:
            return float(accountant.get_epsilon(delta=delta, eps_error=PRV_EPS_ERROR))
        except (RuntimeError, ValueError) as err:
            raise PrivacyError(
                f"The prv accountant failed for noise_multiplier={sigma}, sample_rate={q}, "
                f"steps={steps}, delta={delta} ({err}); use accountant='pld'."
            ) from err


def _edgeworth_epsilon(sigma: float, q: float, steps: int, delta: float) -> float:
    return edgeworth.edgeworth_epsilon(noise_multiplier=sigma, sample_rate=q, steps=steps, delta=delta)


_BACKENDS = {
    "pld": _pld_epsilon,
    "rdp": _rdp_epsilon,
    "prv": _prv_epsilon,
    "edgeworth": _edgeworth_epsilon,
}


@functools.lru_cache(maxsize=4096)
def _epsilon_cached(
    accountant: str, sigma: float, q: float, steps: int, delta: float, neighboring: str = "add_remove"
) -> float:
    if steps == 0:
        return 0.0
    if sigma == 0:
        return math.inf
    if neighboring == "replace_one":  # only PLD (check_neighboring refused the others)
        return _pld_epsilon(sigma, q, steps, delta, "replace_one")
    return _BACKENDS[accountant](sigma, q, steps, delta)


def epsilon(
    *,
    noise_multiplier: float,
    sample_rate: float,
    steps: int,
    delta: float,
    accountant: str = "pld",
    neighboring: str = "add_remove",
) -> float:
    """Epsilon at ``delta`` of DP-SGD: Poisson sampling at ``sample_rate``, Gaussian noise of
    std ``noise_multiplier`` * clip norm, composed ``steps`` times, for ``neighboring`` datasets
    (``add_remove``, dp_accounting's default, or ``replace_one``: pld only).

    ``steps == 0`` gives 0.0; ``noise_multiplier == 0`` (and steps > 0) gives ``math.inf``.
    pld, rdp and prv are upper bounds; edgeworth is an approximation (see ``is_approximation``).

    >>> round(epsilon(noise_multiplier=1.5, sample_rate=0.04, steps=2250, delta=1e-5), 2)
    6.77
    """
    accountant = check_accountant(accountant)
    return _epsilon_cached(
        accountant,
        check_noise_multiplier(noise_multiplier),
        check_sample_rate(sample_rate),
        check_count("steps", steps, minimum=0),
        check_delta(delta),
        check_neighboring(neighboring, accountant=accountant),
    )


class EpsilonTracker:
    """Epsilon spent after each step of one training run (fixed sigma, q, delta).

    ``epsilon_at(t)`` returns exactly ``epsilon(...)`` for ``steps=t``; values are cached, and the
    one-step PLD / RDP that every call shares is cached too, so a new step costs one PLD
    self-composition (pld: 15-60 ms; up to ~130 ms measured on a busy 2-core machine), an RDP
    conversion (rdp: < 1 ms) or an Edgeworth root (~5 ms). prv costs 0.1-3 s per new step: use
    pld for live tracking, or ask for epsilon every k steps when steps are very short.
    """

    def __init__(
        self,
        *,
        noise_multiplier: float,
        sample_rate: float,
        delta: float,
        accountant: str = "pld",
        neighboring: str = "add_remove",
    ) -> None:
        self.noise_multiplier = check_noise_multiplier(noise_multiplier)
        self.sample_rate = check_sample_rate(sample_rate)
        self.delta = check_delta(delta)
        self.accountant = check_accountant(accountant)
        self.neighboring = check_neighboring(neighboring, accountant=self.accountant)
        self._cache: dict[int, float] = {}

    def epsilon_at(self, steps: int) -> float:
        """Epsilon after ``steps`` steps (cached)."""
        steps = check_count("steps", steps, minimum=0)
        if steps not in self._cache:
            self._cache[steps] = _epsilon_cached(
                self.accountant, self.noise_multiplier, self.sample_rate, steps, self.delta, self.neighboring
            )
        return self._cache[steps]

    def __repr__(self) -> str:
        return (
            f"EpsilonTracker(noise_multiplier={self.noise_multiplier}, "
            f"sample_rate={self.sample_rate}, delta={self.delta}, "
            f"accountant={self.accountant!r}, neighboring={self.neighboring!r})"
        )
