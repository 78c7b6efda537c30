"""The privacy plan of a run: sampling rate, steps, delta and noise, fixed before training starts.

Units of privacy (REFERENCES.md section 2):
- example: Poisson-sampled examples, per-example clipping, the chosen accountant.
- user, ELS: the same example-level step with each user capped at k examples; the user-level
  epsilon is the mixture-of-Gaussians PLD (``privacy.user_epsilon_els``).
- user, ULS: Poisson-sampled users (q = batch_size / number of users), each contributing the
  clipped mean of its examples; accounting as example-level with users as the unit.

Upper bounds decide: sigma and the budget stop always come from an upper-bound accountant (PLD,
or RDP / PRV if chosen). ``accountant=edgeworth`` keeps PLD as the bound and reports Edgeworth's
approximation beside it (``comparison_epsilon_at``), never as what sets the noise or stops.

Neighbouring relation (REFERENCES.md section 7): the report publishes the number of sampled units.
- replace_one: neighbours have the same size, so the exact size is public and q = B / N is too.
- add_remove: the exact size would reveal membership, so every published number (q, the steps,
  the default delta, the size, the divisor q * N of the noisy sum) comes from ``public_dataset_size``,
  a size the user declares public, and never from the data. Without one, add_remove is refused.
  (Rounding N, as an earlier version did, is no mechanism: it is a deterministic function of the
  exact N, so neighbours on either side of a rounding boundary published different q and sigma.)
- auto: add_remove when a public size is declared; else replace_one where dp_accounting can analyse
  it (PLD over examples, or over users under ULS); RDP, PRV, Edgeworth's comparison and the ELS
  mixture of Gaussians analyse add_remove only, so they need a public size.

A run stopped by hand claims the planned epsilon (``claimed_epsilon``): the stopping step may
depend on what the person saw, and only the full schedule's epsilon covers every stopping time
that is a function of the released iterates or public information.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from workbench import privacy
from workbench.config import ConfigError, RunConfig
from workbench.privacy.user_level import mixture_grid
from workbench.privacy.validation import check_neighboring

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
    neighboring: str = "add_remove"
    published_population: int | None = None  # the number of sampled units the report publishes
    comparison_accountant: str | None = None  # "edgeworth": shown beside the bound, never deciding
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
        """q times the published population: the public divisor of the noisy sum."""
        return self.sample_rate * (self.published_population or self.population)

    @property
    def size_published_as(self) -> str:
        return "exact" if self.neighboring == "replace_one" else "declared public (public_dataset_size)"

    def claimed_epsilon(self, steps_done: int, *, stopped: bool) -> float:
        """The epsilon a run claims after ``steps_done`` steps. A run stopped by hand claims the planned one: the
        person who stopped it may have looked at the live telemetry, so the stopping step is not a public choice,
        and only the full schedule's epsilon (all T iterates released) covers a stop chosen from released states
        or public information. The steps-done epsilon holds only for a stop decided from public information."""
        if stopped and self.private and steps_done:
            return self.epsilon_at(self.steps)
        return self.epsilon_at(steps_done) if steps_done else 0.0

    def epsilon_at(self, step: int) -> float:
        """Epsilon spent after ``step`` logical steps, for the run's unit (inf when non-private)."""
        if not self.private:
            return math.inf
        if self.els:
            # every step on the grid of the planned length: one mixture PLD per run, not per step
            grid = mixture_grid(
                noise_multiplier=self.noise_multiplier,
                sample_rate=self.sample_rate,
                steps=max(step, self.steps),
                delta=self.delta,
            )
            return privacy.user_epsilon_els(
                noise_multiplier=self.noise_multiplier,
                sample_rate=self.sample_rate,
                steps=step,
                delta=self.delta,
                max_examples_per_user=self.max_examples_per_user,
                grid=grid,
            )
        return self.example_epsilon_at(step)

    def example_epsilon_at(self, step: int) -> float:
        """Epsilon of the sampled unit (an example; a user under ULS)."""
        if not self.private:
            return math.inf
        if self._tracker is None:
            self._tracker = privacy.EpsilonTracker(
                noise_multiplier=self.noise_multiplier,
                sample_rate=self.sample_rate,
                delta=self.delta,
                accountant=self.accountant,
                neighboring=self.neighboring,
            )
        return self._tracker.epsilon_at(step)

    def settings(self) -> dict:
        """The plan's public settings under the names the run-started event and the summary both use."""
        return dict(
            sample_rate=self.sample_rate,
            noise_multiplier=self.noise_multiplier,
            delta=self.delta,
            planned_steps=self.steps,
            accountant=self.accountant,
            target_epsilon=self.target_epsilon,
            neighboring=self.neighboring,
            privacy_unit=self.privacy_unit,
        )

    def comparison_epsilon_at(self, step: int) -> float | None:
        """Edgeworth's approximation of the example-level epsilon, when asked for (display only)."""
        if self.comparison_accountant is None or not self.private or self.neighboring != "add_remove":
            return None
        try:
            return privacy.epsilon(
                noise_multiplier=self.noise_multiplier,
                sample_rate=self.sample_rate,
                steps=step,
                delta=self.delta,
                accountant=self.comparison_accountant,
            )
        except privacy.PrivacyError:
            return None

    def curve(self) -> list[tuple[int, float]]:
        if not self.private:
            return []
        if self.els:
            n = min(ELS_CURVE_POINTS, self.steps)
            points = sorted({round(self.steps * (i + 1) / n) for i in range(n)})
            return [(0, 0.0)] + [(t, self.epsilon_at(t)) for t in points]
        return privacy.epsilon_curve(
            noise_multiplier=self.noise_multiplier,
            sample_rate=self.sample_rate,
            steps=self.steps,
            delta=self.delta,
            accountant=self.accountant,
            neighboring=self.neighboring,
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
        eps_g, delta_g = privacy.group_privacy_bound(
            epsilon=eps_ex, delta=self.delta, group_size=self.max_examples_per_user
        )
        return {"example_level_epsilon": eps_ex, "group_privacy_epsilon": eps_g, "group_privacy_delta": delta_g}

    def dp_event(self, steps: int):
        """The mechanism of ``steps`` steps as the dp_accounting event ``epsilon_at(steps)`` accounts (for the
        plan's unit, under ``self.neighboring``): the one place the ledger and the report take it from.

        Non-private: NonPrivateDpEvent. ELS with k > 1: the mixture of Gaussians (user_level.py). Otherwise
        Poisson sampling at q of a Gaussian with the effective sigma, self-composed ``steps`` times."""
        from dp_accounting import dp_event

        from workbench.privacy.user_level import _mixture_event

        if steps <= 0:
            return dp_event.NoOpDpEvent()
        if not self.private:
            return dp_event.NonPrivateDpEvent()
        if self.els and (self.max_examples_per_user or 1) > 1:
            return _mixture_event(self.noise_multiplier, self.sample_rate, steps, self.max_examples_per_user)
        step = dp_event.PoissonSampledDpEvent(self.sample_rate, dp_event.GaussianDpEvent(self.noise_multiplier))
        return dp_event.SelfComposedDpEvent(step, steps)


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


def sampled_units(config: RunConfig) -> str:
    """What the sampling draws from, in words: what ``public_dataset_size`` counts."""
    if config.privacy_unit == "user":
        return "users" if config.user_sampling == "uls" else "training examples after the per-user cap"
    return "training examples"


def public_size_needed(config: RunConfig, why: str) -> ConfigError:
    """The one message for add/remove without a public size: what is wrong, and the two ways out."""
    fallback = (
        "or user_sampling=uls with accountant=pld (replace_one)"
        if config.privacy_unit == "user" and config.user_sampling == "els"
        else "or accountant=pld with neighboring=replace_one (auto), where the exact size is public by definition"
    )
    return ConfigError(
        f"{why}, and add/remove needs a dataset size you declare public: the exact size is itself private (one unit "
        "more or less changes it), so q, the steps, delta and the published size must come from a public number. "
        f"Set public_dataset_size=N (the number of {sampled_units(config)}; `workbench check` shows it), {fallback}."
    )


def resolve_neighboring(config: RunConfig) -> str:
    """The relation the epsilon is for: the config's, or (auto) add_remove with a public size, else replace_one
    where it can be analysed. add_remove without a public size is refused (``public_size_needed``)."""
    els = config.privacy_unit == "user" and config.user_sampling == "els"
    bound = privacy.bound_accountant(config.accountant)
    public = config.public_dataset_size is not None
    if config.neighboring == "auto":  # Edgeworth's comparison is add/remove only, so it needs add_remove
        if public:
            return "add_remove"
        if config.accountant == "pld" and not els:
            return "replace_one"
        what = "user-level ELS (the mixture-of-Gaussians PLD)" if els else f"accountant={config.accountant}"
        raise public_size_needed(config, f"{what} analyses add/remove neighbours only")
    if config.neighboring == "add_remove" and not public:
        raise public_size_needed(config, "neighboring=add_remove")
    if config.neighboring == "replace_one":
        if els:
            raise ConfigError(
                "neighboring=replace_one is not available for user-level ELS: dp_accounting's mixture-of-Gaussians PLD "
                "analyses add/remove only. Use neighboring=add_remove (or auto), or user_sampling=uls."
            )
        if bound != "pld":
            raise ConfigError(
                f"neighboring=replace_one needs accountant=pld: the {bound} accountant analyses add/remove neighbours "
                "only. Use accountant=pld, or neighboring=add_remove (or auto)."
            )
    return config.neighboring


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
    neighboring = resolve_neighboring(config)
    # every published number from a public size: the declared one, else (replace_one) the exact one
    published = config.public_dataset_size or population
    if published < config.batch_size:
        raise ConfigError(
            f"public_dataset_size={published} is below batch_size={config.batch_size}: the sampling rate "
            "q = batch_size / public_dataset_size would exceed 1. Lower batch_size or check the size."
        )
    q = min(1.0, config.batch_size / published)
    if config.max_steps is not None:
        steps = config.max_steps
    else:
        steps = max(1, math.ceil((config.epochs if config.epochs is not None else 1.0) / q))
    protected = num_users if user else dataset_size  # delta must be below 1 / (number of protected units)
    # the default delta from the public size (under ELS it counts examples, at least the users: smaller, safe)
    default_delta = config.default_delta(dataset_size=config.public_dataset_size or protected)
    delta = config.delta if config.delta is not None else default_delta
    who = "users" if user else "examples"
    if delta >= 1.0 / protected:
        raise ConfigError(
            f"delta={delta:g} is not below 1/N = {1.0 / protected:.3g} (N={protected} {who}); such a delta allows "
            f"leaking a whole {who[:-1]}. Choose delta <= {default_delta:g} or leave it empty."
        )
    k = config.max_examples_per_user if user else None
    bound = "pld" if user and not uls else privacy.bound_accountant(config.accountant)  # ELS: the mixture PLD
    sigma = config.noise_multiplier
    if sigma is None:
        if user and not uls:
            sigma = calibrate_els(target_epsilon=config.target_epsilon, sample_rate=q, steps=steps, delta=delta, k=k)
        else:
            sigma = privacy.calibrate(
                target_epsilon=config.target_epsilon,
                sample_rate=q,
                steps=steps,
                delta=delta,
                accountant=bound,
                neighboring=neighboring,
            )
    return PrivacyPlan(
        dataset_size=dataset_size,
        sample_rate=q,
        steps=steps,
        delta=delta,
        noise_multiplier=float(sigma),
        accountant=bound,
        target_epsilon=config.target_epsilon if sigma > 0 else None,
        max_grad_norm=config.max_grad_norm,
        privacy_unit=config.privacy_unit,
        user_sampling=config.user_sampling if user else None,
        max_examples_per_user=k,
        num_users=num_users,
        neighboring=neighboring,
        published_population=published,
        comparison_accountant="edgeworth" if config.accountant == "edgeworth" and not (user and not uls) else None,
    )


# -- the plan as the UIs draw it: curves, progressively ---------------------------------------------
# One implementation for the app's Plan tab (app/forms.py) and the PrivacyPlanner widget
# (widgets/planner.py): calibration by the same upper bound the engine uses, then one epsilon curve
# per accountant, cheap ones first, with a place to stop between slow computations.

# Points per curve: accounting cost per point differs by three orders of magnitude (RDP and
# Edgeworth well under a millisecond to 5 ms, PLD about 50 ms, PRV 0.3-1 s on 2 busy CPU cores).
CURVE_POINTS = {"rdp": 50, "edgeworth": 50, "pld": 25, "prv": 10}
SLOW_ACCOUNTANTS = ("pld", "prv")
FAST_FIRST = ("rdp", "edgeworth", "pld", "prv")


def curve_steps(steps: int, points: int) -> list[int]:
    """About ``points`` steps from 0 to ``steps`` at which to evaluate a curve: half evenly spaced,
    half geometrically spaced, because epsilon rises fastest over the first steps.

    >>> curve_steps(1000, 6)
    [0, 1, 32, 500, 1000]
    """
    import numpy as np

    if steps <= points:
        return list(range(steps + 1))
    even = np.linspace(0, steps, max(2, points - points // 2))
    early = np.geomspace(1, steps, max(1, points // 2))
    return sorted({0, steps, *(int(round(x)) for x in (*even, *early))})


@dataclass(frozen=True)
class PlanCurves:
    """One stage of a progressive plan: the sigma and the curves known so far."""

    sample_rate: float
    steps: int
    delta: float
    neighboring: str
    bound: str  # the upper-bound accountant that sets sigma (never edgeworth)
    noise_multiplier: float | None  # None until calibrated (or a calibration failed: see errors)
    curves: dict[str, list[tuple[int, float]]] = field(default_factory=dict)  # accountant -> (step, epsilon)
    pending: tuple[str, ...] = ()  # accountants whose curves are still to come
    provisional: bool = False  # noise_multiplier is RDP's while the bound calibrates
    sigma_needed: dict[str, float] = field(default_factory=dict)  # each accountant's own sigma (compare_sigmas)
    errors: dict[str, str] = field(default_factory=dict)  # accountant -> message

    def final_epsilon(self, accountant: str) -> float | None:
        curve = self.curves.get(accountant)
        return curve[-1][1] if curve else None


def plan_curves(
    *,
    sample_rate: float,
    steps: int,
    delta: float,
    accountants: tuple[str, ...],
    selected: str,
    neighboring: str,
    noise_multiplier: float | None = None,
    target_epsilon: float | None = None,
    els_k: int | None = None,
    compare_sigmas: bool = False,
    points: dict[str, int] | None = None,
):
    """The plan, progressively: yields ``PlanCurves`` as each piece arrives and ``None`` between slow
    computations (a place for a UI to stop when its fields changed: it just stops iterating).

    ``noise_multiplier`` given, or calibrated for ``target_epsilon`` by the upper bound for
    ``selected`` (``privacy.bound_accountant``: an approximation never sets the noise), or by the ELS
    mixture PLD when ``els_k`` is set (a user-level target).  While a slow bound calibrates, RDP's
    sigma comes first, marked ``provisional``.  ``compare_sigmas``: also each other upper bound's
    own sigma for the target (a calculator's readout).  Then one curve per accountant, the selected
    bound first after RDP; under replace-one only PLD's (the only one dp_accounting has for it; the
    others' refusals are in ``errors``).
    """
    points = {**CURVE_POINTS, **(points or {})}
    bound = privacy.bound_accountant(selected)
    wanted = [a for a in dict.fromkeys(("rdp", bound, selected, *sorted(accountants, key=_speed))) if a in accountants]
    order = [a for a in wanted if a == "pld"] if neighboring == "replace_one" else wanted
    stage = PlanCurves(sample_rate, steps, delta, neighboring, bound, noise_multiplier, pending=tuple(order))
    for acc in wanted:  # replace-one: only PLD has it (privacy/accountants.py); the others say why
        if acc not in order:
            try:
                check_neighboring(neighboring, accountant=acc)
            except privacy.PrivacyError as err:
                stage.errors[acc] = str(err)

    def calibrate(accountant: str) -> float:
        return privacy.calibrate(
            target_epsilon=target_epsilon,
            sample_rate=sample_rate,
            steps=steps,
            delta=delta,
            accountant=accountant,
            neighboring=neighboring,
        )

    if noise_multiplier is None:
        if bound in SLOW_ACCOUNTANTS and neighboring == "add_remove" and not compare_sigmas:
            rdp = calibrate("rdp")  # a first answer in well under a second
            yield _with(
                stage, noise_multiplier=rdp, provisional=True, curves={"rdp": _curve("rdp", rdp, stage, points)}
            )
            yield None
        try:
            sigma = (
                calibrate_els(target_epsilon=target_epsilon, sample_rate=sample_rate, steps=steps, delta=delta, k=els_k)
                if els_k
                else calibrate(bound)
            )
        except privacy.PrivacyError as err:  # nothing to draw: the message is the plan
            yield _with(stage, noise_multiplier=None, provisional=False, pending=(), errors={bound: str(err)})
            return
        stage = _with(stage, noise_multiplier=sigma, sigma_needed={bound: sigma})
        if compare_sigmas:
            for acc in order:
                if acc in (bound, "edgeworth"):
                    continue
                yield None
                try:
                    stage.sigma_needed[acc] = calibrate(acc)
                except privacy.PrivacyError as err:
                    stage.errors[acc] = str(err)
    sigma = stage.noise_multiplier
    if not sigma:  # a non-private baseline: no curves
        yield _with(stage, pending=())
        return
    for i, acc in enumerate(order):
        try:
            curve = []
            for t in curve_steps(steps, points.get(acc, 20)):
                curve.append((t, _epsilon(acc, sigma, t, stage)))
                if acc in SLOW_ACCOUNTANTS:
                    yield None
            stage.curves[acc] = curve
        except privacy.PrivacyError as err:
            stage.errors.setdefault(acc, str(err))
        stage = _with(stage, pending=tuple(order[i + 1 :]))
        yield stage


def _speed(accountant: str) -> int:
    return FAST_FIRST.index(accountant) if accountant in FAST_FIRST else len(FAST_FIRST)


def _with(stage: PlanCurves, **changes) -> PlanCurves:
    """A copy with ``changes`` (its dicts copied too, so an earlier stage never changes under a UI)."""
    import dataclasses

    base = {"curves": dict(stage.curves), "sigma_needed": dict(stage.sigma_needed), "errors": dict(stage.errors)}
    return dataclasses.replace(stage, **{**base, **changes})


def _epsilon(accountant: str, sigma: float, t: int, stage: PlanCurves) -> float:
    if t == 0:
        return 0.0
    return privacy.epsilon(
        noise_multiplier=sigma,
        sample_rate=stage.sample_rate,
        steps=t,
        delta=stage.delta,
        accountant=accountant,
        neighboring=stage.neighboring,
    )


def _curve(accountant: str, sigma: float, stage: PlanCurves, points: dict[str, int]) -> list[tuple[int, float]]:
    return [(t, _epsilon(accountant, sigma, t, stage)) for t in curve_steps(stage.steps, points.get(accountant, 20))]
