"""What a tuner reads off a run, in one place for the app, the notebooks and the command line.

- ``TELEMETRY_NOTE``: the caption of every chart computed from the private data without noise (per-example
  gradient norms, the clean per-module norms): they are not covered by epsilon.
- The log-scale norm bins (``GRAD_NORM_LOG_BIN_EDGES``, units of C) as positions on a log10 axis, and their labels.
- ``norm_title``: "…, step N: median 0.8 C · 37% clipped · max 12 C"; ``snr_title``: "…, step N: median SNR 0.4".
- ``signal_to_noise``: per LoRA module, the norm of the clipped sum ||S_l|| against the expected norm of the noise
  added to it, sqrt(d_l) * sigma_l * C_l (the same units), and their ratio.
- ``baseline_text``: the run's validation metric beside the untuned model's and the majority class's.
- ``class_prior_text``: a classifier that learned nothing beyond the class frequencies, said plainly, with a hint.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

from workbench.events import GRAD_NORM_LOG_BIN_EDGES, StepMetrics

# The caption of each chart of telemetry (histogram, heatmap, per-module signal to noise). One wording for the app
# (sent in the run's first row, workbench/present/live.py) and the notebooks (the figures' subtitles).
TELEMETRY_NOTE = (
    "Telemetry from the private data, not covered by ε: for the data owner's eyes only. "
    "Do not pick C from it; use the private quantile estimate or public data."
)
# The underflow and overflow bins are drawn a quarter of a decade wide, below 0.01 C and above 100 C.
LOG_BIN_WIDTH = 0.25


def log_bin_bounds() -> list[tuple[float, float]]:
    """(low, high) of each log bin in log10(norm / C): the underflow bin, the 16 bins, the overflow bin."""
    logs = [math.log10(e) for e in GRAD_NORM_LOG_BIN_EDGES]
    inner = list(zip(logs[:-1], logs[1:]))
    return [(logs[0] - LOG_BIN_WIDTH, logs[0]), *inner, (logs[-1], logs[-1] + LOG_BIN_WIDTH)]


def log_bin_labels() -> list[str]:
    """'< 0.01', '0.01–0.018', …, '≥ 100' (units of C)."""
    e = GRAD_NORM_LOG_BIN_EDGES
    inner = [f"{fmt_ratio(lo)}–{fmt_ratio(hi)}" for lo, hi in zip(e[:-1], e[1:])]
    return [f"< {fmt_ratio(e[0])}", *inner, f"≥ {fmt_ratio(e[-1])}"]


def fmt_ratio(x: float | None) -> str:
    """Two significant digits without exponent where it fits: 0.8, 12, 120, 0.0013 (as the page's fmt(v, 2))."""
    if x is None or not math.isfinite(x):
        return "–"
    return f"{float(f'{x:.2g}'):g}"


def norm_title(
    step: int, *, median: float | None, clipped: float | None, max_norm: float | None, clip: float | None
) -> str:
    """'Per-example gradient norms, step 7: median 0.8 C · 37% clipped · max 12 C'. ``median`` is in units of C
    already (StepMetrics.grad_norm_median), ``max_norm`` is not (StepMetrics.grad_norm_max); without C (a
    non-private run) the norms are plain numbers."""
    unit = " C" if clip else ""
    parts = []
    if median is not None and math.isfinite(median):
        parts.append(f"median {fmt_ratio(median)}{unit}")
    if clipped is not None and math.isfinite(clipped):
        parts.append(f"{clipped:.0%} clipped")
    if max_norm is not None and math.isfinite(max_norm):
        parts.append(f"max {fmt_ratio(max_norm / clip if clip else max_norm)}{unit}")
    return f"Per-example gradient norms, step {step}" + (": " + " · ".join(parts) if parts else "")


SNR_TITLE = "Signal to noise per LoRA module"


def snr_title(step: int, snr: Sequence[float | None]) -> str:
    """'Signal to noise per LoRA module, step 7: median SNR 0.4': the median over the modules with a ratio
    (``signal_to_noise``'s ``snr``; None where unknown), or no median when none has one.

    >>> snr_title(7, [0.1, None, 0.4, 2.0])
    'Signal to noise per LoRA module, step 7: median SNR 0.4'
    """
    shown = sorted(v for v in snr if v is not None and math.isfinite(v) and v > 0)
    if not shown:
        return f"{SNR_TITLE}, step {step}"
    n = len(shown)
    return f"{SNR_TITLE}, step {step}: median SNR {fmt_ratio((shown[(n - 1) // 2] + shown[n // 2]) / 2)}"


def signal_to_noise(step: StepMetrics, dims: Mapping[str, int] | None) -> dict[str, list[Any]]:
    """Per LoRA module (in the step's order): ``signal`` ||S_l|| the norm of the clipped sum before noise,
    ``noise_norm`` sqrt(d_l) * std_l the expected norm of the noise added to it (std_l = sigma_l C_l per coordinate,
    d_l its trainable parameters: RunStarted.module_dims), ``snr`` their ratio, and ``noise_std`` std_l itself (the
    noise allocation). None where unknown: no d_l (a run stored before), or no noise (a non-private run)."""
    names = list(step.module_noise_std or step.module_grad_norm)
    dims = dims or {}
    out: dict[str, list[Any]] = {"names": names, "signal": [], "noise_norm": [], "snr": [], "noise_std": []}
    for name in names:
        signal, std, d = step.module_grad_norm.get(name), step.module_noise_std.get(name), dims.get(name)
        noise_norm = math.sqrt(d) * std if d and std is not None and math.isfinite(std) and std > 0 else None
        snr = signal / noise_norm if noise_norm and signal is not None and math.isfinite(signal) else None
        out["signal"].append(_finite(signal))
        out["noise_norm"].append(noise_norm)
        out["snr"].append(snr)
        out["noise_std"].append(_finite(std))
    return out


def _finite(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def _fmt_metric(x: float) -> str:
    return f"{x:.3g}" if abs(x) < 1000 else f"{x:.0f}"


def _number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def baseline_text(metrics: Mapping[str, Any] | None, baseline: Mapping[str, Any] | None) -> str:
    """'accuracy 0.41 (untuned 0.27, +0.14) · val_loss 1.2 (untuned 2.3, -1.1)'; with the validation labels'
    majority class in ``baseline`` (``majority_label``, ``majority_share``: the accuracy of always answering it)
    'accuracy 0.556 (untuned 0.505, +0.051; majority class "1" 0.556, +0)'; the baselines alone before the run's
    own evaluation; '' without a baseline."""
    if not baseline:
        return ""
    metrics = metrics or {}
    majority = baseline.get("majority_share")
    majority_text = (
        f'majority class "{baseline.get("majority_label")}" {_fmt_metric(majority)}' if _number(majority) else ""
    )
    parts = []
    for key in ("accuracy", "val_loss"):
        base, now = baseline.get(key), metrics.get(key)
        against = [(f"untuned {_fmt_metric(base)}", base)] if _number(base) else []
        if key == "accuracy" and majority_text:
            against.append((majority_text, majority))
        if not against:
            continue
        if _number(now):
            parts.append(f"{key} {_fmt_metric(now)} (" + "; ".join(f"{t}, {now - b:+.2g}" for t, b in against) + ")")
        else:
            parts.append(
                " · ".join(t if t.startswith("majority") else f"untuned {key} {_fmt_metric(b)}" for t, b in against)
            )
    return " · ".join(parts)


ONE_CLASS_SHARE = 0.99  # a classifier that gives one class for this share of the examples "predicts one class"
PRIOR_HINT = {
    "cli": "`workbench plan --recommend`",
    "app": "the Plan tab's Recommend",
}


def class_prior_text(
    metrics: Mapping[str, Any] | None, baseline: Mapping[str, Any] | None, *, private: bool = True, where: str = "cli"
) -> str:
    """One plain sentence when a run's final evaluation is at the class prior: it predicts one class for at least
    ``ONE_CLASS_SHARE`` of the validation examples, or its accuracy is no better than always answering the majority
    class (``baseline``'s ``majority_share``); with what to change (for a private run, the noise-batch ratio and the
    recommender: ``where`` 'cli' or 'app'). '' when the run did better, or without the numbers to tell."""
    metrics, baseline = metrics or {}, baseline or {}
    accuracy, majority = metrics.get("accuracy"), baseline.get("majority_share")
    share, label = metrics.get("prediction_share"), metrics.get("predicted_label")
    if not _number(accuracy):
        return ""
    if _number(share) and share >= ONE_CLASS_SHARE:
        text = (
            f'predicts one class ("{label}" for {share:.0%} of the validation examples): nothing learned beyond the '
            "class frequencies."
        )
    elif _number(majority) and accuracy <= majority:
        text = (
            f"accuracy {_fmt_metric(accuracy)} is no better than always answering the majority class "
            f'"{baseline.get("majority_label")}" ({_fmt_metric(majority)}): nothing learned beyond the class frequencies.'
        )
    else:
        return ""
    if private:
        return text + (
            " Retune the learning rate, lower the clipping norm, or raise the batch for a smaller noise-batch ratio σ/B: "
            f"{PRIOR_HINT.get(where, PRIOR_HINT['cli'])}."
        )
    return text + " Retune the learning rate or train longer."


def untuned_eval(evals: Sequence[Any]) -> Any | None:
    """The untuned model's evaluation among ``evals`` (the one at step 0, engine/baseline.py), or None."""
    return next((e for e in evals if e.step == 0), None)


def _first_layers(k: int) -> str:
    return "layer 0" if k == 1 else f"layers 0-{k - 1}"


def prefix_cache_text(cache: Mapping[str, Any] | None, *, lora_layers: int | None = None) -> str:
    """One line on the cached frozen prefix (engine/prefix_cache.py), "" when it was off or not reported.

    Before the first step (RunStarted.prefix_cache: what will be cached, or why it is off when the run adapts only
    its last ``lora_layers``, where one would expect it) and after the run (the summary's report: what it did).
    Every surface (the CLI's header and summary, the app's header, the notebook dashboard) shows this line.

    >>> prefix_cache_text({"layers_cached": 26, "layers": 30, "full_mb": 118.0, "memory_cap_mb": 2048,
    ...     "spill_cap_mb": 0.0})
    'prefix cache: layers 0-25 of 30 computed once per example (118.0 MiB for every example, cap 2048 MiB in memory)'
    >>> prefix_cache_text({"layers_cached": 26, "layers": 30, "examples": 800, "memory_mb": 120.5,
    ...     "spilled_mb": 0.0, "build_seconds": 61.2, "hits": 700, "built": 800, "recomputed": 0})
    'prefix cache: layers 0-25 of 30 for 800 examples (120.5 MiB in memory, 0.0 MiB spilled), built in 61.2 s; 700 of 1500 example draws read it'
    >>> prefix_cache_text({"off": "the model is fully adapted"})
    ''
    >>> prefix_cache_text({"off": "prefix_cache is off"}, lora_layers=4)
    'prefix cache: off (prefix_cache is off)'
    """
    if cache and cache.get("off") and lora_layers:
        return f"prefix cache: off ({cache['off']})"
    if not cache or "layers_cached" not in cache:
        return ""
    layers = f"prefix cache: {_first_layers(cache['layers_cached'])} of {cache['layers']}"
    if "hits" not in cache:  # the header's: what the run will cache
        spill = f", {cache['spill_cap_mb']} MiB spill" if cache.get("spill_cap_mb") else ""
        return (
            f"{layers} computed once per example ({cache['full_mb']} MiB for every example, cap "
            f"{cache['memory_cap_mb']} MiB in memory{spill})"
        )
    draws = cache["hits"] + cache["built"]
    line = (
        f"{layers} for {cache['examples']} examples ({cache['memory_mb']} MiB in memory, {cache['spilled_mb']} MiB "
        f"spilled), built in {cache['build_seconds']} s; {cache['hits']} of {draws} example draws read it"
    )
    return line + (f", {cache['recomputed']} recomputed (no room)" if cache.get("recomputed") else "")
