"""Small numeric helpers shared by the figures: downsampling, smoothing, labels.

Pure numpy; nothing here knows about plotly or gradio.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

MAX_POINTS = 2000

_ACCOUNTANT_NAMES = {"pld": "PLD", "rdp": "RDP", "prv": "PRV", "edgeworth": "Edgeworth"}


def downsample(xs: Sequence[float], ys: Sequence[float], n: int = MAX_POINTS) -> tuple[np.ndarray, np.ndarray]:
    """At most ``n`` evenly spaced points of (xs, ys), always keeping the first and the last.

    >>> x, y = downsample(range(10), range(10), n=4)
    >>> x.tolist(), y.tolist()
    ([0.0, 3.0, 6.0, 9.0], [0.0, 3.0, 6.0, 9.0])
    """
    x = np.asarray(xs, dtype=float)
    y = np.asarray(ys, dtype=float)
    if len(x) != len(y):
        raise ValueError(f"xs and ys differ in length: {len(x)} != {len(y)}")
    if n < 2:
        raise ValueError(f"n must be at least 2 (first and last point). Found {n}.")
    if len(x) <= n:
        return x, y
    idx = np.unique(np.linspace(0, len(x) - 1, n).round().astype(int))
    return x[idx], y[idx]


def finite(xs: Sequence[float], ys: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Drop points whose y is NaN or infinite (an empty Poisson batch has loss NaN)."""
    x = np.asarray(xs, dtype=float)
    y = np.asarray(ys, dtype=float)
    keep = np.isfinite(y)
    return x[keep], y[keep]


def ema_alpha(n: int) -> float:
    """The smoothing factor ``ema`` uses for ``n`` points unless told: about 10 / n, within [0.02, 0.3].  The live
    view (present/live.py) resends a run's smoothed loss when this changes with the number of points.

    >>> ema_alpha(10), ema_alpha(100), ema_alpha(10_000)
    (0.3, 0.1, 0.02)
    """
    return min(0.3, max(0.02, 10.0 / max(n, 1)))


def ema(ys: Sequence[float], *, alpha: float | None = None) -> np.ndarray:
    """Exponential moving average, bias-corrected; alpha defaults to about 10 / len(ys) (``ema_alpha``).

    >>> ema([1.0, 1.0, 4.0], alpha=0.5).round(3).tolist()
    [1.0, 1.0, 2.714]
    """
    from scipy.signal import lfilter

    y = np.asarray(ys, dtype=float)
    if len(y) == 0:
        return y
    a = alpha if alpha is not None else ema_alpha(len(y))
    # acc_t = (1 - a) acc_{t-1} + a y_t, divided by the same recursion over ones (bias correction)
    acc = lfilter([a], [1.0, a - 1.0], y)
    weight = lfilter([a], [1.0, a - 1.0], np.ones_like(y))
    return acc / weight


def accountant_label(name: str) -> str:
    """Display name of an accountant; Edgeworth is marked as an approximation.

    >>> accountant_label("edgeworth")
    'Edgeworth (approximation)'
    """
    label = _ACCOUNTANT_NAMES.get(name, name)
    return f"{label} (approximation)" if is_approximation(name) else label


def is_approximation(name: str) -> bool:
    """Whether the accountant's epsilon is an approximation rather than an upper bound."""
    try:
        from workbench.privacy import is_approximation as engine_says
    except ImportError:
        return name == "edgeworth"
    try:
        return bool(engine_says(name))
    except Exception:
        return name == "edgeworth"


def fmt_eps(value: float | None) -> str:
    """Epsilon for people: 3 significant digits, '∞' when non-private, '–' when unknown."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if math.isinf(value):
        return "∞"
    return f"{value:.3g}" if value < 100 else f"{value:.0f}"


def fmt_duration(seconds: float | None) -> str:
    """'1h 02m', '3m 20s', '12s'; '–' when unknown."""
    if seconds is None or not math.isfinite(seconds):
        return "–"
    s = max(0, int(round(seconds)))
    if s >= 3600:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m {s % 60:02d}s"
    return f"{s}s"


def short_module_names(names: Sequence[str]) -> list[str]:
    """Readable LoRA module names: drop peft's wrapper parts, keep layer, projection and A/B.

    >>> short_module_names(["base_model.model.model.layers.0.self_attn.q_proj.lora_A.default",
    ...                     "base_model.model.model.layers.0.self_attn.q_proj.lora_B.default"])
    ['layers.0.q_proj.A', 'layers.0.q_proj.B']
    """
    drop = {"base_model", "model", "self_attn", "mlp", "attention", "attn", "default", "weight", "transformer"}
    rename = {"lora_A": "A", "lora_B": "B"}
    short = [".".join(rename.get(p, p) for p in n.split(".") if p not in drop) or n for n in names]
    if len(set(short)) != len(short):  # dropping made names collide: keep the originals
        return list(names)
    return short
