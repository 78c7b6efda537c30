"""Batch size and steps for a compute budget: the setting with the smallest noise-batch ratio sigma / B.

McKenna et al. 2025 ("Scaling Laws for Differentially Private Language Models", arXiv 2501.18914;
REFERENCES.md section 9): the loss of DP training is governed by model size, the number of iterations
and the noise-batch ratio sigma / B, and under DP the compute-optimal batch is much larger than without
it; Li et al. 2022 ("Large Language Models Can Be Strong Differentially Private Learners") found the same
for fine-tuning. This module applies that rule; it is a heuristic (it does not predict the loss).

The candidates: expected batch sizes B, powers of two from 8 to N/2, and for each one two step counts,
the fewest steps the user accepts (``min_steps``) and as many as the budget pays for (budget // B, at
most ``MAX_STEPS``). Every candidate's sigma comes from ``privacy.calibrate`` with the plan's q (the plan's
published population and neighbouring relation, ``planning.plan``) and the plan's upper-bound accountant
(Edgeworth never sets the noise), and its epsilon is checked with the same accountant: a candidate whose
epsilon overshoots the target is dropped, never recommended.

Why the fewest steps: at a fixed B more steps need more noise, so sigma / B only grows with T; a bigger
B lowers it (sigma grows slower than B). The recommendation is the smallest sigma / B among all
candidates within the budget (ties go to more steps), so more budget never recommends a worse ratio.
It therefore tends to the largest batch the budget allows at ``min_steps`` steps, and it stops paying
where B reaches N/2 (the data, not the compute, is then the limit). The whole-budget point of the same
batch is reported beside it, so the cost of spending the rest of the budget on more steps is visible.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import asdict, dataclass, field
from typing import Iterator

from workbench import privacy
from workbench.config import ConfigError, RunConfig
from workbench.planning.mechanism import Mechanism
from workbench.planning.plan import mechanism_for
from workbench.privacy.validation import check_delta

SMALLEST_BATCH = 8
DEFAULT_MIN_STEPS = 100
MAX_STEPS = 20_000  # longer runs only raise sigma / B, and each costs the accountant more
EPSILON_SLACK = 1e-9  # the plan's budget_allows tolerance

PAPER = 'McKenna et al. 2025, "Scaling Laws for Differentially Private Language Models" (arXiv 2501.18914)'
HEURISTIC_NOTE = (
    f"A heuristic: the smallest noise-batch ratio σ/B follows {PAPER} (and Li et al. 2022 for large batches); "
    "it does not predict the loss, and the learning rate must still be tuned."
)


class RecommendError(privacy.PrivacyError):
    """Bad input to the recommendation, or a budget / target that no candidate meets."""


@dataclass(frozen=True)
class Candidate:
    """One (B, T) setting: its mechanism (sigma as the plan's calibration gives it) and the epsilon it spends."""

    batch_size: int  # expected batch size B = q * published population
    mechanism: Mechanism
    epsilon: float  # the bound accountant's, at sigma: never above the target

    steps = property(lambda self: self.mechanism.steps)
    sample_rate = property(lambda self: self.mechanism.sample_rate)
    noise_multiplier = property(lambda self: self.mechanism.noise_multiplier)

    @property
    def noise_batch_ratio(self) -> float:
        return self.noise_multiplier / self.batch_size

    @property
    def examples(self) -> int:
        """Examples processed in expectation: the compute the setting spends."""
        return self.batch_size * self.steps

    def to_dict(self) -> dict:
        return dict(
            batch_size=self.batch_size,
            steps=self.steps,
            sample_rate=self.sample_rate,
            noise_multiplier=self.noise_multiplier,
            epsilon=self.epsilon,
            noise_batch_ratio=self.noise_batch_ratio,
            examples=self.examples,
        )


@dataclass(frozen=True)
class LearningRateNote:
    """The learning-rate range to start from at the recommended batch (a heuristic, not a guarantee)."""

    optimizer: str
    low: float | None
    high: float | None
    text: str

    def to_dict(self) -> dict:
        return {**asdict(self), "heuristic": True}


@dataclass(frozen=True)
class Recommendation:
    population: int  # N: the privacy units sampled (examples; users under ULS)
    target_epsilon: float
    budget_examples: int
    min_steps: int
    best: Candidate
    at_min_steps: tuple[Candidate, ...]  # T = min_steps, for each B the budget allows
    whole_budget: tuple[Candidate, ...]  # T = budget // B (at most MAX_STEPS), for each B up to N/2
    learning_rate: LearningRateNote
    skipped: tuple[str, ...] = field(default=())  # candidates dropped, and why
    complete: bool = True  # False while candidates are still being calibrated

    # delta, the bound, the relation and the unit are every candidate's mechanism's (the best one's here)
    delta = property(lambda self: self.best.mechanism.delta)
    accountant = property(lambda self: self.best.mechanism.accountant)  # the upper bound that set every sigma
    neighboring = property(lambda self: self.best.mechanism.neighboring)
    privacy_unit = property(lambda self: self.best.mechanism.privacy_unit)

    @property
    def candidates(self) -> tuple[Candidate, ...]:
        return self.at_min_steps + self.whole_budget

    @property
    def best_whole_budget(self) -> Candidate | None:
        """The recommended batch with the whole budget spent on steps (for comparison)."""
        return next((c for c in self.whole_budget if c.batch_size == self.best.batch_size), None)

    def sentences(self) -> list[str]:
        b = self.best
        unit = "users" if self.privacy_unit == "user" else "examples"
        lines = [
            f"Recommended: expected batch size B = {b.batch_size:,} for T = {b.steps:,} steps (q = {b.sample_rate:.4g}, "
            f"σ = {b.noise_multiplier:.4g}, σ/B = {b.noise_batch_ratio:.3g}; ε = {b.epsilon:.4g} ≤ "
            f"{self.target_epsilon:g} at δ = {self.delta:.0e}, {self.accountant}, N = {self.population:,} {unit}), "
            f"{b.examples:,} of the budget's {self.budget_examples:,} {unit} processed.",
        ]
        whole = self.best_whole_budget
        if whole is not None and whole.steps > b.steps:
            lines.append(
                f"Spending the whole budget at this batch ({whole.steps:,} steps) needs σ = {whole.noise_multiplier:.4g}: "
                f"σ/B = {whole.noise_batch_ratio:.3g}, {whole.noise_batch_ratio / b.noise_batch_ratio:.2f}× the "
                "recommended; take the extra steps only if the loss is still falling."
            )
        smaller = [c for c in self.at_min_steps if c.batch_size == b.batch_size // 2 and c.steps == b.steps]
        if smaller:
            gain = 1 - b.noise_batch_ratio / smaller[0].noise_batch_ratio
            lines.append(f"Doubling the batch from {b.batch_size // 2:,} lowered σ/B by {gain:.0%}.")
        if b.batch_size * 2 > self.population // 2:
            lines.append("Larger batches are not considered: the grid stops at N/2, where the data is the limit.")
        else:
            lines.append(
                f"A larger batch would lower σ/B further but needs more than {self.budget_examples:,} examples for "
                f"{self.min_steps:,} steps: the budget is the limit."
            )
        lines.append(self.learning_rate.text)
        lines.append(HEURISTIC_NOTE)
        return lines

    def to_dict(self) -> dict:
        return dict(
            recommended=self.best.to_dict(),
            whole_budget_at_recommended_batch=None
            if self.best_whole_budget is None
            else self.best_whole_budget.to_dict(),
            dataset_size=self.population,
            privacy_unit=self.privacy_unit,
            target_epsilon=self.target_epsilon,
            delta=self.delta,
            accountant=self.accountant,
            neighboring=self.neighboring,
            budget_examples=self.budget_examples,
            min_steps=self.min_steps,
            learning_rate=self.learning_rate.to_dict(),
            candidates=[{**c.to_dict(), "series": "min_steps"} for c in self.at_min_steps]
            + [{**c.to_dict(), "series": "whole_budget"} for c in self.whole_budget],
            skipped=list(self.skipped),
            heuristic=True,
            note=HEURISTIC_NOTE,
        )


# The learning rates this project's runs used (assets/demo.yaml: 1e-2 at B = 64; benchmarks/utility.py:
# 5e-3 at B = 256; benchmarks/methods.py: 2e-2 at B = 64 and 256), all with AdamW on LoRA weights.
ADAMW_RANGE = (2e-3, 2e-2)


def learning_rate_note(batch_size: int, optimizer: str = "adamw") -> LearningRateNote:
    """Where to start the learning rate at ``batch_size``: heuristic, from this project's runs."""
    if optimizer == "adamw":
        low, high = ADAMW_RANGE
        return LearningRateNote(
            optimizer,
            low,
            high,
            f"Learning rate (heuristic): AdamW on LoRA weights at batch {batch_size:,}: start between {low:g} and "
            f"{high:g} (this project's runs: 5e-3 at B = 32 and 256, 2e-2 at B = 64-256); Adam normalises the step, "
            "so the range barely moves with B. Li et al. 2022: tune it, with a small clipping norm.",
        )
    return LearningRateNote(
        optimizer,
        None,
        None,
        f"Learning rate (heuristic): no {optimizer} runs here to draw a range from; under DP-SGD the averaged "
        "gradient keeps its scale as B grows while its noise falls, so the rate can rise with B "
        "(Li et al. 2022 tune it with the batch).",
    )


def budget_from(
    *, budget_examples: int | None = None, budget_minutes: float | None = None, examples_per_second: float | None = None
) -> int:
    """The compute budget in examples: given, or minutes at the measured examples per second."""
    if budget_examples is not None and budget_minutes is not None:
        raise RecommendError("give the budget once: in examples or in minutes (with examples per second), not both.")
    if budget_examples is not None:
        if isinstance(budget_examples, bool) or not float(budget_examples).is_integer() or budget_examples < 1:
            raise RecommendError(f"the budget in examples must be a whole number ≥ 1. Found {budget_examples!r}.")
        return int(budget_examples)
    if budget_minutes is None:
        raise RecommendError(
            "no compute budget: give the examples you can afford to process (e.g. 20000), or minutes with the "
            "measured examples per second."
        )
    if examples_per_second is None:
        raise RecommendError(
            "a budget in minutes needs the measured speed: give examples per second (from a short run's log)."
        )
    for name, value in (("budget minutes", budget_minutes), ("examples per second", examples_per_second)):
        if isinstance(value, bool) or not math.isfinite(float(value)) or value <= 0:
            raise RecommendError(f"{name} must be a positive number. Found {value!r}.")
    return int(budget_minutes * 60 * examples_per_second)


def batch_grid(population: int) -> list[int]:
    """Powers of two from 8 to N/2."""
    return [2**i for i in range(3, 64) if 2**i <= population // 2]


@functools.lru_cache(maxsize=2048)
def _candidate(batch_size: int, steps: int, population: int, target: float, base: Mechanism) -> Candidate | str:
    """A calibrated, checked candidate of ``base`` (the plan's delta, bound, relation and unit) at B and T, or why
    there is none (cached: the app and tests repeat them)."""
    mechanism = dataclasses.replace(base, sample_rate=min(1.0, batch_size / population), steps=steps)
    try:
        mechanism = mechanism.calibrated(target)
        eps = mechanism.epsilon()
    except privacy.PrivacyError as err:
        return f"B = {batch_size}, T = {steps}: {err}"
    if eps > target * (1 + EPSILON_SLACK):  # never recommend an overshoot (Opacus #346)
        sigma = mechanism.noise_multiplier
        return f"B = {batch_size}, T = {steps}: sigma {sigma:.4g} gives epsilon {eps:.6g} > target {target:g}"
    return Candidate(batch_size, mechanism, float(eps))


def recommend_stages(
    *,
    dataset_size: int,
    target_epsilon: float,
    budget_examples: int | None = None,
    budget_minutes: float | None = None,
    examples_per_second: float | None = None,
    delta: float | None = None,
    accountant: str = "pld",
    neighboring: str = "auto",
    privacy_unit: str = "example",
    user_sampling: str = "uls",
    min_steps: int = DEFAULT_MIN_STEPS,
    optimizer: str = "adamw",
    whole_budget: bool = True,
    public_dataset_size: int | None = None,
) -> Iterator[Recommendation | None]:
    """The recommendation progressively: one yield per calibrated candidate (about half a second each), a
    partial Recommendation (``complete=False``; None while no candidate meets min steps yet) and last the
    complete one. The caller may stop iterating at any yield (a newer request). Input is checked before
    the first yield; see ``recommend``. ``whole_budget=False`` skips the whole-budget curve (it never holds
    the recommendation: at a fixed B more steps need more noise), halving the cost."""
    for name, value in (("dataset size N", dataset_size), ("min steps", min_steps)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not float(value).is_integer() or value < 1:
            raise RecommendError(f"{name} must be a whole number ≥ 1. Found {value!r}.")
    n, min_steps = int(dataset_size), int(min_steps)
    if isinstance(target_epsilon, bool) or not isinstance(target_epsilon, (int, float)) or not target_epsilon > 0:
        raise RecommendError(f"target epsilon must be a number > 0. Found {target_epsilon!r}.")
    if not math.isfinite(target_epsilon):
        raise RecommendError("target epsilon must be finite: a non-private run needs no recommendation.")
    budget = budget_from(
        budget_examples=budget_examples, budget_minutes=budget_minutes, examples_per_second=examples_per_second
    )
    if privacy_unit == "user" and user_sampling != "uls":
        raise RecommendError(
            "the recommendation covers example-level DP and user-level ULS (N = users): ELS's mixture-of-Gaussians "
            "calibration costs seconds per candidate. Use user_sampling=uls, or recommend at the example level and "
            "check the user-level epsilon in the plan."
        )
    unit = "users" if privacy_unit == "user" else "examples"
    if n < 2 * SMALLEST_BATCH:
        raise RecommendError(
            f"N = {n} {unit} is too small: the batch sizes tried run from {SMALLEST_BATCH} to N/2, so N must be at "
            f"least {2 * SMALLEST_BATCH}. Add data."
        )
    try:  # delta, the relation and the bound exactly as the run's plan resolves them (plan.mechanism_for)
        config = RunConfig.from_dict(
            dict(
                batch_size=SMALLEST_BATCH,
                max_steps=min_steps,
                delta=None if delta is None else check_delta(delta),
                target_epsilon=float(target_epsilon),
                accountant=accountant,
                neighboring=neighboring,
                privacy_unit=privacy_unit,
                user_sampling=user_sampling,
                public_dataset_size=public_dataset_size,
            )
        )
        base, _ = mechanism_for(config, dataset_size=n, num_users=n if privacy_unit == "user" else None)
    except ConfigError as err:
        raise RecommendError(str(err)) from None
    if budget < SMALLEST_BATCH:
        raise RecommendError(
            f"a budget of {budget:,} examples is too small for one step: the smallest batch tried is {SMALLEST_BATCH}."
        )
    if budget < SMALLEST_BATCH * min_steps:
        raise RecommendError(
            f"a budget of {budget:,} examples pays for fewer than min steps = {min_steps:,} steps even at the smallest "
            f"batch ({SMALLEST_BATCH}: {SMALLEST_BATCH * min_steps:,} examples). Raise the budget or lower min steps."
        )
    population = public_dataset_size or n  # the plan's q = B / public size (make_plan)
    key = (population, float(target_epsilon), base)
    grid = batch_grid(n)
    # the min-steps series first (it holds the recommendation), then the whole-budget curve
    jobs = [(b, min_steps, "min") for b in grid if b * min_steps <= budget]
    jobs += [(b, min(budget // b, MAX_STEPS), "whole") for b in grid if budget // b >= 1 and whole_budget]
    at_min: list[Candidate] = []
    whole: list[Candidate] = []
    skipped: list[str] = []

    def result(complete: bool) -> Recommendation | None:
        feasible = [c for c in at_min + whole if c.steps >= min_steps]
        if not feasible:
            if not complete:
                return None
            raise RecommendError(
                f"target epsilon {target_epsilon:g} is unreachable within a budget of {budget:,} examples with any "
                f"batch from {SMALLEST_BATCH} to {n // 2} (N/2): "
                + (skipped[0].rstrip(".") if skipped else "no candidate")
                + ". Raise the target or delta, or lower min steps."
            )
        best = min(feasible, key=lambda c: (round(c.noise_batch_ratio, 12), -c.steps))
        return Recommendation(
            population=n,
            target_epsilon=float(target_epsilon),
            budget_examples=budget,
            min_steps=min_steps,
            best=best,
            at_min_steps=tuple(at_min),
            whole_budget=tuple(whole),
            learning_rate=learning_rate_note(best.batch_size, optimizer),
            skipped=tuple(skipped),
            complete=complete,
        )

    failed_at = None  # the smallest B whose min-steps setting cannot meet the target: larger B, more T need more noise
    for i, (b, steps, series) in enumerate(jobs):
        if failed_at is not None and b >= failed_at and steps >= min_steps:
            found = f"B = {b}, T = {steps}: needs more noise than B = {failed_at}, T = {min_steps} (unreachable)"
        else:
            found = _candidate(b, steps, *key)
        if isinstance(found, str):
            skipped.append(found)
            if series == "min" and failed_at is None:
                failed_at = b
                if b == SMALLEST_BATCH:  # the least noisy setting: nothing within the budget can meet the target
                    raise RecommendError(
                        f"target epsilon {target_epsilon:g} is unreachable within a budget of {budget:,} {unit} "
                        f"with any batch from {SMALLEST_BATCH} to {n // 2} (N/2) and at least {min_steps:,} steps: "
                        f"even the least noisy setting fails ({found.rstrip('.')}). Raise the target or delta, or "
                        "lower min steps."
                    )
        else:
            (at_min if series == "min" else whole).append(found)
        yield result(complete=i == len(jobs) - 1)
    if not jobs:
        yield result(complete=True)


def recommend(**kwargs) -> Recommendation:
    """The (B, T) with the smallest sigma / B within the budget; see the module docstring and
    ``recommend_stages`` for the arguments.

    ``dataset_size`` is N in privacy units: examples, or users under user-level ULS (the budget then counts
    sampled users, B x T, each bringing up to k examples; user-level ELS is
    refused: its mixture-of-Gaussians calibration costs seconds per candidate). ``delta`` None: the plan's
    default below 1/N. ``neighboring`` and ``accountant`` as in the run config (auto: replace-one under PLD).
    Raises RecommendError (a PrivacyError) with a message for bad input or an unreachable target.
    """
    *_, last = recommend_stages(**kwargs)
    return last


def recommend_for_config(
    config: RunConfig,
    *,
    dataset_size: int,
    num_users: int | None = None,
    budget_examples: int | None = None,
    budget_minutes: float | None = None,
    examples_per_second: float | None = None,
    min_steps: int = DEFAULT_MIN_STEPS,
    stages: bool = False,
) -> Recommendation | Iterator[Recommendation | None]:
    """``recommend`` (or with ``stages=True`` ``recommend_stages``) with a run config's target, delta, accountant, relation and privacy unit (N = users
    under ULS)."""
    uls = config.privacy_unit == "user" and config.user_sampling == "uls"
    if uls and not num_users:
        raise RecommendError("privacy_unit is 'user' but the data has no user_id column: N (users) is unknown.")
    if config.target_epsilon is None:
        raise RecommendError("the recommendation needs a target epsilon (the config sets a noise multiplier instead).")
    return (recommend_stages if stages else recommend)(
        dataset_size=num_users if uls else dataset_size,
        target_epsilon=config.target_epsilon,
        budget_examples=budget_examples,
        budget_minutes=budget_minutes,
        examples_per_second=examples_per_second,
        delta=config.delta,
        accountant=config.accountant,
        neighboring=config.neighboring,
        privacy_unit=config.privacy_unit,
        user_sampling=config.user_sampling,
        min_steps=min_steps,
        optimizer=config.optimizer,
        public_dataset_size=config.public_dataset_size,
    )
