"""The one-run audit of a training run, as an object that listens to the trainer's steps.

The trainer (engine/trainer.py) is given ``for_run`` at construction and, on an audit run's rank 0, asks it for the
run's audit (``RunAudit``), which it then calls at three points of every step and once at the end:

    add_canaries(dp, backward)   before the noise: this step's sampled canaries join the clipped sum as extra units
    released(dp, release)        after the noise (a release listener of the DP step, dp_step.ReleaseListener): the
                                 gradient canaries add the released noisy sums to their scores' running sum
    step_fields(step)            the step event's audit fields: interim readings, and the bound at the final step
    report(step, stopped=...)    {"audit": the result, what it is compared against, and on the demo data the
                                 exposure of its planted secrets} for the summary and the privacy report

Two audits (config ``audit``): gradient canaries (white-box, canaries.py) and input canaries (black-box,
input_canaries.py). Both draw every secret from the run's key (``RunRandomness.canary_rng``), independent of the
sampling and the noise, and are extra units, so the real data's accounting is unchanged (each module proves it).
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Callable

from workbench.audit import canaries as gradient_canaries
from workbench.audit.canaries import GradientCanaries
from workbench.audit.exposure import demo_exposures
from workbench.audit.input_canaries import InputCanaries, canary_count
from workbench.privacy.audit import AuditResult, canary_epsilon

if TYPE_CHECKING:
    from workbench.engine.dp_step import DPGradient, ParamTable, Release
    from workbench.engine.prepare import Prepared

AUDIT_POINTS = 10  # gradient canaries: the running lower bound is computed about this many times, and at the last step

log = logging.getLogger(__name__)


def for_run(prepared: "Prepared", *, params: "ParamTable", randomness, autocast: Callable) -> "RunAudit":
    """The audit ``prepared.config.audit`` asks for: its secrets from the run's key (``randomness``), its canaries
    shaped like ``params`` (the DP step's parameter table) or like the data's examples."""
    kind = prepared.config.audit
    if kind == "gradient_canaries":
        return GradientCanaryAudit(prepared, params=params, randomness=randomness, autocast=autocast)
    if kind == "input_canaries":
        return InputCanaryAudit(prepared, randomness=randomness, autocast=autocast)
    raise ValueError(f"no audit is called {kind!r}; the audits are gradient_canaries and input_canaries")


class RunAudit:
    """What both audits share: when a reading is the bound, the epsilon it is compared against, the report."""

    auditor: GradientCanaries | InputCanaries

    def __init__(self, prepared: "Prepared", *, randomness, autocast: Callable) -> None:
        self.p, self.randomness, self.autocast = prepared, randomness, autocast
        self._report: tuple[int, dict] | None = None  # report()'s result, per step (scoring is costly)

    # -- every step ----------------------------------------------------------------------------------------
    def add_canaries(self, dp: "DPGradient", backward: Callable[[list], object]) -> None:
        """Add this step's sampled canaries to ``dp``'s clipped sum, before the noise. ``backward(examples)``: the
        trainer's per-example gradients of tokenised examples, clipped and added to ``dp`` as canary units."""
        raise NotImplementedError

    def released(self, dp: "DPGradient", release: "Release") -> None:
        """A release listener (dp_step.ReleaseListener): nothing to read by default."""

    def step_fields(self, step: int) -> dict[str, float]:
        """The step event's audit fields: the bound at the final step only (``audit_epsilon_lower_bound``), interim
        readings before it (``audit_interim``, not a bound)."""
        raise NotImplementedError

    # -- the result ----------------------------------------------------------------------------------------
    def final(self, step: int) -> bool:
        """Whether ``step`` ends the run by the plan (its last step, or the budget's stop): a time fixed before
        training, so the audit there is a bound. Every earlier reading is interim: one of several looks, and a
        largest one picked among them, or a stop decided on one, would not be covered by the confidence."""
        plan = self.p.plan
        return step == plan.steps or not plan.budget_allows(step + 1)

    @staticmethod
    def _reading(value: float, *, final: bool) -> dict[str, float]:
        return {"audit_epsilon_lower_bound": value} if final else {"audit_interim": value}

    def comparison(self, step: int, *, stopped: bool) -> dict:
        """What the bound is compared against (privacy.audit.canary_epsilon, canaries.py proves why), and whether
        this result is only an interim reading."""
        plan = self.p.plan
        eps = canary_epsilon(
            noise_multiplier=plan.noise_multiplier,
            sample_rate=plan.sample_rate,
            steps=step,
            delta=plan.delta,
            accountant=plan.accountant,
        )
        same = plan.neighboring == "add_remove" and plan.privacy_unit == "example"
        what = (
            f"the canaries' own epsilon (add/remove of one canary, Poisson at q = {plan.sample_rate:.4g}, "
            f"sigma = {plan.noise_multiplier:.4g}, {step} steps, delta = {plan.delta:.2g}): "
            + ("the run's claim, for the canaries are units of the same mechanism" if same else "at most the claim")
        )
        interim = stopped or not self.final(step)
        return {"compared_epsilon": eps if math.isfinite(eps) else "inf", "compared_to": what, "interim": interim}

    def result(self) -> AuditResult:
        return self.auditor.result()

    def report(self, step: int, *, stopped: bool) -> dict:
        """{"audit": the result after ``step`` steps} (summary, privacy report), {} before the first step. On the demo
        data it holds the exposure of the planted secrets too (exposure.py). Computed once per step."""
        if step == 0:
            return {}
        if self._report is not None and self._report[0] == step:
            return self._report[1]
        try:
            out = {"audit": {**self.result().to_dict(), **self.comparison(step, stopped=stopped)}}
        except ValueError as err:  # e.g. non-finite released sums: say so rather than lose the summary
            log.error("the audit could not be computed: %s", err)
            return {}
        p = self.p
        if p.config.data == "demo" and p.task == "causal_lm":
            try:
                out["audit"]["exposure"] = demo_exposures(p, self.randomness.exposure_rng(), autocast=self.autocast)
            except Exception:  # noqa: BLE001 - the exposure test failing must not lose the audit
                log.exception("the exposure of the demo secrets could not be computed")
        self._report = (step, out)
        return out


class GradientCanaryAudit(RunAudit):
    """audit=gradient_canaries (white-box, canaries.py): secret canary gradients of norm C, scored on the released
    noisy sums; the running bound every few steps."""

    def __init__(self, prepared: "Prepared", *, params: "ParamTable", randomness, autocast: Callable) -> None:
        """Secret canaries from the run's key. An extra unit each: the real data's accounting is unchanged."""
        super().__init__(prepared, randomness=randomness, autocast=autocast)
        plan = prepared.plan
        self.auditor = GradientCanaries(
            params,
            count=prepared.config.audit_canaries or gradient_canaries.DEFAULT_COUNT,
            sample_rate=plan.sample_rate,
            clip_norm=plan.max_grad_norm,
            delta=plan.delta,
            rng=randomness.canary_rng(),
            steps=plan.steps,
        )

    def add_canaries(self, dp: "DPGradient", backward: Callable[[list], object]) -> None:
        self.auditor.add_to(dp)  # the sampled canaries join the clipped sum before the noise

    def released(self, dp: "DPGradient", release: "Release") -> None:
        self.auditor.released(dp, release)  # the scores read the released noisy sums

    def step_fields(self, step: int) -> dict[str, float]:
        every, final = max(1, self.p.plan.steps // AUDIT_POINTS), self.final(step)
        if step % every and not final:
            return {}
        return self._reading(self.auditor.result().epsilon_lower_bound, final=final)


class InputCanaryAudit(RunAudit):
    """audit=input_canaries (black-box, input_canaries.py): secret canary examples, trained as extra units and
    scored by how much training lowered their loss; the bound at the final step only (scoring costs 2 m forwards)."""

    def __init__(self, prepared: "Prepared", *, randomness, autocast: Callable) -> None:
        """Secret canary examples from the run's key, Poisson-sampled at the real units' q. Extra units whose
        content and coins are independent of the data: the real data's accounting is unchanged."""
        super().__init__(prepared, randomness=randomness, autocast=autocast)
        plan = prepared.plan
        units = plan.published_population or plan.population  # published: m must not reveal the exact size
        unit = "user" if plan.privacy_unit == "user" and plan.user_sampling == "uls" else "example"
        count = canary_count(prepared.config.audit_canaries, units=units, unit=unit)
        self.auditor = InputCanaries(
            prepared,
            count=count,
            sample_rate=plan.sample_rate,
            delta=plan.delta,
            rng=randomness.canary_rng(),
            autocast=autocast,
            steps=plan.steps,
        )

    def add_canaries(self, dp: "DPGradient", backward: Callable[[list], object]) -> None:
        """This step's sampled input canaries: per-example gradients, clipped and summed as extra units."""
        canaries = self.auditor
        backward([canaries.examples[i] for i in canaries.sample()])

    def step_fields(self, step: int) -> dict[str, float]:
        if not self.final(step):
            return {}
        return self._reading(self.auditor.result().epsilon_lower_bound, final=True)
