"""Immutable, JSON-serialisable records of what a training run did.

The engine emits these; the run store, the app, the notebooks and the terminal progress bar
subscribe to them.  ``to_dict`` / ``event_from_dict`` round-trip through JSON unchanged.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar

__all__ = [
    "Event",
    "RunStarted",
    "StepMetrics",
    "EvalMetrics",
    "RunEnded",
    "ClientMetrics",
    "event_from_dict",
    "GRAD_NORM_BIN_EDGES",
    "GRAD_NORM_LOG_BIN_EDGES",
    "jsonable",
    "stored_epsilon",
]

# Fixed bins for per-example gradient-norm histograms, in units of the clipping norm C
# (edges 0, 0.1 C, ..., 3 C, then one overflow bin), so histograms of different steps and runs
# line up in the heatmap.
GRAD_NORM_BIN_EDGES: tuple[float, ...] = tuple(round(0.1 * i, 2) for i in range(31)) + (math.inf,)
# Log-spaced bins, also in units of C: edges 10^(-2 + k/4) for k = 0..16 (0.01 C to 100 C, four bins a decade).
# StepMetrics.grad_norm_log_hist counts 18 bins: below 0.01 C (underflow, with zero norms), the 16 bins (each
# [low, high)), and from 100 C up (overflow, with non-finite norms).
GRAD_NORM_LOG_BIN_EDGES: tuple[float, ...] = tuple(10.0 ** ((k - 8) / 4) for k in range(17))


def _now() -> float:
    return time.time()


def _json_float(x: float | None) -> float | str | None:
    """JSON has no infinity: store it as the string 'inf' (and NaN as 'nan')."""
    if x is None:
        return None
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    if math.isnan(x):
        return "nan"
    return x


def jsonable(value: Any) -> Any:
    """``value`` with infinities and NaN as the strings 'inf', '-inf', 'nan' (JSON has none)."""
    return _clean(value)


def _clean(value: Any) -> Any:
    if isinstance(value, float):
        return _json_float(value)
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def _unclean(value: Any) -> Any:
    if isinstance(value, str) and value in ("inf", "-inf", "nan"):
        return float(value)
    if isinstance(value, dict):
        return {k: _unclean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_unclean(v) for v in value]
    return value


@dataclass(frozen=True)
class Event:
    kind: ClassVar[str] = "event"
    run_id: str
    time: float = field(default_factory=_now, kw_only=True)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, **_clean(asdict(self))}


@dataclass(frozen=True)
class RunStarted(Event):
    """The run's resolved settings and its privacy plan."""

    kind: ClassVar[str] = "run_started"
    config: dict[str, Any]
    dataset_size: int
    sample_rate: float
    noise_multiplier: float
    delta: float
    planned_steps: int
    accountant: str
    planned_epsilon: list[tuple[int, float]]  # (step, epsilon) at most 200 points (user-level under privacy_unit=user)
    target_epsilon: float | None
    modules: list[str]  # names of the LoRA modules (parameter groups) that train
    trainable_parameters: int
    device: str
    model_name: str
    privacy_unit: str = "example"
    num_users: int | None = None
    neighboring: str = "add_remove"  # the relation the epsilon is for (replace_one or add_remove)
    seeded_randomness: bool = False  # sampling and noise from a public noise_seed: NO DP guarantee
    checks: list[dict[str, str]] = field(default_factory=list)  # the pre-flight privacy findings
    module_dims: dict[str, int] = field(default_factory=dict)  # d_l: trainable parameters of each module
    # the cached frozen prefix (engine/prefix_cache.py): layers cached, the size of every example's states, the caps;
    # or {"off": why}
    prefix_cache: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class StepMetrics(Event):
    """One logical DP-SGD step."""

    kind: ClassVar[str] = "step"
    step: int
    loss: float  # mean per-token loss of the sampled batch (nan for an empty batch)
    learning_rate: float
    batch_size: int  # the Poisson-sampled size, may be 0
    epsilon: float  # spent after this step (inf when non-private)
    grad_norm_hist: list[int]  # counts over GRAD_NORM_BIN_EDGES (units of C)
    grad_norm_max: float  # largest per-example norm this step, before clipping
    clipped_fraction: float  # fraction of examples whose norm exceeded C
    module_grad_norm: dict[str, float]  # norm of each module's clipped, summed gradient (before noise)
    module_noise_std: dict[str, float]  # std of the noise added to each module's summed gradient
    step_time: float  # seconds
    tokens_per_second: float
    tokens: int
    module_clip_norm: dict[str, float] = field(default_factory=dict)  # C_l of each module (per-layer clipping)
    module_noise_multiplier: dict[str, float] = field(default_factory=dict)  # sigma_l of each module
    effective_noise_multiplier: float | None = None  # (sum sigma_l^-2 [+ z_b^-2])^-1/2, what the accountant sees
    nonfinite: int = 0  # units whose gradient was NaN/inf: they contributed zero
    notices: list[dict[str, str]] = field(default_factory=list)  # run-time privacy findings (privacy/checks.py)
    # audit runs only (privacy/audit.py): the one-run audit's epsilon lower bound, at the run's final step only (its
    # planned last step, or the budget's stop), None otherwise; draw it beside `epsilon`. Before it, every few steps
    # (audit=gradient_canaries), `audit_interim`: the same statistic on the releases so far, an interim reading and
    # not a bound (picking the largest of several looks, or stopping on one, is not covered by the confidence).
    audit_epsilon_lower_bound: float | None = None
    audit_interim: float | None = None
    # counts over GRAD_NORM_LOG_BIN_EDGES ([] in runs stored before), and the median per-unit norm / C (None: an
    # empty batch, or stored before); telemetry from the raw norms, as grad_norm_hist
    grad_norm_log_hist: list[int] = field(default_factory=list)
    grad_norm_median: float | None = None
    # clip_allocation=quantile only: bbar_l, the released (noised) estimate of the fraction of units whose norm in
    # module l was <= its clip norm module_clip_norm[l] this step; the next step's C_l follows from it (allocation.py)
    module_unclipped_fraction: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class EvalMetrics(Event):
    kind: ClassVar[str] = "eval"
    step: int
    val_loss: float
    perplexity: float
    accuracy: float | None  # task accuracy (classification, or routing for the demo data)
    generations: list[dict[str, str]]  # {"prompt", "output"}
    # with accuracy (telemetry from the validation data, as accuracy): the class the model predicted most and the
    # share of the examples it predicted it for (1.0: one class whatever the input), and the majority class of the
    # validation labels with its share (the accuracy of always answering it: the floor a classifier must beat)
    predicted_label: str | None = None
    prediction_share: float | None = None
    majority_label: str | None = None
    majority_share: float | None = None


@dataclass(frozen=True)
class RunEnded(Event):
    """The end of a run: status is 'finished', 'stopped' or 'failed' (with the reason)."""

    kind: ClassVar[str] = "run_ended"
    status: str
    reason: str
    summary: dict[str, Any]


@dataclass(frozen=True)
class ClientMetrics(Event):
    """One round of a federated run (workbench/federated): a row per client, what the server holds of it after the
    round (the keys: workbench/federated/table.py). ``telemetry``: the row keys the run's epsilon does not cover
    (computed from a client's raw data, or the server's secret client sampling), shown marked and exported only
    with the telemetry, like a step's gradient norms."""

    kind: ClassVar[str] = "clients"
    step: int  # the round
    level: str  # the privacy level: client, record or subject
    rows: list[dict[str, Any]]
    telemetry: list[str] = field(default_factory=list)
    clip: float | None = None  # C of the server's clipping (client level), else None


def stored_epsilon(summary: dict[str, Any] | None) -> float | None:
    """The epsilon an ended run's summary stores ('inf' read as inf; None when it stores none). It is the one value
    every surface shows for an ended run: read it, never recompute it (a stopped run may store another epsilon
    than its last step's)."""
    value = (summary or {}).get("epsilon")
    if value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


_KINDS: dict[str, type[Event]] = {c.kind: c for c in (RunStarted, StepMetrics, EvalMetrics, RunEnded, ClientMetrics)}


def event_from_dict(data: dict[str, Any]) -> Event:
    """Rebuild an event from ``Event.to_dict()`` output (e.g. read back from the run store)."""
    cls = _KINDS[data["kind"]]
    names = {f.name for f in fields(cls)}
    kwargs = {k: _unclean(v) for k, v in data.items() if k in names}
    if cls is RunStarted:
        kwargs["planned_epsilon"] = [tuple(p) for p in kwargs["planned_epsilon"]]
    return cls(**kwargs)
