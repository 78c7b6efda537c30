"""Readable run names from settings: ``eps4-C0.1-s1`` (a sweep member's label, a group's label in a comparison)
and the default name of a run started with no name (``eps8-B64-T100-lr0.005``, made unique in the store with
" (2)", " (3)", ...). Pure functions: no store access, no gradio, nothing heavier than the config to import.
"""

from __future__ import annotations

import re
from typing import Any, Iterable, Mapping, Sequence

import yaml

# short names for run labels: eps4-C0.1-s1
ABBREVIATIONS = {
    "target_epsilon": "eps",
    "noise_multiplier": "sigma",
    "max_grad_norm": "C",
    "learning_rate": "lr",
    "batch_size": "B",
    "physical_batch_size": "pb",
    "max_steps": "T",
    "epochs": "ep",
    "delta": "delta",
    "lora_r": "r",
    "lora_alpha": "alpha",
    "lora_layers": "L",
    "lora_dropout": "drop",
    "max_examples_per_user": "k",
    "weight_decay": "wd",
    "warmup_steps": "warm",
    "max_seq_len": "len",
    "seed": "s",
}

# The settings a default run name shows when they differ from the defaults, in this order (after the
# privacy level, always first: eps8 or sigma1.2). Numbers by their abbreviation, text by its value.
NAME_KEYS = (
    "batch_size",
    "max_steps",
    "epochs",
    "learning_rate",
    "max_grad_norm",
    "lora_r",
    "lora_alpha",
    "lora_layers",
    "lora_dropout",
    "delta",
    "max_examples_per_user",
    "weight_decay",
    "warmup_steps",
    "max_seq_len",
    "privacy_unit",
    "allocation",
    "clip_allocation",
    "clipping",
    "optimizer",
    "lr_schedule",
    "accountant",
    "neighboring",
    "seed",
)
MAX_NAME_PARTS = 8


def format_value(value: Any) -> str:
    """A setting's value in a run label: 4.0 -> '4', 0.001 -> '0.001', None -> 'none'."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (dict, list)):
        return re.sub(r"[^A-Za-z0-9_.]+", "", yaml.safe_dump(value, default_flow_style=True))[:24]
    return re.sub(r"[\s/\\]+", "_", str(value))


def run_label(overrides: Mapping[str, Any], keys: Sequence[str] | None = None) -> str:
    """A readable name from the settings that differ: ``{'target_epsilon': 4, 'max_grad_norm': 0.1, 'seed': 1}``
    -> ``eps4-C0.1-s1``; a text value stands for itself (``allocation=adaptive`` -> ``adaptive``)."""
    parts = []
    for key in keys if keys is not None else list(overrides):
        value = overrides.get(key)
        if isinstance(value, str) and key not in ABBREVIATIONS:
            parts.append(format_value(value))
        else:
            parts.append(ABBREVIATIONS.get(key, key) + format_value(value))
    return "-".join(parts) or "run"


def _as_dict(config: Any) -> dict[str, Any]:
    return dict(config) if isinstance(config, Mapping) else config.to_dict()


def default_run_name(config: Any, defaults: Any) -> str:
    """The name of a run started without one: its privacy level (``eps8``, or ``sigma1.2`` when the noise is
    set), then each NAME_KEYS setting whose value differs from ``defaults`` (a RunConfig or its dict), in
    run_label's notation: ``eps8-B64-T100-lr0.005``. The same settings give the same name.

    >>> default_run_name({"target_epsilon": 8.0, "batch_size": 64}, {"target_epsilon": 4.0, "batch_size": 32})
    'eps8-B64'
    """
    cfg, base = _as_dict(config), _as_dict(defaults)
    privacy = "noise_multiplier" if cfg.get("noise_multiplier") is not None else "target_epsilon"
    keys = [privacy] + [k for k in NAME_KEYS if k in cfg and cfg.get(k) != base.get(k)]
    return run_label(cfg, keys[:MAX_NAME_PARTS])


def unique_name(name: str, taken: Iterable[str | None]) -> str:
    """``name``, or ``name (2)``, ``name (3)``, ... : the first that no name in ``taken`` has.

    >>> unique_name("eps8", ["eps8", "eps8 (2)"]), unique_name("eps4", ["eps8"])
    ('eps8 (3)', 'eps4')
    """
    used = {t for t in taken if t}
    if name not in used:
        return name
    n = 2
    while f"{name} ({n})" in used:
        n += 1
    return f"{name} ({n})"


__all__ = ["ABBREVIATIONS", "NAME_KEYS", "format_value", "run_label", "default_run_name", "unique_name"]
