"""The privacy plan of a run: sampling rate, steps, delta and noise, fixed before training starts."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from workbench import privacy
from workbench.config import ConfigError, RunConfig


@dataclass
class PrivacyPlan:
    dataset_size: int
    sample_rate: float
    steps: int
    delta: float
    noise_multiplier: float
    accountant: str
    target_epsilon: float | None  # the budget; training stops before exceeding it
    max_grad_norm: float | None
    _tracker: privacy.EpsilonTracker | None = field(default=None, repr=False)

    @property
    def private(self) -> bool:
        return self.noise_multiplier > 0

    def epsilon_at(self, step: int) -> float:
        """Epsilon spent after ``step`` logical steps (inf when non-private)."""
        if not self.private:
            return math.inf
        if self._tracker is None:
            self._tracker = privacy.EpsilonTracker(
                noise_multiplier=self.noise_multiplier,
                sample_rate=self.sample_rate,
                delta=self.delta,
                accountant=self.accountant,
            )
        return self._tracker.epsilon_at(step)

    def curve(self) -> list[tuple[int, float]]:
        if not self.private:
            return []
        return privacy.epsilon_curve(
            noise_multiplier=self.noise_multiplier,
            sample_rate=self.sample_rate,
            steps=self.steps,
            delta=self.delta,
            accountant=self.accountant,
        )

    def budget_allows(self, step: int) -> bool:
        """Whether taking step number ``step`` keeps epsilon within the target."""
        if not self.private or self.target_epsilon is None:
            return True
        return self.epsilon_at(step) <= self.target_epsilon * (1 + 1e-9)


def make_plan(config: RunConfig, *, dataset_size: int) -> PrivacyPlan:
    """Resolve q, T, delta and sigma; calibrate sigma to the target when no noise is given."""
    if dataset_size < config.batch_size:
        raise ConfigError(
            f"the training set has {dataset_size} examples, fewer than batch_size={config.batch_size}. "
            "Lower batch_size or add data."
        )
    q = config.sample_rate(dataset_size=dataset_size)
    steps = config.planned_steps(dataset_size=dataset_size)
    delta = config.delta if config.delta is not None else config.default_delta(dataset_size=dataset_size)
    if delta >= 1.0 / dataset_size:
        raise ConfigError(
            f"delta={delta:g} is not below 1/N = {1.0 / dataset_size:.3g} (N={dataset_size}); such a delta allows "
            f"leaking a whole example. Choose delta <= {config.default_delta(dataset_size=dataset_size):g} or leave it empty."
        )
    sigma = config.noise_multiplier
    if sigma is None:
        sigma = privacy.calibrate(
            target_epsilon=config.target_epsilon,
            sample_rate=q,
            steps=steps,
            delta=delta,
            accountant=config.accountant,
        )
    target = config.target_epsilon if sigma > 0 else None
    return PrivacyPlan(
        dataset_size=dataset_size,
        sample_rate=q,
        steps=steps,
        delta=delta,
        noise_multiplier=float(sigma),
        accountant=config.accountant,
        target_epsilon=target,
        max_grad_norm=config.max_grad_norm,
    )
