"""What a run's mechanism was, as dp_accounting ``DpEvent`` values: JSON, and their PLD composition.

JSON format. dp_accounting's own serialisation of an event is ``DpEvent.to_named_tuple()`` (and its
inverse ``DpEvent.from_named_tuple``): nested named tuples holding ``module_name``, ``class_name``
and the event's attrs fields. We write exactly those named tuples as JSON objects, e.g. a run of
1000 Poisson-sampled Gaussian steps::

    {"module_name": "dp_accounting.dp_event", "class_name": "SelfComposedDpEvent",
     "event": {"module_name": "dp_accounting.dp_event", "class_name": "PoissonSampledDpEvent",
               "sampling_probability": 0.01,
               "event": {"module_name": "dp_accounting.dp_event", "class_name": "GaussianDpEvent",
                         "noise_multiplier": 0.5863}},
     "count": 1000}

JSON has no infinity, so a float field that is infinite (RepeatAndSelectDpEvent's Poisson shape)
is written as the string "inf". Reading back accepts only the event classes below, from
``dp_accounting.dp_event``: stored JSON never chooses a module to import.

Composition is PLD (``dp_accounting.pld.PLDAccountant``), tight rather than a sum of epsilons. Runs
on one dataset compose only under one neighbouring relation; see ``common_relation`` for mixing.
"""

from __future__ import annotations

import collections
import functools
import json
import math
from typing import Any, Iterable, Sequence

from dp_accounting import dp_event
from dp_accounting.pld import pld_privacy_accountant
from dp_accounting.rdp import rdp_privacy_accountant

from workbench.privacy.accountants import (
    _RELATION,
    PLD_GRID_PER_EPSILON,
    PLD_GRIDS,
    PLD_MAX_POINTS_PER_STEP,
    PrivacyError,
    _one_step_loss_width,
    check_delta,
    check_neighboring,
)

MODULE = "dp_accounting.dp_event"
# The event types the workbench writes (and reads back): nothing else is accepted from JSON.
EVENT_TYPES = (
    "GaussianDpEvent",
    "PoissonSampledDpEvent",
    "SelfComposedDpEvent",
    "ComposedDpEvent",
    "MixtureOfGaussiansDpEvent",
    "NonPrivateDpEvent",
    "NoOpDpEvent",
    "RepeatAndSelectDpEvent",
)
MIXTURE_FINEST_GRID = 5e-4  # a mixture-of-Gaussians PLD costs ~1 s per 1,000 grid points (user_level.py)


# ---------------------------------------------------------------------------------------------
# JSON


def _plain(value: Any) -> Any:
    """dp_accounting's named tuples -> JSON-ready dicts and lists; infinities as 'inf'."""
    if hasattr(value, "_fields") and hasattr(value, "class_name"):
        return {name: _plain(getattr(value, name)) for name in value._fields}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return "inf" if value > 0 else ("-inf" if value < 0 else "nan")
    return value


def event_to_dict(event: dp_event.DpEvent) -> dict[str, Any]:
    """``event`` as dp_accounting's named-tuple form, in plain dicts (see the module docstring)."""
    if type(event).__name__ not in EVENT_TYPES:
        raise PrivacyError(f"cannot store a {type(event).__name__}: the ledger stores {', '.join(EVENT_TYPES)}.")
    return _plain(event.to_named_tuple())


def event_to_json(event: dp_event.DpEvent) -> str:
    """Canonical JSON of ``event`` (sorted keys): equal events give equal strings."""
    return json.dumps(event_to_dict(event), sort_keys=True, separators=(",", ":"))


def _named_tuple(data: Any) -> Any:
    """A JSON value back into dp_accounting's named tuples, checking every class name."""
    if isinstance(data, list):
        return [_named_tuple(v) for v in data]
    if data in ("inf", "-inf", "nan"):
        return float(data)
    if not isinstance(data, dict):
        return data
    module, name = data.get("module_name"), data.get("class_name")
    if module != MODULE or name not in EVENT_TYPES:
        raise PrivacyError(f"not a stored DpEvent: class {module}.{name} (the ledger reads {', '.join(EVENT_TYPES)}).")
    fields = {k: _named_tuple(v) for k, v in data.items() if k not in ("module_name", "class_name")}
    tuple_type = collections.namedtuple(f"_{name}NamedTupleWrapper", ["module_name", "class_name", *fields])
    return tuple_type(module_name=module, class_name=name, **fields)


def event_from_dict(data: dict[str, Any]) -> dp_event.DpEvent:
    """The inverse of ``event_to_dict`` (dp_accounting's ``DpEvent.from_named_tuple``)."""
    try:
        return dp_event.DpEvent.from_named_tuple(_named_tuple(data))
    except (TypeError, ValueError, AttributeError) as err:
        raise PrivacyError(f"not a stored DpEvent ({err}).") from None


def event_from_json(text: str) -> dp_event.DpEvent:
    return event_from_dict(json.loads(text))


# ---------------------------------------------------------------------------------------------
# Walking events


def leaves(event: dp_event.DpEvent) -> Iterable[dp_event.DpEvent]:
    """The mechanisms inside ``event`` (through composition and repetition)."""
    if isinstance(event, dp_event.SelfComposedDpEvent | dp_event.RepeatAndSelectDpEvent):
        yield from leaves(event.event)
    elif isinstance(event, dp_event.ComposedDpEvent):
        for e in event.events:
            yield from leaves(e)
    else:
        yield event


def is_non_private(event: dp_event.DpEvent) -> bool:
    return any(isinstance(e, dp_event.NonPrivateDpEvent) for e in leaves(event))


def has_mixture(event: dp_event.DpEvent) -> bool:
    return any(isinstance(e, dp_event.MixtureOfGaussiansDpEvent) for e in leaves(event))


# ---------------------------------------------------------------------------------------------
# The relation a set of runs composes under

MIXED_RELATIONS_NOTE = (
    "these runs were analysed for different neighbouring relations; the total is for replace_one: the add/remove "
    "runs' mechanisms are analysed as replace-one (the same events, the relation every run satisfies), because an "
    "add/remove total would not cover the exact dataset size the replace-one runs publish"
)


def common_relation(relations: Sequence[str], events: Sequence[dp_event.DpEvent]) -> tuple[str, str | None]:
    """(the relation to compose ``events`` under, a note when the runs' ``relations`` differ).

    One relation: that one. Mixed add_remove and replace_one: replace_one, conservatively (a run's
    Poisson-sampled Gaussian is analysed for replace-one neighbours just as well; the reverse would
    ignore the exact size published by the replace-one runs). A user-level ELS run (mixture of
    Gaussians, analysed for add/remove only) mixed with a replace_one run cannot be composed: refused.
    """
    kinds = sorted({check_neighboring(r) for r in relations})
    if len(kinds) <= 1:
        return (kinds[0] if kinds else "add_remove"), None
    if any(has_mixture(e) for e in events):
        raise PrivacyError(
            "cannot compose these runs: a user-level ELS run (mixture of Gaussians, which dp_accounting analyses for "
            "add/remove only) and a replace_one run; no total is given. Train the user-level runs with one relation "
            "(user_sampling=uls with replace_one, or add_remove throughout)."
        )
    return "replace_one", MIXED_RELATIONS_NOTE


# ---------------------------------------------------------------------------------------------
# PLD composition


def _rough_epsilon(event: dp_event.DpEvent, delta: float, neighboring: str) -> float | None:
    """An RDP (add/remove) estimate of the PLD epsilon, only to choose the grid; None if RDP cannot."""
    accountant = rdp_privacy_accountant.RdpAccountant()
    if not accountant.supports(event):
        return None
    accountant.compose(event)
    eps = float(accountant.get_epsilon(delta))
    return 2 * eps if neighboring == "replace_one" else eps  # replace = remove + add: at most about twice


def pld_grid_for(event: dp_event.DpEvent, *, delta: float, neighboring: str) -> float:
    """The discretisation interval for composing ``event`` with PLD, by the rules of ``accountants.pld_grid``:
    about eps/5000 (a pessimistic grid overstates by under 0.3%), at most 20,000 points over one Gaussian
    step's loss range, and no finer than 5e-4 where a mixture of Gaussians must be built."""
    rough = _rough_epsilon(event, delta, neighboring)
    wanted = (rough if rough is not None and math.isfinite(rough) else 5.0) * PLD_GRID_PER_EPSILON
    for leaf in leaves(event):
        if isinstance(leaf, dp_event.PoissonSampledDpEvent) and isinstance(leaf.event, dp_event.GaussianDpEvent):
            width = _one_step_loss_width(leaf.event.noise_multiplier, leaf.sampling_probability)
            wanted = max(wanted, width / PLD_MAX_POINTS_PER_STEP)
        elif isinstance(leaf, dp_event.MixtureOfGaussiansDpEvent):
            wanted = max(wanted, MIXTURE_FINEST_GRID)
    return next((g for g in PLD_GRIDS if g <= wanted), PLD_GRIDS[-1])


def compose(events: Sequence[dp_event.DpEvent]) -> dp_event.DpEvent:
    """One event for all of ``events`` (identical runs grouped: PLD self-composes them cheaply)."""
    counts: dict[str, int] = {}
    for event in events:
        key = event_to_json(event)
        counts[key] = counts.get(key, 0) + 1
    parts = [
        event_from_json(k) if n == 1 else dp_event.SelfComposedDpEvent(event_from_json(k), n) for k, n in counts.items()
    ]
    return parts[0] if len(parts) == 1 else dp_event.ComposedDpEvent(parts)


def composed_epsilon(
    events: Sequence[dp_event.DpEvent], *, delta: float, neighboring: str = "add_remove", grid: float | None = None
) -> float:
    """Epsilon at ``delta`` of all ``events`` composed with PLD under ``neighboring`` (inf if any is non-private)."""
    delta = check_delta(delta)
    check_neighboring(neighboring)
    if not events:
        return 0.0
    if any(is_non_private(e) for e in events):
        return math.inf
    key = tuple(sorted(event_to_json(e) for e in events))
    return _composed_epsilon_cached(key, delta, neighboring, grid)


@functools.lru_cache(maxsize=256)
def _composed_epsilon_cached(key: tuple[str, ...], delta: float, neighboring: str, grid: float | None) -> float:
    event = compose([event_from_json(k) for k in key])
    grid = grid or pld_grid_for(event, delta=delta, neighboring=neighboring)
    accountant = pld_privacy_accountant.PLDAccountant(_RELATION[neighboring], value_discretization_interval=grid)
    if not accountant.supports(event):
        raise PrivacyError(
            f"dp_accounting's PLD cannot compose these events for {neighboring} neighbours "
            "(a mixture of Gaussians is analysed for add_remove only)."
        )
    accountant.compose(event)
    return float(accountant.get_epsilon(delta))
