"""Noise for a target epsilon, and epsilon-versus-step curves for planning.

``calibrate`` runs ``dp_accounting.mechanism_calibration.calibrate_dp_mechanism`` (Brent's
method plus a final check that the returned parameter does not exceed the target) for every
backend: a thin ``PrivacyAccountant`` adapter feeds it exactly the ``epsilon`` function of this
package, so ``epsilon(calibrate(...)) <= target`` holds by construction (Opacus #346 was a
calibration that overshot because it checked a different function than it reported).

A PLD epsilon costs tenths of a second (one step's privacy loss distribution at the run's grid), so the search
starts near the answer: a PLD about 50 times coarser (tens of milliseconds) gives a hint and its slope, a Newton and
a secant step on log epsilon against log sigma with the exact accountant land within the tolerance, and the two
ends around that estimate are the bracket: 3-4 exact evaluations instead of 9-12 from sigma = 1. The hint only
places the search; every end of the bracket and the answer are checked with the exact accountant, and without a
hint (rdp, or a coarse search that fails) the search walks from 1 as before.
"""

from __future__ import annotations

import functools
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
HINT_GRID_FACTOR = 50  # the hint's PLD grid is this many times coarser than the exact one (tens of ms an epsilon)
HINT_MAX_POINTS_PER_STEP = 500  # and spans one step's loss range in at most this many points
SECANT_STEPS = 4  # exact evaluations spent walking from the hint to the root before the final bracket


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
    return _search(target, q, steps, delta, accountant, neighboring)


@functools.lru_cache(maxsize=256)
def _search(target: float, q: float, steps: int, delta: float, accountant: str, neighboring: str) -> float:
    """``calibrate`` for checked inputs (cached: a pure function of them; a run's start and the Plan tab ask again)."""

    def eps(sigma: float) -> float:
        return _epsilon_or_inf(accountant, sigma, q, steps, delta, neighboring)

    bracket = _near_bracket(eps, target, _hint(accountant, target, q, steps, delta, neighboring))
    if bracket is None:  # no hint, or the search near it failed: the halving and doubling walk from 1
        bracket = _bracket(eps, target, q=q, steps=steps, delta=delta, accountant=accountant)
    if isinstance(bracket, float):
        return bracket
    low, high = bracket
    if high / low - 1 <= SIGMA_RELATIVE_TOLERANCE:  # already as narrow as asked: its end within the target
        return float(high)
    sigma = mechanism_calibration.calibrate_dp_mechanism(
        make_fresh_accountant=lambda: _WorkbenchAccountant(accountant, neighboring),
        make_event_from_param=lambda s: _event(s, q, steps),
        target_epsilon=target,
        target_delta=delta,
        bracket_interval=mechanism_calibration.ExplicitBracketInterval(low, high),
        tol=SIGMA_RELATIVE_TOLERANCE * low,
    )
    return float(sigma)


def _coarse_pld_epsilon(sigma: float, q: float, steps: int, delta: float, neighboring: str, target: float) -> float:
    """PLD's epsilon on a grid about HINT_GRID_FACTOR times coarser than ``epsilon``'s near ``target`` (and at most
    HINT_MAX_POINTS_PER_STEP points over one step's loss range): a cheap stand-in used only to place the exact
    search (``_hint``), never as an answer. The exact accountant's one-step PLD, built without its cache: the
    coarse ones would push the exact ones out of it."""
    from workbench.privacy.accountants import PLD_GRID_PER_EPSILON, _one_step_loss_width, _pld_one_step

    grid = max(
        target * PLD_GRID_PER_EPSILON * HINT_GRID_FACTOR, _one_step_loss_width(sigma, q) / HINT_MAX_POINTS_PER_STEP
    )
    one = _pld_one_step.__wrapped__(sigma, q, grid, neighboring)
    return float(one.self_compose(steps).get_epsilon_for_delta(delta))


def _hint(
    accountant: str, target: float, q: float, steps: int, delta: float, neighboring: str
) -> tuple[float, float] | None:
    """Where the exact search starts: (sigma, d log epsilon / d log sigma there) of a coarse PLD reaching
    ``target`` (sigma to 0.1%), for the accountants whose exact epsilon costs tenths of a second (pld, prv); None
    for rdp (cheap: the plain search) or when the coarse search fails. Only a starting point: the answer is always
    the exact accountant's."""
    if accountant == "rdp":
        return None
    from scipy import optimize

    def coarse(log_sigma: float) -> float:
        try:
            return _coarse_pld_epsilon(math.exp(log_sigma), q, steps, delta, neighboring, target)
        except (ArithmeticError, ValueError):
            return math.inf

    def gap(log_sigma: float) -> float:
        return coarse(log_sigma) - target

    try:
        low = high = 0.0  # log sigma: walk from sigma = 1 to a bracket, then Brent to 0.1%
        if gap(0.0) > 0:
            while gap(high) > 0:
                low, high = high, high + math.log(2)
                if high > math.log(SIGMA_CEILING):
                    return None
        else:
            while gap(low) <= 0:
                high, low = low, low - math.log(2)
                if low < math.log(SIGMA_FLOOR):
                    return None
        x = optimize.brentq(gap, low, high, xtol=1e-3)
        e0, e1 = coarse(x), coarse(x + 0.01)
        if not (0 < e1 < e0 < math.inf):
            return None
        return math.exp(x), (math.log(e1) - math.log(e0)) / 0.01
    except (ValueError, RuntimeError):
        return None


def _near_bracket(eps, target: float, hint: tuple[float, float] | None) -> tuple[float, float] | None:
    """(low, high) with eps(low) > target >= eps(high) and high / low - 1 within the calibration's tolerance,
    found with about four exact evaluations from ``hint`` (sigma, slope): a Newton step with the hint's slope and
    a secant step, on log epsilon against log sigma (smooth), then the two ends around the estimate. None when
    there is no hint or this does not bracket within its few steps (the caller then walks from 1)."""
    if hint is None or not SIGMA_FLOOR < hint[0] < SIGMA_CEILING or not hint[1] < 0:
        return None
    rel = SIGMA_RELATIVE_TOLERANCE / 4
    x, slope = math.log(hint[0]), hint[1]
    previous = None
    for _ in range(SECANT_STEPS):
        e = eps(math.exp(x))
        if not (0 < e < math.inf):
            return None
        y = math.log(e / target)
        secant = previous is not None and y != previous[1]
        if secant:
            slope = (y - previous[1]) / (x - previous[0])
        x, previous = x - y / slope, (x, y)
        if abs(x - previous[0]) < (1e-3 if secant else rel):  # a secant step this short leaves ~1e-6 or less
            break
    last = math.exp(previous[0])
    if abs(x - previous[0]) < rel:  # the last point evaluated is one end already: one more evaluation
        other = math.exp(previous[0] + (2 * rel if previous[1] > 0 else -2 * rel))
        low, high = sorted((last, other))
        if eps(low) > target >= eps(high):
            return low, high
    width = rel  # the two ends around the estimate, widened while they do not bracket
    for _ in range(6):
        low, high = math.exp(x - width), math.exp(x + width)
        if eps(low) > target >= eps(high):
            return low, high
        width *= 8
    return None


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
