"""Noise for a target epsilon, and epsilon-versus-step curves for planning.

``calibrate`` runs ``dp_accounting.mechanism_calibration.calibrate_dp_mechanism`` (Brent's
method plus a final check that the returned parameter does not exceed the target) for every
backend: a thin ``PrivacyAccountant`` adapter feeds it exactly the ``epsilon`` function of this
package, so ``epsilon(calibrate(...)) <= target`` holds by construction (Opacus #346 was a
calibration that overshot because it checked a different function than it reported).
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np
from dp_accounting import dp_event, mechanism_calibration, privacy_accountant

from workbench.privacy import validation as v
from workbench.privacy.accountants import _RELATION, _epsilon_cached
from workbench.privacy.validation import PrivacyError

SIGMA_SEARCH_START = 1.0
SIGMA_FLOOR = 0.1  # eps at sigma=0.1 is ~100 or more for any realistic q, T, delta
SIGMA_CEILING = 1e4  # opacus gives up at 1e6; at 1e4 eps is ~1e-4 for q=1, T=1e4
SIGMA_RELATIVE_TOLERANCE = 1e-4


class _WorkbenchAccountant(privacy_accountant.PrivacyAccountant):
    """dp_accounting accountant for one DP-SGD run, answering with ``epsilon(accountant=...)``.

    Supports ``SelfComposedDpEvent(PoissonSampledDpEvent(q, GaussianDpEvent(sigma)), T)``.
    """

    def __init__(self, accountant: str, neighboring: str = "add_remove") -> None:
        super().__init__(_RELATION[neighboring])
        self._backend = accountant
        self._neighboring = neighboring
        self._run: Optional[tuple[float, float, int]] = None  # (sigma, q, steps)

    def _maybe_compose(self, event, count, do_compose):
        if isinstance(event, dp_event.SelfComposedDpEvent):
            return self._maybe_compose(event.event, event.count * count, do_compose)
        if isinstance(event, dp_event.PoissonSampledDpEvent) and isinstance(event.event, dp_event.GaussianDpEvent):
            if self._run is not None:
                return self.CompositionErrorDetails(event, "only one DP-SGD run is supported")
            if do_compose:
                self._run = (event.event.noise_multiplier, event.sampling_probability, count)
            return None
        return self.CompositionErrorDetails(event, "only Poisson-sampled Gaussian steps")

    def get_epsilon(self, target_delta: float) -> float:
        if self._run is None:
            return 0.0
        sigma, q, steps = self._run
        return _epsilon_or_inf(self._backend, float(sigma), float(q), int(steps), target_delta, self._neighboring)


def _epsilon_or_inf(
    accountant: str, sigma: float, q: float, steps: int, delta: float, neighboring: str = "add_remove"
) -> float:
    # Where a backend cannot answer (prv's grid too large: only ever at small sigma, where
    # epsilon is huge) the search treats sigma as too small.
    try:
        return _epsilon_cached(accountant, sigma, q, steps, delta, neighboring)
    except PrivacyError:
        return math.inf


def _event(sigma: float, q: float, steps: int) -> dp_event.DpEvent:
    step = dp_event.PoissonSampledDpEvent(q, dp_event.GaussianDpEvent(sigma))
    return dp_event.SelfComposedDpEvent(step, steps)


def calibrate(
    *,
    target_epsilon: float,
    sample_rate: float,
    steps: int,
    delta: float,
    accountant: str = "pld",
    neighboring: str = "add_remove",
) -> float:
    """Smallest noise_multiplier (to a relative 1e-4) whose epsilon is <= ``target_epsilon``.

    Never overshoots: ``epsilon(noise_multiplier=calibrate(...), ...) <= target_epsilon``.
    Only upper-bound accountants calibrate: asking for ``edgeworth`` (an approximation) is
    refused, because noise set by an approximation can spend more than the target (REFERENCES.md
    section 2); calibrate with pld and show Edgeworth beside it.
    The search covers sigma in [0.1, 1e4]: if sigma = 0.1 already meets the target, 0.1 is
    returned; if sigma = 1e4 does not, PrivacyError says what to change.
    """
    target = v.check_real("target_epsilon", target_epsilon)
    if target <= 0:
        raise PrivacyError(f"target_epsilon must be > 0. Found {target}.")
    q = v.check_sample_rate(sample_rate)
    steps = v.check_count("steps", steps, minimum=1)
    delta = v.check_delta(delta)
    accountant = v.check_accountant(accountant)
    if accountant == "edgeworth":
        raise PrivacyError(
            "the edgeworth accountant is an approximation, not an upper bound, and never sets the noise: "
            "calibrate with accountant=pld (or rdp, prv) and compare Edgeworth's estimate beside it."
        )
    neighboring = v.check_neighboring(neighboring, accountant=accountant)

    def eps(sigma: float) -> float:
        return _epsilon_or_inf(accountant, sigma, q, steps, delta, neighboring)

    bracket = _bracket(eps, target, q=q, steps=steps, delta=delta, accountant=accountant)
    if isinstance(bracket, float):
        return bracket
    low, high = bracket
    sigma = mechanism_calibration.calibrate_dp_mechanism(
        make_fresh_accountant=lambda: _WorkbenchAccountant(accountant, neighboring),
        make_event_from_param=lambda s: _event(s, q, steps),
        target_epsilon=target,
        target_delta=delta,
        bracket_interval=mechanism_calibration.ExplicitBracketInterval(low, high),
        tol=SIGMA_RELATIVE_TOLERANCE * low,
    )
    return float(sigma)


def _bracket(eps, target, *, q, steps, delta, accountant):
    """(low, high) with eps(low) > target >= eps(high), or a float answer at the floor."""
    sigma = SIGMA_SEARCH_START
    if eps(sigma) <= target:  # walk down to a sigma that is too small
        while True:
            lower = max(sigma / 2, SIGMA_FLOOR)
            if eps(lower) > target:
                return lower, sigma
            if lower == SIGMA_FLOOR:
                return lower
            sigma = lower
    while eps(sigma) > target:  # walk up to a sigma that is large enough
        if sigma >= SIGMA_CEILING:
            raise PrivacyError(
                f"target_epsilon={target} is unreachable with the {accountant} accountant: "
                f"even noise_multiplier={SIGMA_CEILING:g} gives epsilon "
                f"{eps(sigma):.3g} > target for sample_rate={q}, steps={steps}, delta={delta}. "
                f"Raise target_epsilon or delta, or lower sample_rate or steps."
            )
        sigma = min(sigma * 2, SIGMA_CEILING)
    return sigma / 2, sigma


def epsilon_curve(
    *,
    noise_multiplier: float,
    sample_rate: float,
    steps: int,
    delta: float,
    accountant: str = "pld",
    max_points: int = 200,
    neighboring: str = "add_remove",
) -> list[tuple[int, float]]:
    """(step, epsilon) at up to ``max_points`` evenly spaced steps from 0 to ``steps`` inclusive;
    the last pair is ``(steps, epsilon(steps=steps, ...))``. For plotting a plan.

    Cost per point: pld ~5-50 ms, rdp < 1 ms, edgeworth ~5 ms, prv 0.05-1 s (use few points).
    """
    sigma = v.check_noise_multiplier(noise_multiplier)
    q = v.check_sample_rate(sample_rate)
    steps = v.check_count("steps", steps, minimum=0)
    delta = v.check_delta(delta)
    accountant = v.check_accountant(accountant)
    max_points = v.check_count("max_points", max_points, minimum=1)
    neighboring = v.check_neighboring(neighboring, accountant=accountant)
    if max_points == 1:
        points = [steps]
    else:
        count = min(max_points, steps + 1)
        points = sorted({int(round(s)) for s in np.linspace(0, steps, count)})
    return [(t, _epsilon_cached(accountant, sigma, q, t, delta, neighboring)) for t in points]
