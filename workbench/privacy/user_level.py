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


def example_event_for_person(event: dp_event.DpEvent, examples: int) -> dp_event.DpEvent:
    """An example-level run's mechanism as it bears on one person who had ``examples`` of its examples.

    The rule the ledger combines example-level and user-level runs by (store/ledger.py): the run's examples
    were Poisson-sampled at q and clipped one by one, so a person with m of them has Binomial(m, q) in a
    batch and one step is the ELS mixture of Gaussians with k = m (the analysis above; Ganesh 2024 Thm 3.1),
    a tighter form of group privacy over the person's m examples. A Gaussian without sampling has
    sensitivity m. Valid for add/remove of the person only (the mixture is analysed for add/remove).

    >>> step = dp_event.PoissonSampledDpEvent(0.01, dp_event.GaussianDpEvent(1.0))
    >>> example_event_for_person(dp_event.SelfComposedDpEvent(step, 10), 1).event == step
    True
    >>> example_event_for_person(dp_event.SelfComposedDpEvent(step, 10), 3).event.sensitivities
    [0, 1, 2, 3]
    """
    m = check_count("examples", examples, minimum=1)
    if m == 1 or isinstance(event, dp_event.NonPrivateDpEvent | dp_event.NoOpDpEvent):
        return event
    if isinstance(event, dp_event.SelfComposedDpEvent):
        return dp_event.SelfComposedDpEvent(example_event_for_person(event.event, m), event.count)
    if isinstance(event, dp_event.ComposedDpEvent):
        return dp_event.ComposedDpEvent([example_event_for_person(e, m) for e in event.events])
    if isinstance(event, dp_event.PoissonSampledDpEvent) and isinstance(event.event, dp_event.GaussianDpEvent):
        sensitivities, probs = _mixture_probs(event.sampling_probability, m)
        return dp_event.MixtureOfGaussiansDpEvent(event.event.noise_multiplier, sensitivities, probs)
    if isinstance(event, dp_event.GaussianDpEvent):
        return dp_event.GaussianDpEvent(event.noise_multiplier / m)
    raise PrivacyError(f"cannot bound a {type(event).__name__} for a person with {m} examples (no rule for it).")
