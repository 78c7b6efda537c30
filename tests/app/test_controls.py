"""The Plan and Train tabs' controls come from RunConfig's fields (app/controls.py) and reach the callbacks by name.

Each generated control is checked against the field itself, through pydantic: its kind (a whole number for an int
field), its choices, its bounds (the value at the bound is accepted, one just past it refused), its default, its
help and its element id.
"""

from __future__ import annotations

import typing
from typing import Annotated

import pytest
from pydantic import TypeAdapter, ValidationError

gr = pytest.importorskip("gradio")

from conftest import app_values as values  # noqa: E402  (shared factories)

from workbench.app import controls, forms  # noqa: E402
from workbench.app import plan as plan_tab  # noqa: E402
from workbench.app import train as train_tab  # noqa: E402
from workbench.app.state import AppContext, Selection  # noqa: E402
from workbench.config import RunConfig  # noqa: E402
from workbench.store.runs import RunStore  # noqa: E402

# The field-backed controls that show a value other than the base config's while their mode is off.
SHOWN_WHEN_UNSET = {"epochs": 1.0, "max_steps": 100, "noise_multiplier": 1.0, "validation_data": ""}


def build(home, defaults=None):
    ctx = AppContext(RunStore(home), defaults=dict(defaults or {}))
    with gr.Blocks() as demo:
        plan = plan_tab.build(ctx)
        train = train_tab.build(ctx, plan, gr.State(Selection()))
    return demo, {**plan.components, **train.components}, forms.ctx_base(ctx)


def accepts(name: str, value) -> bool:
    """Whether field ``name`` alone (its type and Field bounds) takes ``value``."""
    info = RunConfig.model_fields[name]
    annotation = Annotated[(info.annotation, *info.metadata)] if info.metadata else info.annotation
    try:
        TypeAdapter(annotation).validate_python(value)
    except ValidationError:
        return False
    return True


def generated(components):
    return {name: comp for name, comp in components.items() if name not in controls.HAND_MADE}


def test_every_control_is_a_field_or_listed_as_hand_made(_workbench_home):
    demo, components, _ = build(_workbench_home)
    assert set(components) == set(forms.PLAN_FIELDS) | set(forms.TRAIN_FIELDS)
    for name in components:
        assert name in controls.HAND_MADE or name in RunConfig.model_fields, name
    assert set(controls.HAND_MADE) <= set(components)  # the list names no control that is gone
    assert len(generated(components)) >= 18


NEW_KNOBS = ("warmup_steps", "lr_schedule", "baseline_eval", "weight_decay", "momentum")  # in no tab today


@pytest.mark.parametrize(
    "defaults, new_knobs",
    [({}, False), ({"max_steps": 50, "noise_multiplier": 0.8, "lora_r": 4, "seed": 3, "warmup_steps": 7}, True)],
)
def test_every_generated_control_matches_its_field(_workbench_home, monkeypatch, defaults, new_knobs):
    if new_knobs:  # a field shown in the Train tab is one name in forms.TRAIN_ROWS
        monkeypatch.setattr(forms, "TRAIN_ROWS", (*forms.TRAIN_ROWS, NEW_KNOBS))
    demo, components, base = build(_workbench_home, {"accountant": "rdp", "optimizer": "sgd", **defaults})
    assert set(NEW_KNOBS) <= set(components) if new_knobs else not set(NEW_KNOBS) & set(components)
    for name, comp in generated(components).items():
        info = RunConfig.model_fields[name]
        spec = controls.field_spec(name)
        assert comp.label == controls.label(name) and comp.elem_id == name.replace("_", "-"), name
        assert comp.info == (controls.HELP.get(name, info.description) or None), name
        shown = getattr(base, name)
        assert comp.value == (SHOWN_WHEN_UNSET[name] if shown is None else shown), name
        if spec.kind == "choice":
            assert isinstance(comp, gr.Dropdown), name
            assert [v for _, v in comp.choices] == list(typing.get_args(info.annotation)), name
            assert all(accepts(name, v) for _, v in comp.choices) and not accepts(name, "no-such-choice"), name
            continue
        if spec.kind == "bool":
            assert isinstance(comp, gr.Checkbox) and accepts(name, comp.value), name
            continue
        assert isinstance(comp, gr.Number if spec.kind in ("int", "float") else gr.Textbox), name
        if isinstance(comp, gr.Textbox):
            assert accepts(name, "text"), name
            continue
        whole = comp.precision == 0
        assert whole == (not accepts(name, 2.5) and accepts(name, 2)), f"{name}: precision {comp.precision}"
        step = 1 if whole else 1e-9
        if name in controls.UNBOUNDED:  # the tab's own message next to the control, not Gradio's
            assert comp.minimum is None and comp.maximum is None and not accepts(name, -(10**9)), name
            continue
        if comp.minimum is None:
            assert accepts(name, -(10**9)), f"{name}: the field has a lower bound the control lacks"
        else:
            assert not accepts(name, comp.minimum - step) and accepts(name, comp.minimum + step), name
        if comp.maximum is None:
            assert accepts(name, 10**9), f"{name}: the field has an upper bound the control lacks"
        else:
            assert accepts(name, comp.maximum - step) and not accepts(name, comp.maximum + step), name


def test_the_callbacks_get_the_controls_by_name(_workbench_home):
    demo, components, _ = build(_workbench_home)
    plan_fns = [fn for fn in demo.fns.values() if fn.api_name == "plan"]
    assert plan_fns
    for fn in plan_fns:
        assert set(fn.input_keyword_names) == set(forms.PLAN_FIELDS)
        named = dict(zip(fn.input_keyword_names, fn.inputs[-len(fn.input_keyword_names) :]))
        assert all(named[k] is components[k] for k in named)
    start = [fn for fn in demo.fns.values() if set(forms.TRAIN_FIELDS) <= set(fn.input_keyword_names)]
    assert start and all(set(fn.input_keyword_names) == set(components) for fn in start)  # Start, the sweep


def test_any_field_reaches_the_config_by_its_type():
    """No hand list of integer fields: a whole-number float becomes the int field's int, an empty choice keeps
    the base's, text is stripped."""
    cfg = forms.config_from_values(
        values(
            lora_r=4.0,
            seed=3.0,
            eval_every=10.0,
            warmup_steps=5.0,  # no control shows it: any field's name works
            max_seq_len=128.0,
            baseline_eval=False,
            lr_schedule="cosine",
            clipping="",
            lora_target_modules=" all-linear ",
            learning_rate=0.01,
        )
    )
    assert (cfg.lora_r, cfg.seed, cfg.eval_every, cfg.warmup_steps, cfg.max_seq_len) == (4, 3, 10, 5, 128)
    assert all(isinstance(v, int) for v in (cfg.lora_r, cfg.seed, cfg.warmup_steps, cfg.max_seq_len))
    assert (cfg.baseline_eval, cfg.lr_schedule, cfg.clipping) == (False, "cosine", "auto")
    assert (cfg.lora_target_modules, cfg.learning_rate) == ("all-linear", 0.01)
    with pytest.raises(forms.ConfigError, match=r"lora[._]r"):
        forms.config_from_values(values(lora_r=2.5))
    assert forms.config_from_values(values(seq=7, unknown="x")).seed == 0  # a name that is no field is not read
