"""The plan a person sees before training: one function behind the app's Plan tab, the PrivacyPlanner widget
and `workbench plan`, so the same settings show the same sigma and epsilon everywhere.

``plan_stages(config, dataset_size=N)`` resolves the config's mechanism exactly as a run will
(``plan.mechanism_for``: q, T, delta, the relation, the unit), calibrates it by the run's upper bound, draws the
unit's epsilon per accountant progressively (``curves.plan_curves``) and finally the user-level epsilon
beside the example-level one (REFERENCES.md section 2).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Iterator

from workbench import privacy
from workbench.config import ConfigError, RunConfig
from workbench.planning.curves import plan_curves
from workbench.planning.mechanism import Mechanism
from workbench.planning.plan import mechanism_for

PLAN_ACCOUNTANTS = ("rdp", "prv", "pld")  # always drawn by the Plan tab; the selected one is added


@dataclass(frozen=True)
class UserLevel:
    """One user with up to k examples beside one example (REFERENCES.md section 2).

    ELS: ``epsilon`` is the mixture-of-Gaussians PLD (None while it is being computed) and the
    group-privacy bound (k eps, delta_k) is derived from ``example_epsilon``.  ULS: the sampled
    unit is already the user, so ``epsilon`` is the example-level accounting with users as the unit.
    """

    k: int
    example_epsilon: float | None = None  # the bound accountant's, at delta
    epsilon: float | None = None
    group_epsilon: float | None = None
    group_delta: float | None = None
    num_users: int | None = None
    sampling: str = "els"  # "uls" when the config samples users
    charged: bool = False  # the run's budget is this epsilon (privacy_unit "user")
    error: str = ""

    @property
    def pending(self) -> bool:
        return self.epsilon is None and not self.error


@dataclass(frozen=True)
class PlanResult:
    """A privacy plan as the Plan tab and the planner widget show it; ``pending`` accountants are still being
    computed. The mechanism's numbers are its own (``mechanism``); the rest is what was drawn of it."""

    mechanism: Mechanism  # sigma None when its calibration failed (the message is in errors)
    accountant: str  # the one chosen (may be edgeworth: then the bound sets sigma and it is drawn beside)
    target_epsilon: float | None
    curves: dict[str, list[tuple[int, float]]]  # accountant -> (step, epsilon)
    pending: tuple[str, ...] = ()
    provisional: bool = False  # sigma is RDP's while the chosen accountant's bound calibrates
    user_level: UserLevel | None = None  # computed last: the mixture PLD takes about a second
    sigma_needed: dict[str, float] = field(default_factory=dict)  # each bound's own sigma for the target
    errors: dict[str, str] = field(default_factory=dict)  # accountant -> message

    noise_multiplier = property(lambda self: self.mechanism.noise_multiplier)
    sample_rate = property(lambda self: self.mechanism.sample_rate)
    steps = property(lambda self: self.mechanism.steps)
    delta = property(lambda self: self.mechanism.delta)
    neighboring = property(lambda self: self.mechanism.neighboring)
    bound = property(lambda self: self.mechanism.accountant)  # the upper bound that set sigma

    def final_epsilon(self, accountant: str) -> float | None:
        curve = self.curves.get(accountant)
        return curve[-1][1] if curve else None

    @property
    def epsilon(self) -> dict[str, float]:
        """Each accountant's epsilon at the last step."""
        return {acc: curve[-1][1] if curve else math.nan for acc, curve in self.curves.items()}

    @property
    def example_epsilon(self) -> float | None:
        return self.user_level.example_epsilon if self.user_level else None

    @property
    def user_epsilon(self) -> float | None:
        return self.user_level.epsilon if self.user_level else None

    @property
    def group_bound(self) -> tuple[float, float] | None:
        u = self.user_level
        return (u.group_epsilon, u.group_delta) if u and u.group_epsilon is not None else None


def check_users(config: RunConfig, num_users: int | None) -> None:
    """User-level runs need users: a user_id column."""
    if config.privacy_unit == "user" and not num_users:
        raise ConfigError(
            "privacy_unit is 'user' but the data has no user_id column: add one (the person each "
            "example belongs to) or set privacy_unit to 'example'."
        )


def plan_stages(
    config: RunConfig,
    *,
    dataset_size: int,
    num_users: int | None = None,
    accountants: tuple[str, ...] | None = None,
    compare_sigmas: bool = False,
    failures_as_results: bool = False,
) -> Iterator[PlanResult | None]:
    """The plan for ``config`` on N examples, progressively: each PlanResult adds a curve.

    The one progressive plan (``curves.plan_curves``: RDP's sigma and curve in well under a second, then the
    bound's calibration, PLD and PRV), then the user-level epsilon (about a second) last. ``None`` is yielded
    between slow computations, as a place to stop when the knobs moved on (the caller stops iterating).
    ``accountants``: the curves to draw (default: the Plan tab's, RDP, PRV, PLD and the chosen one).
    A calibration that fails raises its ``PrivacyError`` (``failures_as_results``: yields a result with the
    message in ``errors`` instead, as a calculator shows it).
    """
    check_users(config, num_users)
    mechanism, _ = mechanism_for(config, dataset_size=dataset_size, num_users=num_users)  # batch <= N, delta < 1/N
    chosen = config.accountant
    target = config.target_epsilon if mechanism.noise_multiplier is None else None
    user = UserLevel(
        k=config.max_examples_per_user,
        num_users=num_users,
        sampling="uls" if mechanism.uls else "els",
        charged=config.privacy_unit == "user",
    )
    stages = plan_curves(
        mechanism,
        accountants=tuple(dict.fromkeys(("rdp", chosen, *PLAN_ACCOUNTANTS))) if accountants is None else accountants,
        selected=chosen,
        target_epsilon=target,
        compare_sigmas=compare_sigmas,
    )
    last = None
    for stage in stages:
        if stage is None:
            yield None
            continue
        result = PlanResult(
            mechanism=stage.mechanism,
            accountant=chosen,
            target_epsilon=target,
            curves=dict(stage.curves),
            pending=stage.pending,
            provisional=stage.provisional,
            user_level=replace(user, example_epsilon=stage.final_epsilon(stage.bound)),
            sigma_needed=dict(stage.sigma_needed),
            errors=dict(stage.errors),
        )
        if stage.noise_multiplier is None:  # the calibration failed: its message is the plan
            if not failures_as_results:
                raise privacy.PrivacyError(next(iter(stage.errors.values())))
            yield replace(result, user_level=None)
            return
        if not stage.mechanism.private:
            inf = dict(example_epsilon=math.inf, epsilon=math.inf, group_epsilon=math.inf, group_delta=1.0)
            yield replace(result, target_epsilon=None, user_level=replace(user, **inf))
            return
        last = result
        yield last
    yield None
    yield replace(last, user_level=user_level(last.user_level, last.mechanism))


def user_level(user: UserLevel, mechanism: Mechanism) -> UserLevel:
    """``user`` with its epsilon and group-privacy bound at ``mechanism``'s sigma (the ELS mixture PLD of k
    examples per user beside the example-level epsilon); privacy errors become ``user.error``."""
    from workbench.privacy.user_level import els_beside_group_bound

    if user.example_epsilon is None:  # the bound's curve was not asked for
        try:
            user = replace(user, example_epsilon=mechanism.unit_epsilon())
        except privacy.PrivacyError as err:
            return replace(user, error=str(err))
    if user.sampling == "uls":  # the sampled unit is the user: the example-level accounting is user-level
        return replace(user, epsilon=user.example_epsilon)
    from workbench.planning import disk_cache

    inputs = (mechanism.noise_multiplier, mechanism.sample_rate, mechanism.steps, mechanism.delta, user.k)
    kept = disk_cache.get("els_epsilon", inputs)
    try:
        if kept is not None:  # the mixture PLD took seconds for these public inputs before
            group = privacy.group_privacy_bound(epsilon=user.example_epsilon, delta=mechanism.delta, group_size=user.k)
            return replace(user, epsilon=kept, group_epsilon=group[0], group_delta=group[1])
        eps, group = els_beside_group_bound(
            noise_multiplier=mechanism.noise_multiplier,
            sample_rate=mechanism.sample_rate,
            steps=mechanism.steps,
            delta=mechanism.delta,
            k=user.k,
            example_epsilon=user.example_epsilon,
        )
    except privacy.PrivacyError as err:
        return replace(user, error=str(err))
    disk_cache.put("els_epsilon", inputs, eps)
    return replace(user, epsilon=eps, group_epsilon=group[0], group_delta=group[1])


def compute_plan(
    config: RunConfig, *, dataset_size: int, num_users: int | None = None, curves: bool = True, **options
) -> PlanResult:
    """The complete plan (every curve and the user-level epsilon), or with ``curves=False`` just the run's
    mechanism (sigma), as ``make_plan`` resolves it."""
    if curves:
        stages = plan_stages(config, dataset_size=dataset_size, num_users=num_users, **options)
        *_, last = (stage for stage in stages if stage is not None)
        return last
    from workbench.planning.plan import make_plan

    check_users(config, num_users)
    plan = make_plan(config, dataset_size=dataset_size, num_users=num_users)  # checks batch <= N, delta < 1/N; sigma
    return PlanResult(
        mechanism=plan.mechanism, accountant=plan.accountant, target_epsilon=plan.target_epsilon, curves={}
    )
