"""The privacy cost of choosing among runs on the same data (REFERENCES.md section 8).

- K runs on one dataset, any of them released or used to choose: at most the composition of all K
  (PLD over their events). Always valid, whatever the selection looked at.
- One tuning session whose number of runs is random (drawn, from OS entropy, before any run, from a
  distribution fixed in advance) and of which only the best run is released: Papernot and Steinke
  2022 ("Hyperparameter tuning with Renyi differential privacy", arXiv 2110.03620), dp_accounting's
  ``RepeatAndSelectDpEvent(event, mean, shape)`` with shape inf = Poisson, 1 = geometric,
  0 = logarithmic, other = truncated negative binomial. Computed with RDP (the only dp_accounting
  accountant that has it), for add/remove neighbours and Poisson-sampled Gaussian runs.

Both are upper bounds, so a session may use the smaller. The score that picks the best run is part
of the selection: a validation metric computed on private data must be computed privately, or the
data it reads counted as well.

Reference values (one run = q 0.01, sigma 0.5863, T 1000, delta 1e-5; tests/store/test_ledger.py pins them):
RDP epsilon 9.3 alone; best of 10 by fixed composition 24.8 (PLD; the reference table rounds it to
25.0); RepeatAndSelect with mean 10: Poisson 16.3, geometric 14.6, truncated negative binomial
(shape 0.5) 14.0, logarithmic 13.4.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from dp_accounting import dp_event
from dp_accounting.rdp import rdp_privacy_accountant

from workbench.privacy.accountants import PrivacyError, check_delta, check_neighboring, check_real
from workbench.privacy.dp_events import composed_epsilon, event_to_json, has_mixture, is_non_private

# name -> shape of RepeatAndSelectDpEvent's distribution of the number of runs (None: give the shape)
DISTRIBUTIONS = {"poisson": math.inf, "geometric": 1.0, "logarithmic": 0.0, "truncated_negative_binomial": None}


def shape_of(distribution: str, shape: float | None = None) -> float:
    """The RepeatAndSelect shape for a named distribution (``shape`` for the truncated negative binomial)."""
    if distribution not in DISTRIBUTIONS:
        raise PrivacyError(f"distribution must be one of {', '.join(DISTRIBUTIONS)}. Found {distribution!r}.")
    fixed = DISTRIBUTIONS[distribution]
    if fixed is not None:
        return fixed
    value = check_real("shape", shape) if shape is not None else None
    if value is None or not 0 < value:
        raise PrivacyError(f"the truncated negative binomial needs a shape > 0 (e.g. 0.5). Found {shape!r}.")
    return value


def distribution_of(shape: float) -> str:
    """The name of RepeatAndSelect's distribution for ``shape``."""
    if shape == math.inf:
        return "poisson"
    return {1.0: "geometric", 0.0: "logarithmic"}.get(float(shape), "truncated_negative_binomial")


def composition_epsilon(events: Sequence[dp_event.DpEvent], *, delta: float, neighboring: str = "add_remove") -> float:
    """Epsilon of all K runs composed with PLD: the cost of releasing (or choosing among) all of them."""
    return composed_epsilon(list(events), delta=delta, neighboring=neighboring)


def rdp_epsilon(event: dp_event.DpEvent, *, delta: float) -> float:
    """Epsilon of ``event`` with dp_accounting's RDP accountant (add/remove)."""
    accountant = _rdp_accountant(event)
    return float(accountant.get_epsilon(check_delta(delta)))


def _rdp_accountant(event: dp_event.DpEvent) -> rdp_privacy_accountant.RdpAccountant:
    accountant = rdp_privacy_accountant.RdpAccountant()
    if has_mixture(event) or not accountant.supports(event):
        raise PrivacyError(
            "dp_accounting's RDP accountant cannot analyse this run (a user-level ELS mixture of Gaussians); "
            "the RepeatAndSelect bound needs RDP, so only the composition of all runs is available."
        )
    accountant.compose(event)
    return accountant


def repeat_and_select_epsilon(
    events: dp_event.DpEvent | Sequence[dp_event.DpEvent], *, mean: float, shape: float, delta: float
) -> float:
    """Epsilon of a tuning session with a random number of runs (mean ``mean``, ``shape``) that releases
    only the best: RDP of RepeatAndSelectDpEvent.

    ``events``: the run's event, or the candidates' events when the session draws its settings at
    random from a fixed list; each candidate then satisfies the pointwise maximum of their RDP curves,
    which is what the theorem is applied to (equal to dp_accounting's own when all are the same).
    """
    delta = check_delta(delta)
    mean = check_real("mean", mean)
    if mean < 1:
        raise PrivacyError(f"the mean number of runs must be >= 1. Found {mean}.")
    if shape is None or math.isnan(shape) or shape < 0:
        raise PrivacyError(f"shape must be >= 0 (inf = Poisson, 1 = geometric, 0 = logarithmic). Found {shape!r}.")
    candidates = [events] if isinstance(events, dp_event.DpEvent) else list(events)
    if not candidates:
        raise PrivacyError("a tuning session needs at least one run.")
    if any(is_non_private(e) for e in candidates):
        return math.inf
    if len({event_to_json(e) for e in candidates}) == 1:
        accountant = _rdp_accountant(dp_event.RepeatAndSelectDpEvent(candidates[0], mean, shape))
        return float(accountant.get_epsilon(delta))
    curves = [_rdp_accountant(e) for e in candidates]
    orders, worst = curves[0].orders, np.max([a.rdp for a in curves], axis=0)
    # dp_accounting's own transform of a run's RDP curve (what RdpAccountant does for RepeatAndSelectDpEvent)
    rdp = rdp_privacy_accountant._compute_rdp_repeat_and_select(orders, worst, mean, shape)
    return float(rdp_privacy_accountant.compute_epsilon(orders, rdp, delta)[0])


@dataclass(frozen=True)
class TuningCost:
    """What choosing among ``runs`` runs costs: the composition of all (always valid) and, for one session
    with a random number of runs, the RepeatAndSelect bound (None when it does not apply, with the note)."""

    runs: int
    delta: float
    neighboring: str
    composition: float
    repeat_and_select: float | None = None
    distribution: str | None = None
    mean: float | None = None
    shape: float | None = None
    note: str | None = None

    @property
    def epsilon(self) -> float:
        """The smaller valid bound."""
        return min(self.composition, self.repeat_and_select if self.repeat_and_select is not None else math.inf)


def tuning_cost(
    events: Sequence[dp_event.DpEvent],
    *,
    delta: float,
    neighboring: str = "add_remove",
    mean: float | None = None,
    distribution: str | None = None,
    shape: float | None = None,
    candidates: Sequence[dp_event.DpEvent] | None = None,
) -> TuningCost:
    """The cost of choosing the best of ``events`` (K runs on one dataset, all under ``neighboring``).

    With ``mean`` and ``distribution`` (or ``shape``): the runs were one tuning session whose number of
    runs was drawn at random, so RepeatAndSelect applies too (add/remove, Gaussian runs only; otherwise
    the note says why not). ``candidates``: the settings the session drew from, when it drew at random
    from a list; by default the distinct runs in ``events`` are taken as that list."""
    neighboring = check_neighboring(neighboring)
    events = list(events)
    total = composition_epsilon(events, delta=delta, neighboring=neighboring)
    if mean is None:
        return TuningCost(len(events), delta, neighboring, total)
    shape = shape_of(distribution, shape) if distribution is not None else shape
    if shape is None:
        raise PrivacyError(
            "a tuning session needs its distribution (poisson, geometric, logarithmic, "
            "truncated_negative_binomial) or its shape."
        )
    name = distribution_of(shape)
    if neighboring != "add_remove":
        note = (
            "the RepeatAndSelect bound is RDP, which dp_accounting analyses for add/remove neighbours only; "
            "these runs are replace_one, so only the composition of all runs applies"
        )
        return TuningCost(len(events), delta, neighboring, total, None, name, mean, shape, note)
    try:
        bound = repeat_and_select_epsilon(list(candidates or events), mean=mean, shape=shape, delta=delta)
    except PrivacyError as err:
        return TuningCost(len(events), delta, neighboring, total, None, name, mean, shape, str(err))
    return TuningCost(len(events), delta, neighboring, total, bound, name, mean, shape)
