"""User-level privacy when each user contributes up to k examples (REFERENCES.md section 2).

ELS (example-level sampling, Charles et al. 2024, arXiv 2407.07737; Chua et al. 2024, arXiv
2406.14322): examples are Poisson-sampled at rate q and clipped per example, so a user with k
examples has Binomial(k, q) of them in a batch and one step is the mixture of Gaussians
N(0, sigma^2) vs sum_j Binom(j; k, q) N(j, sigma^2). dp_accounting's MixtureOfGaussiansDpEvent
composes it with PLD (TF Privacy ``_compute_dp_sgd_group_privacy_using_pld``; Ganesh 2024, arXiv
2401.10294, Thm 3.1). The older group-privacy bound is much looser; it is here for comparison.
"""

from __future__ import annotations

import functools
import math

from dp_accounting import dp_event
from dp_accounting.pld import privacy_loss_distribution
from scipy import stats

from workbench.privacy.accountants import (
    PLD_GRIDS,
    PrivacyError,
    check_count,
    check_delta,
    check_noise_multiplier,
    check_real,
    check_sample_rate,
    epsilon,
)


def user_epsilon_els(
    *,
    noise_multiplier: float,
    sample_rate: float,
    steps: int,
    delta: float,
    max_examples_per_user: int,
    grid: float | None = None,
) -> float:
    """User-level epsilon at ``delta`` under ELS with at most ``max_examples_per_user`` examples
    per user (PLD of a mixture of Gaussians, composed ``steps`` times).

    With one example per user this is example-level DP and equals ``epsilon(accountant="pld")``.
    ``grid``: the PLD discretisation (see ``mixture_epsilon``); a run passes its planned length's.
    """
    sigma = check_noise_multiplier(noise_multiplier)
    q = check_sample_rate(sample_rate)
    steps = check_count("steps", steps, minimum=0)
    delta = check_delta(delta)
    k = check_count("max_examples_per_user", max_examples_per_user, minimum=1)
    if k == 1:
        return epsilon(noise_multiplier=sigma, sample_rate=q, steps=steps, delta=delta)
    if steps == 0:
        return 0.0
    if sigma == 0:
        return math.inf
    return mixture_epsilon(noise_multiplier=sigma, sample_rate=q, steps=steps, delta=delta, k=k, grid=grid)


def els_beside_group_bound(
    *, noise_multiplier: float, sample_rate: float, steps: int, delta: float, k: int, example_epsilon: float
) -> tuple[float, tuple[float, float]]:
    """(ELS user-level epsilon at ``delta``, the group-privacy bound (eps_k, delta_k) from
    ``example_epsilon``): the pair the Plan tab and the PrivacyPlanner show side by side."""
    user = user_epsilon_els(
        noise_multiplier=noise_multiplier, sample_rate=sample_rate, steps=steps, delta=delta, max_examples_per_user=k
    )
    return user, group_privacy_bound(epsilon=example_epsilon, delta=delta, group_size=k)


def _mixture_probs(q: float, k: int) -> tuple[list[int], list[float]]:
    # Sensitivity j (a user's examples in the batch) with probability Binom(j; k, q).
    sensitivities = list(range(k + 1))
    return sensitivities, [float(p) for p in stats.binom.pmf(sensitivities, k, q)]


def _mixture_event(sigma: float, q: float, steps: int, k: int) -> dp_event.DpEvent:
    """The ELS run as dp_accounting events (what ``mixture_epsilon`` computes; tests compose it)."""
    sensitivities, probs = _mixture_probs(q, k)
    step = dp_event.MixtureOfGaussiansDpEvent(
        standard_deviation=sigma, sensitivities=sensitivities, sampling_probs=probs
    )
    return dp_event.SelfComposedDpEvent(step, steps)


# Building a mixture PLD is slow (about 1 s per 1,000 grid points of loss range): the grid is
# eps/1000 of the example-level epsilon, at least 5e-4. Measured at q=0.01, sigma=1, T=1000:
# the 2e-3 grid is within 0.001 of a 2e-4 grid for k = 1, 2, 4 and costs 0.5-1.5 s.
MIXTURE_GRID_PER_EPSILON = 1 / 1000
MIXTURE_FINEST_GRID = 5e-4


def mixture_grid(*, noise_multiplier: float, sample_rate: float, steps: int, delta: float) -> float:
    """The PLD grid for an ELS run of ``steps`` steps (from its example-level epsilon)."""
    example_level = epsilon(noise_multiplier=noise_multiplier, sample_rate=sample_rate, steps=steps, delta=delta)
    wanted = max(example_level * MIXTURE_GRID_PER_EPSILON, MIXTURE_FINEST_GRID)
    return next((g for g in PLD_GRIDS if g <= wanted), MIXTURE_FINEST_GRID)


@functools.lru_cache(maxsize=16)
def _mixture_one_step(sigma: float, q: float, k: int, grid: float):
    """One ELS step's PLD, built once (the slow part) and self-composed for any number of steps.

    Exactly what ``PLDAccountant(grid).compose(SelfComposedDpEvent(MixtureOfGaussiansDpEvent, T))``
    does inside dp_accounting, with the one-step PLD kept so a run's per-step epsilon costs one
    self-composition (milliseconds) instead of a new mixture PLD (seconds) at every step.
    """
    sensitivities, probs = _mixture_probs(q, k)
    return privacy_loss_distribution.from_mixture_gaussian_mechanism(
        standard_deviation=sigma, sensitivities=sensitivities, sampling_probs=probs, value_discretization_interval=grid
    )


@functools.lru_cache(maxsize=1024)
def mixture_epsilon(
    *, noise_multiplier: float, sample_rate: float, steps: int, delta: float, k: int, grid: float | None = None
) -> float:
    """User-level epsilon of ELS from the mixture PLD (no input checks; use ``user_epsilon_els``).

    ``grid``: the PLD discretisation; by default the one ``mixture_grid`` picks for ``steps``. A run
    tracks every step on the grid of its planned length: a coarser pessimistic grid can only raise
    an early step's epsilon, and the last step's value is exactly the default one.
    """
    grid = grid or mixture_grid(noise_multiplier=noise_multiplier, sample_rate=sample_rate, steps=steps, delta=delta)
    one = _mixture_one_step(noise_multiplier, sample_rate, k, grid)
    return float(one.self_compose(steps).get_epsilon_for_delta(delta))


def group_privacy_bound(*, epsilon: float, delta: float, group_size: int) -> tuple[float, float]:
    """(eps, delta) for a group of ``group_size`` from example-level (epsilon, delta):
    eps_k = k eps, delta_k = delta (e^{k eps} - 1) / (e^eps - 1) (k delta when eps = 0).

    delta_k is capped at 1.0 (a vacuous guarantee). Looser than ``user_epsilon_els``.
    """
    is_inf = isinstance(epsilon, (int, float)) and epsilon == math.inf
    eps = math.inf if is_inf else check_real("epsilon", epsilon)
    if eps < 0:
        raise PrivacyError(f"epsilon must be >= 0. Found {eps}.")
    delta = check_delta(delta)
    k = check_count("group_size", group_size, minimum=1)
    if eps == math.inf:
        return math.inf, 1.0
    if eps == 0:
        return 0.0, min(1.0, k * delta)
    try:
        ratio = math.expm1(k * eps) / math.expm1(eps)
    except OverflowError:
        ratio = math.inf
    return k * eps, min(1.0, delta * ratio)
