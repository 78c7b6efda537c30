"""The privacy plan of a run: sampling rate, steps, delta and noise, fixed before training starts.

Units of privacy (REFERENCES.md section 2):
- example: Poisson-sampled examples, per-example clipping, the chosen accountant.
- user, ELS: the same example-level step with each user capped at k examples; the user-level
  epsilon is the mixture-of-Gaussians PLD (``privacy.user_epsilon_els``).
- user, ULS: Poisson-sampled users (q = batch_size / number of users), each contributing the
  clipped mean of its examples; accounting as example-level with users as the unit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from workbench import privacy
from workbench.config import ConfigError, RunConfig
from workbench.privacy.user_level import mixture_grid

ELS_CURVE_POINTS = 12  # the mixture PLD costs seconds per point


@dataclass
class PrivacyPlan:
    dataset_size: int  # examples (after the per-user cap)
    sample_rate: float  # of examples, or of users under ULS
    steps: int
    delta: float
    noise_multiplier: float  # sigma (the effective multiplier under per-layer allocation)
    accountant: str
    target_epsilon: float | None  # the budget; training stops before exceeding it
    max_grad_norm: float | None
    privacy_unit: str = "example"
    user_sampling: str | None = None
    max_examples_per_user: int | None = None
    num_users: int | None = None
    _tracker: privacy.EpsilonTracker | None = field(default=None, repr=False)

    @property
    def private(self) -> bool:
        return self.noise_multiplier > 0

    @property
    def els(self) -> bool:
        return self.privacy_unit == "user" and self.user_sampling == "els"

    @property
    def population(self) -> int:
        """The number of sampled units: users under ULS, examples otherwise."""
        return self.num_users if self.privacy_unit == "user" and self.user_sampling == "uls" else self.dataset_size

    @property
    def expected_batch_size(self) -> float:
        return self.sample_rate * self.population

    def epsilon_at(self, step: int) -> float:
        """Epsilon spent after ``step`` logical steps, for the run's unit (inf when non-private)."""
        if not self.private:
            return math.inf
        if self.els:
            # every step on the grid of the planned length: one mixture PLD per run, not per step
            grid = mixture_grid(noise_multiplier=self.noise_multiplier, sample_rate=self.sample_rate,
                                steps=max(step, self.steps), delta=self.delta)
            return privacy.user_epsilon_els(
                noise_multiplier=self.noise_multiplier, sample_rate=self.sample_rate, steps=step,
                delta=self.delta, max_examples_per_user=self.max_examples_per_user, grid=grid,
            )
        return self.example_epsilon_at(step)

    def example_epsilon_at(self, step: int) -> float:
        """Epsilon of the sampled unit (an example; a user under ULS)."""
        if not self.private:
            return math.inf
        if self._tracker is None:
            self._tracker = privacy.EpsilonTracker(
                noise_multiplier=self.noise_multiplier, sample_rate=self.sample_rate, delta=self.delta,
                accountant=self.accountant,
            )
        return self._tracker.epsilon_at(step)

    def curve(self) -> list[tuple[int, float]]:
        if not self.private:
            return []
        if self.els:
            n = min(ELS_CURVE_POINTS, self.steps)
            points = sorted({round(self.steps * (i + 1) / n) for i in range(n)})
            return [(0, 0.0)] + [(t, self.epsilon_at(t)) for t in points]
        return privacy.epsilon_curve(
            noise_multiplier=self.noise_multiplier, sample_rate=self.sample_rate, steps=self.steps,
            delta=self.delta, accountant=self.accountant,
        )

    def budget_allows(self, step: int) -> bool:
        """Whether taking step number ``step`` keeps epsilon within the target."""
        if not self.private or self.target_epsilon is None:
            return True
        return self.epsilon_at(step) <= self.target_epsilon * (1 + 1e-9)

    def user_level_report(self, steps: int) -> dict:
        """ELS: the example-level epsilon and the older group-privacy bound beside the user-level one."""
        if not (self.els and self.private and steps):
            return {}
        eps_ex = self.example_epsilon_at(steps)
        eps_g, delta_g = privacy.group_privacy_bound(epsilon=eps_ex, delta=self.delta, group_size=self.max_examples_per_user)
        return {"example_level_epsilon": eps_ex, "group_privacy_epsilon": eps_g, "group_privacy_delta": delta_g}


def calibrate_els(*, target_epsilon: float, sample_rate: float, steps: int, delta: float, k: int) -> float:
    """Smallest sigma (to 0.5%) whose ELS user-level epsilon is <= target; never overshoots."""

    def eps(s: float) -> float:
        return privacy.user_epsilon_els(noise_multiplier=s, sample_rate=sample_rate, steps=steps, delta=delta, max_examples_per_user=k)

    lo = privacy.calibrate(target_epsilon=target_epsilon, sample_rate=sample_rate, steps=steps, delta=delta)  # k=1
    hi = lo * 2
    while eps(hi) > target_epsilon:
        lo, hi = hi, hi * 2
        if hi > 1e4:
            raise privacy.PrivacyError(f"user-level epsilon {target_epsilon} is unreachable with k={k}; lower k or raise the target.")
    while hi / lo > 1.005:
        mid = math.sqrt(lo * hi)
        lo, hi = (mid, hi) if eps(mid) > target_epsilon else (lo, mid)
    return hi


def make_plan(config: RunConfig, *, dataset_size: int, num_users: int | None = None) -> PrivacyPlan:
    """Resolve q, T, delta and sigma; calibrate sigma to the target when no noise is given."""
    user = config.privacy_unit == "user"
    uls = user and config.user_sampling == "uls"
    population = num_users if uls else dataset_size
    if population < config.batch_size:
        unit = "users" if uls else "examples"
        raise ConfigError(
            f"the training set has {population} {unit}, fewer than batch_size={config.batch_size}. "
            "Lower batch_size or add data."
        )
    q = min(1.0, config.batch_size / population)
    if config.max_steps is not None:
        steps = config.max_steps
    else:
        steps = max(1, math.ceil((config.epochs if config.epochs is not None else 1.0) / q))
    protected = num_users if user else dataset_size  # delta must be below 1 / (number of protected units)
    default_delta = config.default_delta(dataset_size=protected)
    delta = config.delta if config.delta is not None else default_delta
    who = "users" if user else "examples"
    if delta >= 1.0 / protected:
        raise ConfigError(
            f"delta={delta:g} is not below 1/N = {1.0 / protected:.3g} (N={protected} {who}); such a delta allows "
            f"leaking a whole {who[:-1]}. Choose delta <= {default_delta:g} or leave it empty."
        )
    k = config.max_examples_per_user if user else None
    sigma = config.noise_multiplier
    if sigma is None:
        if user and not uls:
            sigma = calibrate_els(target_epsilon=config.target_epsilon, sample_rate=q, steps=steps, delta=delta, k=k)
        else:
            sigma = privacy.calibrate(
                target_epsilon=config.target_epsilon, sample_rate=q, steps=steps, delta=delta, accountant=config.accountant
            )
    return PrivacyPlan(
        dataset_size=dataset_size,
        sample_rate=q,
        steps=steps,
        delta=delta,
        noise_multiplier=float(sigma),
        accountant="pld" if (user and not uls) else config.accountant,
        target_epsilon=config.target_epsilon if sigma > 0 else None,
        max_grad_norm=config.max_grad_norm,
        privacy_unit=config.privacy_unit,
        user_sampling=config.user_sampling if user else None,
        max_examples_per_user=k,
        num_users=num_users,
    )
