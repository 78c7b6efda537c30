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

import dataclasses
import math
from dataclasses import dataclass

from workbench import privacy
from workbench.config import ConfigError, RunConfig
from workbench.planning.mechanism import Mechanism

ELS_CURVE_POINTS = 12  # the mixture PLD costs seconds per point

_MECHANISM_FIELDS = {f.name for f in dataclasses.fields(Mechanism)}


@dataclass(frozen=True)
class PrivacyPlan:
    """A run's plan: its mechanism, the budget, the clipping norm and the sizes it is published with."""

    mechanism: Mechanism
    dataset_size: int  # examples (after the per-user cap)
    target_epsilon: float | None  # the budget; training stops before exceeding it
    max_grad_norm: float | None
    num_users: int | None = None
    published_population: int | None = None  # the number of sampled units the report publishes

    @classmethod
    def of(cls, **settings) -> PrivacyPlan:
        """A plan from flat settings (the mechanism's fields beside the plan's): for tests and scripts."""
        mech = {k: v for k, v in settings.items() if k in _MECHANISM_FIELDS}
        return cls(mechanism=Mechanism(**mech), **{k: v for k, v in settings.items() if k not in _MECHANISM_FIELDS})

    # the mechanism's fields, read through (declared once, in Mechanism)
    sample_rate = property(lambda self: self.mechanism.sample_rate)
    steps = property(lambda self: self.mechanism.steps)
    delta = property(lambda self: self.mechanism.delta)
    noise_multiplier = property(lambda self: self.mechanism.noise_multiplier)
    accountant = property(lambda self: self.mechanism.accountant)
    neighboring = property(lambda self: self.mechanism.neighboring)
    privacy_unit = property(lambda self: self.mechanism.privacy_unit)
    user_sampling = property(lambda self: self.mechanism.user_sampling)
    max_examples_per_user = property(lambda self: self.mechanism.max_examples_per_user)
    comparison_accountant = property(lambda self: self.mechanism.comparison_accountant)
    private = property(lambda self: self.mechanism.private)
    els = property(lambda self: self.mechanism.els)

    @property
    def population(self) -> int:
        """The number of sampled units: users under ULS, examples otherwise."""
        return self.num_users if self.mechanism.uls else self.dataset_size

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
        return self.mechanism.epsilon(step)

    def example_epsilon_at(self, step: int) -> float:
        """Epsilon of the sampled unit (an example; a user under ULS)."""
        return self.mechanism.unit_epsilon(step)

    def settings(self) -> dict:
        """The plan's public settings under the names the run-started event and the summary both use."""
        return {**self.mechanism.settings(), "target_epsilon": self.target_epsilon}

    def comparison_epsilon_at(self, step: int) -> float | None:
        """Edgeworth's approximation of the example-level epsilon, when asked for (display only)."""
        return self.mechanism.comparison_epsilon(step)

    def curve(self) -> list[tuple[int, float]]:
        return self.mechanism.curve(ELS_CURVE_POINTS)

    def budget_allows(self, step: int) -> bool:
        """Whether taking step number ``step`` keeps epsilon within the target."""
        if not self.private or self.target_epsilon is None:
            return True
        return self.epsilon_at(step) <= self.target_epsilon * (1 + 1e-9)

    def user_level_report(self, steps: int) -> dict:
        """ELS: the example-level epsilon and the older group-privacy bound beside the user-level one."""
        if not (self.els and self.private and steps):
            return {}
        eps_g, delta_g = self.mechanism.group_bound(steps)
        return {
            "example_level_epsilon": self.example_epsilon_at(steps),
            "group_privacy_epsilon": eps_g,
            "group_privacy_delta": delta_g,
        }

    def dp_event(self, steps: int):
        """The mechanism of ``steps`` steps as a dp_accounting event (``Mechanism.dp_event``): what the ledger
        composes."""
        return self.mechanism.dp_event(steps)


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


def mechanism_for(config: RunConfig, *, dataset_size: int, num_users: int | None = None) -> tuple[Mechanism, int]:
    """The config's mechanism on this data (sigma None when a target is to be calibrated) and the population it
    is published with. Resolves q, T, delta and the relation; refuses batch > N and delta >= 1/N."""
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
    els = user and not uls
    mechanism = Mechanism(
        sample_rate=q,
        steps=steps,
        delta=delta,
        noise_multiplier=None if config.noise_multiplier is None else float(config.noise_multiplier),
        accountant="pld" if els else privacy.bound_accountant(config.accountant),  # ELS: the mixture PLD
        neighboring=neighboring,
        privacy_unit=config.privacy_unit,
        user_sampling=config.user_sampling if user else None,
        max_examples_per_user=config.max_examples_per_user if user else None,
        comparison_accountant="edgeworth" if config.accountant == "edgeworth" and not els else None,
    )
    return mechanism, published


def make_plan(config: RunConfig, *, dataset_size: int, num_users: int | None = None) -> PrivacyPlan:
    """The run's plan: its mechanism (sigma calibrated to the target by the upper bound when no noise is given),
    the budget and the published population."""
    mechanism, published = mechanism_for(config, dataset_size=dataset_size, num_users=num_users)
    if mechanism.noise_multiplier is None:
        mechanism = mechanism.calibrated(config.target_epsilon)
    return PrivacyPlan(
        mechanism=mechanism,
        dataset_size=dataset_size,
        target_epsilon=config.target_epsilon if mechanism.private else None,
        max_grad_norm=config.max_grad_norm,
        num_users=num_users,
        published_population=published,
    )
