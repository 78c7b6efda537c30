"""The privacy mechanism of DP-SGD as one frozen value: everything an epsilon depends on, and nothing else.

``Mechanism`` is Poisson sampling at rate q of a Gaussian with multiplier sigma, T times, at delta, under one
neighbouring relation, for one unit (an example; a user capped at k examples with ELS; a Poisson-sampled user
with ULS), analysed by one upper-bound accountant (``privacy.bound_accountant``: an approximation such as
Edgeworth's is only ever a ``comparison`` beside it). Every surface (the CLI, the Plan tab, the planner
widget, the trainer's budget stop, the report, the ledger, the recommendation) asks it for epsilon, so they
cannot disagree for the same settings. A run's plan (``planning.plan.PrivacyPlan``) is a mechanism plus the
target and the published population.

``noise_multiplier=None`` is a mechanism whose sigma is still to be calibrated (``calibrated(target)``);
0 is a non-private run (epsilon infinite).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass

from workbench import privacy
from workbench.privacy.user_level import mixture_grid


@dataclass(frozen=True)
class Mechanism:
    sample_rate: float  # q: of examples, or of users under ULS
    steps: int  # T
    delta: float
    noise_multiplier: float | None  # sigma (the effective multiplier under per-layer allocation); None: to calibrate
    accountant: str = "pld"  # the upper bound that sets sigma and stops the run
    neighboring: str = "add_remove"
    privacy_unit: str = "example"  # "example" or "user"
    user_sampling: str | None = None  # "els" or "uls" when privacy_unit == "user"
    max_examples_per_user: int | None = None  # k under user-level DP
    comparison_accountant: str | None = None  # "edgeworth": shown beside the bound, never deciding

    # -- what it is ---------------------------------------------------------------------------------
    @property
    def private(self) -> bool:
        return bool(self.noise_multiplier)

    @property
    def els(self) -> bool:
        return self.privacy_unit == "user" and self.user_sampling == "els"

    @property
    def uls(self) -> bool:
        return self.privacy_unit == "user" and self.user_sampling == "uls"

    @property
    def k(self) -> int:
        return self.max_examples_per_user or 1

    def with_sigma(self, noise_multiplier: float) -> Mechanism:
        return dataclasses.replace(self, noise_multiplier=float(noise_multiplier))

    # -- epsilon --------------------------------------------------------------------------------------
    @functools.cached_property
    def _tracker(self) -> privacy.EpsilonTracker:  # cached on the frozen value (its __dict__, not a field)
        return privacy.EpsilonTracker(**self._accounting)

    @property
    def _accounting(self) -> dict:
        """What the unit's accountant reads, but the number of steps."""
        return dict(
            noise_multiplier=self.noise_multiplier,
            sample_rate=self.sample_rate,
            delta=self.delta,
            accountant=self.accountant,
            neighboring=self.neighboring,
        )

    @functools.cached_property
    def _els_grid(self) -> float:  # one mixture-PLD discretisation for every step of the planned length
        return mixture_grid(
            noise_multiplier=self.noise_multiplier, sample_rate=self.sample_rate, steps=self.steps, delta=self.delta
        )

    def _need_sigma(self) -> None:
        if self.noise_multiplier is None:
            raise privacy.PrivacyError("the noise multiplier is not calibrated yet: call calibrated(target) first")

    def epsilon(self, step: int | None = None) -> float:
        """Epsilon after ``step`` steps (default: all T) for the mechanism's unit; inf when non-private."""
        self._need_sigma()
        step = self.steps if step is None else step
        if not self.private:
            return math.inf
        if step <= 0:
            return 0.0
        if self.els:
            grid = (
                self._els_grid
                if step <= self.steps
                else mixture_grid(
                    noise_multiplier=self.noise_multiplier, sample_rate=self.sample_rate, steps=step, delta=self.delta
                )
            )
            return privacy.user_epsilon_els(
                noise_multiplier=self.noise_multiplier,
                sample_rate=self.sample_rate,
                steps=step,
                delta=self.delta,
                max_examples_per_user=self.max_examples_per_user,
                grid=grid,
            )
        return self.unit_epsilon(step)

    def unit_epsilon(self, step: int | None = None) -> float:
        """Epsilon of the sampled unit (an example; a user under ULS): the bound accountant's."""
        self._need_sigma()
        step = self.steps if step is None else step
        if not self.private:
            return math.inf
        return self._tracker.epsilon_at(step)

    def comparison_epsilon(self, step: int | None = None) -> float | None:
        """Edgeworth's approximation of the unit's epsilon, when asked for (display only, never deciding)."""
        if self.comparison_accountant is None or not self.private or self.neighboring != "add_remove":
            return None
        try:
            return privacy.epsilon(
                noise_multiplier=self.noise_multiplier,
                sample_rate=self.sample_rate,
                steps=self.steps if step is None else step,
                delta=self.delta,
                accountant=self.comparison_accountant,
            )
        except privacy.PrivacyError:
            return None

    def curve(self, points: int = 12) -> list[tuple[int, float]]:
        """(step, epsilon) from 0 to T: every step for the example level, ``points`` steps under ELS (the
        mixture PLD costs seconds per point)."""
        if not self.private:
            return []
        if self.els:
            n = min(points, self.steps)
            steps = sorted({round(self.steps * (i + 1) / n) for i in range(n)})
            return [(0, 0.0)] + [(t, self.epsilon(t)) for t in steps]
        return privacy.epsilon_curve(**self._accounting, steps=self.steps)

    def group_bound(self, step: int | None = None) -> tuple[float, float]:
        """ELS: the older group-privacy bound (k eps, delta_k) from the example-level epsilon."""
        return privacy.group_privacy_bound(epsilon=self.unit_epsilon(step), delta=self.delta, group_size=self.k)

    # -- calibration ----------------------------------------------------------------------------------
    def calibrated(self, target_epsilon: float) -> Mechanism:
        """This mechanism with the smallest sigma whose upper-bound epsilon is within ``target_epsilon`` (the ELS
        mixture PLD for a user-level ELS target); never overshoots."""
        from workbench.planning import disk_cache

        inputs = (target_epsilon, self.sample_rate, self.steps, self.delta, self.accountant, self.neighboring)
        inputs += (self.k,) if self.els else ()
        kept = disk_cache.get("sigma", inputs)
        if kept is not None and self.with_sigma(kept).epsilon() <= target_epsilon:  # checked by the exact bound
            return self.with_sigma(kept)
        if self.els:
            sigma = calibrate_els(
                target_epsilon=target_epsilon,
                sample_rate=self.sample_rate,
                steps=self.steps,
                delta=self.delta,
                k=self.k,
            )
        else:
            sigma = privacy.calibrate(
                target_epsilon=target_epsilon,
                sample_rate=self.sample_rate,
                steps=self.steps,
                delta=self.delta,
                accountant=self.accountant,
                neighboring=self.neighboring,
            )
        disk_cache.put("sigma", inputs, sigma)
        return self.with_sigma(sigma)

    # -- for the ledger and the report ------------------------------------------------------------------
    def dp_event(self, steps: int | None = None):
        """The mechanism of ``steps`` steps as the dp_accounting event ``epsilon(steps)`` accounts (for the unit,
        under ``neighboring``): the one place the ledger and the report take it from.

        Non-private: NonPrivateDpEvent. ELS with k > 1: the mixture of Gaussians (user_level.py). Otherwise
        Poisson sampling at q of a Gaussian with the effective sigma, self-composed ``steps`` times."""
        from dp_accounting import dp_event

        from workbench.privacy.user_level import _mixture_event

        steps = self.steps if steps is None else steps
        if steps <= 0:
            return dp_event.NoOpDpEvent()
        if not self.private:
            return dp_event.NonPrivateDpEvent()
        if self.els and self.k > 1:
            return _mixture_event(self.noise_multiplier, self.sample_rate, steps, self.max_examples_per_user)
        step = dp_event.PoissonSampledDpEvent(self.sample_rate, dp_event.GaussianDpEvent(self.noise_multiplier))
        return dp_event.SelfComposedDpEvent(step, steps)

    def settings(self) -> dict:
        """The public settings under the names the run-started event and the summary use."""
        return dict(
            sample_rate=self.sample_rate,
            noise_multiplier=self.noise_multiplier,
            delta=self.delta,
            planned_steps=self.steps,
            accountant=self.accountant,
            neighboring=self.neighboring,
            privacy_unit=self.privacy_unit,
        )


def calibrate_els(*, target_epsilon: float, sample_rate: float, steps: int, delta: float, k: int) -> float:
    """Smallest sigma (to 0.5%) whose ELS user-level epsilon is <= target; never overshoots."""

    def eps(s: float) -> float:
        return privacy.user_epsilon_els(
            noise_multiplier=s, sample_rate=sample_rate, steps=steps, delta=delta, max_examples_per_user=k
        )

    lo = privacy.calibrate(target_epsilon=target_epsilon, sample_rate=sample_rate, steps=steps, delta=delta)  # k=1
    hi = lo * 2
    while eps(hi) > target_epsilon:
        lo, hi = hi, hi * 2
        if hi > 1e4:
            raise privacy.PrivacyError(
                f"user-level epsilon {target_epsilon} is unreachable with k={k}; lower k or raise the target."
            )
    while hi / lo > 1.005:
        mid = math.sqrt(lo * hi)
        lo, hi = (mid, hi) if eps(mid) > target_epsilon else (lo, mid)
    return hi
