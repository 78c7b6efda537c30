"""The plan as the UIs draw it: one mechanism's epsilon curves, progressively.

One implementation for the app's Plan tab and the PrivacyPlanner widget (both through
``planning.stages.plan_stages``): calibration by the same upper bound the engine uses, then one epsilon curve
per accountant, cheap ones first, with a place to stop between slow computations.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from workbench import privacy
from workbench.planning.mechanism import Mechanism
from workbench.privacy.validation import check_neighboring

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
    """One stage of a progressive plan: the mechanism (sigma None until calibrated, or when a calibration
    failed: see errors) and the curves known so far."""

    mechanism: Mechanism
    curves: dict[str, list[tuple[int, float]]] = field(default_factory=dict)  # accountant -> (step, epsilon)
    pending: tuple[str, ...] = ()  # accountants whose curves are still to come
    provisional: bool = False  # the mechanism's sigma is RDP's while the bound calibrates
    sigma_needed: dict[str, float] = field(default_factory=dict)  # each accountant's own sigma (compare_sigmas)
    errors: dict[str, str] = field(default_factory=dict)  # accountant -> message

    noise_multiplier = property(lambda self: self.mechanism.noise_multiplier)
    bound = property(lambda self: self.mechanism.accountant)  # the upper bound that sets sigma (never edgeworth)

    def final_epsilon(self, accountant: str) -> float | None:
        curve = self.curves.get(accountant)
        return curve[-1][1] if curve else None


def plan_curves(
    mechanism: Mechanism,
    *,
    accountants: tuple[str, ...],
    selected: str,
    target_epsilon: float | None = None,
    compare_sigmas: bool = False,
    points: dict[str, int] | None = None,
):
    """The plan, progressively: yields ``PlanCurves`` as each piece arrives and ``None`` between slow
    computations (a place for a UI to stop when its fields changed: it just stops iterating).

    ``mechanism``'s sigma, or (None) calibrated for ``target_epsilon`` by its upper bound
    (``Mechanism.calibrated``: an approximation never sets the noise; the ELS mixture PLD for a user-level
    target). While a slow bound calibrates, RDP's sigma comes first, marked ``provisional``.
    ``compare_sigmas``: also each other upper bound's own sigma for the target (a calculator's readout).
    Then one curve of the sampled unit's epsilon per accountant, the selected bound first after RDP; under
    replace-one only PLD's (the only one dp_accounting has for it; the others' refusals are in ``errors``).
    """
    points = {**CURVE_POINTS, **(points or {})}
    bound = mechanism.accountant
    neighboring = mechanism.neighboring
    wanted = [a for a in dict.fromkeys(("rdp", bound, selected, *sorted(accountants, key=_speed))) if a in accountants]
    order = [a for a in wanted if a == "pld"] if neighboring == "replace_one" else wanted
    stage = PlanCurves(mechanism, pending=tuple(order))
    for acc in wanted:  # replace-one: only PLD has it (privacy/accountants.py); the others say why
        if acc not in order:
            try:
                check_neighboring(neighboring, accountant=acc)
            except privacy.PrivacyError as err:
                stage.errors[acc] = str(err)

    def calibrate(accountant: str) -> float:
        unit = dataclasses.replace(mechanism, accountant=accountant, privacy_unit="example", user_sampling=None)
        return unit.calibrated(target_epsilon).noise_multiplier

    if mechanism.noise_multiplier is None:
        if bound in SLOW_ACCOUNTANTS and neighboring == "add_remove" and not compare_sigmas:
            rdp = calibrate("rdp")  # a first answer in well under a second
            first = _with(stage, mechanism=mechanism.with_sigma(rdp), provisional=True)
            yield _with(first, curves={"rdp": _curve("rdp", first, points)})
            yield None
        try:
            calibrated = mechanism.calibrated(target_epsilon)
        except privacy.PrivacyError as err:  # nothing to draw: the message is the plan
            yield _with(stage, provisional=False, pending=(), errors={bound: str(err)})
            return
        stage = _with(stage, mechanism=calibrated, sigma_needed={bound: calibrated.noise_multiplier})
        if compare_sigmas:
            for acc in order:
                if acc in (bound, "edgeworth"):
                    continue
                yield None
                try:
                    stage.sigma_needed[acc] = calibrate(acc)
                except privacy.PrivacyError as err:
                    stage.errors[acc] = str(err)
    if not stage.mechanism.private:  # a non-private baseline: no curves
        yield _with(stage, pending=())
        return
    for i, acc in enumerate(order):
        try:
            curve = []
            for t in curve_steps(mechanism.steps, points.get(acc, 20)):
                curve.append((t, _epsilon(acc, t, stage)))
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
    base = {"curves": dict(stage.curves), "sigma_needed": dict(stage.sigma_needed), "errors": dict(stage.errors)}
    return dataclasses.replace(stage, **{**base, **changes})


def _epsilon(accountant: str, t: int, stage: PlanCurves) -> float:
    """The sampled unit's epsilon after ``t`` steps by ``accountant`` (an example; a user under ULS)."""
    if t == 0:
        return 0.0
    m = stage.mechanism
    return privacy.epsilon(
        noise_multiplier=m.noise_multiplier,
        sample_rate=m.sample_rate,
        steps=t,
        delta=m.delta,
        accountant=accountant,
        neighboring=m.neighboring,
    )


def _curve(accountant: str, stage: PlanCurves, points: dict[str, int]) -> list[tuple[int, float]]:
    steps = stage.mechanism.steps
    return [(t, _epsilon(accountant, t, stage)) for t in curve_steps(steps, points.get(accountant, 20))]
