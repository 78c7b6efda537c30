"""Pre-flight privacy check: the DP-training pitfalls a run config can still walk into.

The list follows McKenna and McMahan, "Common Pitfalls in DP Training", jax_privacy
``docs/sharp_edges_dp_training_pitfalls.md`` (google-deepmind/jax_privacy), keeping only the
pitfalls that a user of this engine can still meet through a setting, their own model or data,
or what they do with a run's outputs (REFERENCES.md sections 2, 7 and 8):

- Randomness and RNG injection -> ``seeded-randomness`` (``noise_seed`` replays sampling and noise).
- Public vs. private metadata -> ``neighbouring-relation`` (is the dataset size public?) and
  ``label-set-from-data`` (the classifier's label set read from the private data).
- Neighbouring relation clarity -> ``neighbouring-relation``.
- Accounting and batch selection mismatch -> ``poisson-sampling`` (info: the engine samples as the
  accountant assumes; a loader of one's own must too, Chua et al. 2024, arXiv 2403.17673).
- Auxiliary information -> ``telemetry-not-private``.
- Cross-example operations -> ``cross-example-layers`` (a model of one's own: the per-example
  gradient hooks are exact only when no layer mixes the examples of a batch).
- Hyper-parameter tuning (the doc's "out of scope" item) -> ``tuning-not-counted``.
- Beyond the doc's list, settings that make the guarantee void or weak: ``no-clipping``,
  ``non-private``, ``delta-not-small``, ``weak-epsilon``, ``approximate-accountant``; and, at run
  time, ``clipping_activity`` ("clipping never active": C far above every norm).

Left out, because the engine settles them by construction and no setting reaches them: division
by batch size (``dp_step`` sums clipped gradients and divides by the expected batch size q N),
sensitivity alignment (per-layer norms keep ||(C_l)|| = C; ``RunConfig`` refuses non-uniform noise
with one flat norm), zero-sized batches and non-finite gradients (an empty batch is a noise-only
step; non-finite units are zeroed), and gradient accumulation (``physical_batch_size`` only
schedules the work; noise is added once per logical step). Floating-point attacks (Theoretical)
and finite-precision error (Negligible) are left out too: no setting changes them, so a finding
would carry no advice. The doc's design principles are not failure modes.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Iterable

SEVERITIES = ("error", "warning", "info")
WEAK_EPSILON = 10.0  # above this the guarantee says little (REFERENCES.md section 9: runs use 3 to 8)
DELTA_FACTOR = 0.1  # delta should be at most 0.1 / N, as ``RunConfig.default_delta`` chooses
BUILT_IN_MODELS = ("default", "tiny")  # Llama-style, RMSNorm only: no layer mixes examples


@dataclass(frozen=True)
class Finding:
    """One pitfall that applies to a run: what it is, with the values, and what to do."""

    code: str
    severity: str  # "error" | "warning" | "info"
    message: str
    advice: str

    def __post_init__(self) -> None:
        if self.severity not in SEVERITIES:
            raise ValueError(f"severity must be one of {SEVERITIES}. Found {self.severity!r}.")

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


def preflight(config: Any, plan: Any = None, *, task: str | None = None) -> list[Finding]:
    """The pitfalls ``config`` (a ``RunConfig``) walks into, errors first, then warnings, then info.

    ``plan`` (a ``PrivacyPlan``, optional) adds what needs the data: delta against N, the planned
    epsilon, the neighbouring relation it resolved. ``task`` is the resolved task when
    ``config.task`` is "auto" (the data decides it). Pure: nothing changes but the plan's own epsilon cache.
    """
    private = _private(config, plan)
    found = [_seeded(config), _clipping(config, private), _non_private(config, plan), _audit(config, plan)]
    if private:
        found += [
            _delta(plan),
            _epsilon(config, plan),
            _accountant(config),
            _neighbouring(config, plan),
            _labels(config, task),
            _cross_example(config),
            _sampling(),
            _telemetry(),
            _tuning(config),
        ]
    findings = [f for f in found if f is not None]
    return sorted(findings, key=lambda f: SEVERITIES.index(f.severity))  # stable: keeps the order above


def clipping_activity(
    norms: Iterable[float], max_grad_norm: float | None, *, quantile: float = 0.9, ratio: float = 0.1
) -> Finding | None:
    """Run-time check "clipping never active": a warning when the ``quantile`` of the per-example
    gradient norms of the first steps lies below ``ratio * C``; None otherwise (or without C).
    ``norms``: floats, or a 1-D CPU tensor; non-finite norms are ignored."""
    import numpy as np

    values = np.asarray([float(x) for x in norms], dtype=float)
    values = values[np.isfinite(values)]
    if max_grad_norm is None or values.size == 0:
        return None
    level = float(np.quantile(values, quantile))
    if level >= ratio * max_grad_norm:
        return None
    return Finding(
        "clipping-inactive",
        "warning",
        f"clipping never active: {quantile:.0%} of the {values.size} per-example gradient norms are below "
        f"{level:.3g}, under C/{1 / ratio:g} = {ratio * max_grad_norm:.3g} (max_grad_norm C={max_grad_norm:g})",
        "C could be much smaller: the noise std is sigma*C whatever the norms are, so a C far above them drowns "
        "the signal; lower max_grad_norm. Choosing C from these raw norms is itself not private: take it from "
        "public data or a private quantile estimate (adaptive clipping, Andrew et al. 2021)",
    )


def format_findings(findings: Iterable[Finding]) -> str:
    """One line per finding: ``[severity] message -> advice``."""
    return "\n".join(f"[{f.severity}] {f.message} -> {f.advice}" for f in findings)


# -- the checks: each returns a Finding or None ------------------------------------------------------


def _private(config: Any, plan: Any) -> bool:
    if plan is not None and getattr(plan, "noise_multiplier", None) is not None:
        return plan.noise_multiplier > 0
    return config.noise_multiplier != 0  # None: calibrated to target_epsilon, so positive


def _unit(config: Any) -> str:
    return "user" if config.privacy_unit == "user" else "example"


def _audit(config: Any, plan: Any = None) -> Finding | None:
    kind = getattr(config, "audit", "none")
    if kind not in ("gradient_canaries", "input_canaries"):
        return None
    count = config.audit_canaries or ("1000" if kind == "gradient_canaries" else "min(1000, N // 2)")
    what = "gradient canaries" if kind == "gradient_canaries" else "canary examples"
    return Finding(
        "audit-canaries-in-adapter",
        "warning",
        f"audit run: {count} secret {what} (about half of them included) are trained into "
        "the adapter beside the data; the data's guarantee is unchanged, but the adapter is perturbed by them"
        + audit_power_text(config, plan),
        "use this run to check the implementation (`workbench audit RUN_ID`: the empirical lower bound must stay "
        "below the claimed epsilon) and train the adapter you release without audit",
    )


def audit_power_text(config: Any, plan: Any) -> str:
    """The finding's "; audit power: ..." for an audit run with a resolved plan (privacy.audit.audit_design), or
    "" without one: the largest lower bound the audit could reach at these settings, so that a bound of 0 is read for what it is."""
    if plan is None or not getattr(plan, "steps", 0):
        return ""
    from workbench.privacy.audit import audit_design

    if config.audit == "gradient_canaries":
        m = config.audit_canaries or 1000
    else:
        units = getattr(plan, "published_population", None) or plan.population
        m = config.audit_canaries or min(1000, units // 2)
    if m < 2:
        return ""
    d = audit_design(canaries=m, sample_rate=plan.sample_rate, steps=plan.steps, delta=plan.delta)
    side = "top k guessed in" if d.guesses == "one_sided" else "top k in and bottom k out"
    return (
        f"; audit power: at most about {d.power:.2f} (the bound if every guess were right, {m} canaries at "
        f"q = {plan.sample_rate:.3g} over {plan.steps} steps: {d.participating:.0%} of the included ones take part; "
        f"{side}); no result can exceed it, so a bound of 0 says little when it is small"
    )


def _seeded(config: Any) -> Finding | None:
    if config.noise_seed is None:
        return None
    return Finding(
        "seeded-randomness",
        "error",
        f"seeded randomness: no differential-privacy guarantee (noise_seed={config.noise_seed}): anyone who knows "
        "the seed can replay the Poisson sampling and the noise, see which units each batch held, and subtract "
        "the noise",
        "remove noise_seed so that sampling and noise come from a fresh secret key from the OS; keep seeded runs "
        "for teaching and debugging on data that is not private, and never publish their outputs as private",
    )


def _clipping(config: Any, private: bool) -> Finding | None:
    if config.max_grad_norm is not None:
        return None
    if private:
        return Finding(
            "no-clipping",
            "error",
            "no clipping (max_grad_norm=None) with noise: one example's gradient is unbounded, so no noise "
            "multiplier gives any epsilon (the engine refuses such a run)",
            "set max_grad_norm (e.g. 1.0), or set noise_multiplier=0 for a non-private baseline",
        )
    return Finding(
        "no-clipping",
        "warning",
        "no clipping (max_grad_norm=None): this baseline differs from a DP run by both clipping and noise",
        "set max_grad_norm to the C of the DP runs you compare it with, so the baseline isolates the cost of noise",
    )


def _non_private(config: Any, plan: Any) -> Finding | None:
    if _private(config, plan):
        return None
    return Finding(
        "non-private",
        "warning",
        "non-private: noise_multiplier=0, so epsilon is infinite and the run gives no privacy guarantee",
        "use it only as a baseline; for a private run set target_epsilon (and leave noise_multiplier empty) or "
        "a positive noise_multiplier",
    )


def _delta(plan: Any) -> Finding | None:
    if plan is None:
        return None
    user = getattr(plan, "privacy_unit", "example") == "user"
    n = plan.num_users if user else plan.dataset_size
    if not n or plan.delta <= DELTA_FACTOR / n:
        return None
    who = "users" if user else "examples"
    return Finding(
        "delta-not-small",
        "warning",
        f"delta={plan.delta:g} is not far below 1/N = {1 / n:.3g} (N={n} {who}): a mechanism that publishes each "
        f"{who[:-1]} in full with probability delta meets it, leaking some {who[:-1]} with probability "
        f"N*delta = {n * plan.delta:.2g}",
        f"choose delta <= {DELTA_FACTOR / n:.3g} (0.1/N), or leave delta empty for the default below 1/(10 N)",
    )


def _planned_epsilon(config: Any, plan: Any) -> float | None:
    """The epsilon the run ends with: the plan's epsilon after all steps, capped by its budget stop.

    A sigma calibrated to the target never overshoots it, so the target stands in for it there
    (and saves the seconds a user-level mixture PLD costs)."""
    target = config.target_epsilon if plan is None else getattr(plan, "target_epsilon", config.target_epsilon)
    if plan is None or (config.noise_multiplier is None and target is not None):
        return target
    try:
        eps = float(plan.epsilon_at(plan.steps))
    except Exception:  # an accountant failure must not hide the other findings
        return target
    return eps if target is None else min(eps, target)


def _epsilon(config: Any, plan: Any) -> Finding | None:
    eps = _planned_epsilon(config, plan)
    if eps is None or not eps > WEAK_EPSILON or math.isinf(eps):
        return None
    where = "planned final epsilon" if plan is not None else "target_epsilon"
    return Finding(
        "weak-epsilon",
        "warning",
        f"weak guarantee: {where} {eps:.3g} is above {WEAK_EPSILON:g}; the bound e^epsilon = {math.exp(eps):.3g} "
        "on how much more likely any outcome becomes says little",
        "lower target_epsilon (8 or less; 1 to 3 where you can) and win the utility back with a larger batch_size: "
        "the loss follows the noise-to-batch ratio sigma/B (McKenna et al. 2025)",
    )


def _accountant(config: Any) -> Finding | None:
    if config.accountant != "edgeworth":
        return None
    return Finding(
        "approximate-accountant",
        "info",
        "accountant=edgeworth is an approximation, not an upper bound: it is shown beside PLD, and PLD sets the "
        "noise and the budget stop",
        "quote the PLD epsilon as the guarantee; read the Edgeworth value only as a comparison",
    )


def _neighbouring(config: Any, plan: Any) -> Finding:
    relation = getattr(plan, "neighboring", None) if plan is not None else None
    if relation is None and config.neighboring != "auto":
        relation = config.neighboring
    unit = _unit(config)
    if relation == "replace_one":
        size = getattr(plan, "population", None)
        return Finding(
            "neighbouring-relation",
            "info",
            f"the epsilon is for replace-one neighbours (datasets that differ by one {unit} replaced): the dataset "
            f"size{f' (N={size})' if size else ''} is public and is published exactly",
            "if you may publish the size (most papers do), declare it: public_dataset_size="
            f"{size or 'N'} gives add/remove neighbours, the relation papers report, with less noise for the same "
            "epsilon; if the size itself is sensitive, keep replace-one",
        )
    if relation == "add_remove":
        published = getattr(plan, "published_population", None)
        return Finding(
            "neighbouring-relation",
            "info",
            f"the epsilon is for add/remove neighbours (datasets that differ by one {unit} added or removed): q, the "
            f"steps, delta and the published size come from the size you declared public"
            f"{f' (public_dataset_size={published})' if published else ''}, never from the data's own count",
            "publish no other count of the training data beside this epsilon: the exact size can reveal whether a "
            "unit is in",
        )
    return Finding(
        "neighbouring-relation",
        "info",
        "the neighbouring relation is resolved with the plan (neighboring=auto: add_remove when public_dataset_size "
        "is declared, else replace_one, the exact size public, where the accountant has it)",
        "run `workbench check` with the data to see which one applies, or set neighboring explicitly",
    )


def _labels(config: Any, task: str | None) -> Finding | None:
    resolved = config.task if config.task != "auto" else task
    if resolved != "classification" or getattr(config, "labels", None) is not None:
        return None
    return Finding(
        "label-set-from-data",
        "error",
        "classification labels are not set, and a private run refuses to read them from the private training data: "
        "the head's width and label names go out with the adapter, and a label only one record uses would reveal "
        "that record",
        "list the classes in the config (labels: [negative, positive]); `workbench data FILE` lists the labels a "
        "file holds",
    )


def _cross_example(config: Any) -> Finding | None:
    if config.model in BUILT_IN_MODELS:
        return None
    return Finding(
        "cross-example-layers",
        "info",
        f"per-example gradients assume no layer of model {config.model!r} mixes the examples of a batch (batch "
        "normalisation in training mode, mixture-of-experts routing with batch-level capacity or load-balancing "
        "losses); with one, an example's clipped gradient depends on the others and the sensitivity bound fails",
        "use models with per-example normalisation (LayerNorm, RMSNorm) and routing, as the built-in models have",
    )


def _sampling() -> Finding:
    return Finding(
        "poisson-sampling",
        "info",
        "batches are Poisson-sampled (each unit included independently with rate q; sizes vary, empty batches "
        "are real steps), which is what the accountant assumes",
        "keep it: a loader of your own with shuffled fixed-size batches gives a weaker guarantee than the one "
        "reported (Chua et al. 2024); never re-draw an empty batch",
    )


def _telemetry() -> Finding:
    return Finding(
        "telemetry-not-private",
        "info",
        "loss curves, per-example gradient-norm histograms, clipped fractions and validation metrics are "
        "computed from the raw private data and are not covered by epsilon",
        "do not publish them (runs export leaves them out unless --with-telemetry); a run stopped by hand claims "
        "its planned epsilon, which covers a stop decided from released states or public information, and a stop "
        "decided from this telemetry is covered by no epsilon",
    )


def _tuning(config: Any) -> Finding:
    held_out = (
        f"validation_data={config.validation_data}"
        if config.validation_data
        else f"a held-out {config.validation_fraction:g} of the private data"
    )
    return Finding(
        "tuning-not-counted",
        "info",
        f"epsilon covers this one run: choosing learning rate, C, sigma or batch size by comparing runs on "
        f"private data (validation metrics here come from {held_out}) is not counted",
        "tune on public or proxy data, or count the selection: the best of K runs costs at most the K runs "
        "composed, a random number of runs (RepeatAndSelect, Papernot and Steinke 2022) much less",
    )
