"""The app's form controls made from RunConfig's fields.

A field-backed control takes its kind, range, choices, default and help from the field (workbench/config.py):
``Literal`` -> a dropdown of its values, ``bool`` -> a checkbox, ``int`` -> a whole-number box with the
field's lower bound, ``float`` -> a number box with the bounds the field declares, ``str`` -> a text box; the
help under it is the field's description and its value the base config's. Only what the config does not know
lives here: the wording on screen (``LABELS``, ``CHOICE_LABELS``, ``HELP``) and the controls whose UI differs from the
field on purpose (``HAND_MADE``, laid out by plan.py and train.py).

``field_spec`` imports no gradio, so forms.py parses the controls' values with it too.
"""

from __future__ import annotations

import re
import types
import typing
from dataclasses import dataclass
from typing import Any, Callable, Literal

from workbench.config import RunConfig

# Controls that are not one field's control, or whose UI differs from the field on purpose: made by hand.
HAND_MADE = {
    "data_mode": "the data field's source: demo dataset, an uploaded file or a path (a radio)",
    "upload_path": "the stored upload (a gr.State, not a control)",
    "data_path": "the data field's path, shown only for 'path on this machine'",
    "length_mode": "epochs or steps: which of the two fields counts (the other is not editable)",
    "privacy_mode": "target epsilon or noise multiplier: which of the two fields counts",
    "delta": "text, so that 1e-6 is typed as such and empty means the default below 1/N",
    "privacy_unit": "privacy_unit and user_sampling in one choice: example, user:els, user:uls",
    "public_size": "a checkbox: public_dataset_size = the chosen data's training count",
    "labels": "the class names as comma-separated text",
    "columns": "role=column pairs as comma-separated text",
    "model": "the built-in models, with any hub id or path typed in",
    "name": "empty by default: every run would otherwise share the config's name",
    "audit": "a checkbox: gradient canaries or none",
}
# Fields whose out-of-range value gets the tab's own message next to the control (a plan error under its row,
# a message beside Start; docs/app.md: "a negative ε ... a message next to the control"), not Gradio's bound
# check: their controls get no minimum or maximum.
UNBOUNDED = {"target_epsilon", "max_grad_norm", "max_examples_per_user", "nproc"}
# The wording on screen where the field's name in words would not do.
LABELS = {
    "batch_size": "Expected batch size",
    "max_grad_norm": "Clipping norm C",
    "max_steps": "Steps",
    "target_epsilon": "Target ε",
    "noise_multiplier": "Noise multiplier σ",
    "max_examples_per_user": "Max examples per user k",
    "neighboring": "Neighbouring datasets",
    "validation_data": "Validation file (path on this machine)",
    "physical_batch_size": "Physical batch",
    "eval_every": "Evaluate every (0 = auto)",
    "nproc": "Processes",
}
# The help under a control where the app's words differ from the field's description (which speaks of the CLI).
HELP = {
    "nproc": "Data-parallel ranks on this machine: one per GPU on CUDA, or CPU processes sharing the cores. ε is "
    "unchanged by it; this app is rank 0, the others' logs go to the run's folder.",
}
_NEIGHBORING = {
    "auto": "auto (add or remove if the size is public, else replace one)",
    "replace_one": "replace one unit",
    "add_remove": "add or remove one unit",
}


def _accountant(value: str) -> str:
    from workbench.present import accountant_label

    return accountant_label(value)


CHOICE_LABELS: dict[str, Callable[[str], str]] = {  # a choice's name on screen (its value is the field's)
    "accountant": _accountant,
    "neighboring": lambda v: _NEIGHBORING.get(v, v),
}


@dataclass(frozen=True)
class FieldSpec:
    """What a control needs to know about a config field."""

    name: str
    kind: str  # "choice", "bool", "int", "float", "str" or "other" (lists, mappings: no generated control)
    optional: bool  # None is a valid value
    choices: tuple = ()
    minimum: float | None = None  # inclusive: ge, or gt (the next whole number for an int)
    maximum: float | None = None  # inclusive: le, or lt (the config refuses the bound itself)
    default: Any = None
    help: str = ""


def field_spec(name: str) -> FieldSpec:
    """The kind, bounds, choices, default and help of the config field ``name`` (KeyError if there is none)."""
    info = RunConfig.model_fields[name]  # the flat name (a grouped key's field keeps it: config.py)
    args = typing.get_args(info.annotation)
    union = typing.get_origin(info.annotation) in (typing.Union, types.UnionType)
    optional = union and type(None) in args
    inner = [a for a in args if a is not type(None)] if union else [info.annotation]
    tp = inner[0] if len(inner) == 1 else None
    choices: tuple = ()
    if typing.get_origin(tp) is Literal:
        kind, choices = "choice", typing.get_args(tp)
    else:
        kind = {bool: "bool", int: "int", float: "float", str: "str"}.get(tp, "other")
    low = high = None
    for m in info.metadata:
        if getattr(m, "ge", None) is not None:
            low = m.ge
        elif getattr(m, "gt", None) is not None:
            low = m.gt + 1 if kind == "int" else m.gt
        if getattr(m, "le", None) is not None:
            high = m.le
        elif getattr(m, "lt", None) is not None:
            high = m.lt - 1 if kind == "int" else m.lt
    default = info.get_default(call_default_factory=True)
    return FieldSpec(name, kind, optional, choices, low, high, default, info.description or "")


def label(name: str) -> str:
    """The control's label: LABELS', else the field's name in words ('lora_r' -> 'LoRA r')."""
    if name in LABELS:
        return LABELS[name]
    words = name.replace("_", " ")
    return re.sub(r"\blora\b", "LoRA", words[:1].upper() + words[1:], flags=re.IGNORECASE)


def elem_id(name: str) -> str:
    """The element id the browser tests and the page's script find the control by ('batch_size' -> 'batch-size')."""
    return name.replace("_", "-")


def control(name: str, base: RunConfig, **overrides: Any):
    """The Gradio control of the config field ``name``, showing ``base``'s value; ``overrides`` are passed to
    the component as they are (a value, interactive=, a placeholder)."""
    import gradio as gr

    spec = field_spec(name)
    kwargs: dict[str, Any] = dict(label=label(name), info=HELP.get(name, spec.help) or None, elem_id=elem_id(name))
    if spec.kind in ("int", "float") and name not in UNBOUNDED:
        kwargs.update(minimum=spec.minimum, maximum=spec.maximum)
    if spec.kind == "int":
        kwargs["precision"] = 0
    kwargs.update(overrides)
    value = kwargs.pop("value", getattr(base, name))
    if spec.kind == "choice":
        names = CHOICE_LABELS.get(name, str)
        return gr.Dropdown([(names(v), v) for v in spec.choices], value=value, **kwargs)
    if spec.kind == "bool":
        return gr.Checkbox(bool(value), **kwargs)
    if spec.kind in ("int", "float"):
        return gr.Number(value, **kwargs)
    if spec.kind == "str":
        return gr.Textbox("" if value is None else value, **kwargs)
    raise TypeError(f"{name}: no control for a field of type {spec.kind!r}; make it by hand (HAND_MADE)")


def field_controls(names: list[str] | tuple[str, ...], base: RunConfig) -> dict[str, Any]:
    """``control`` of each of ``names``, in order (lay them out inside a row)."""
    return {name: control(name, base) for name in names}
