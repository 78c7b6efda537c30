"""One mechanism, one epsilon: `workbench plan` / `workbench epsilon`, the app's Plan tab callback, the planner
widget and a tiny run's summary give the same sigma and epsilon for the same settings (issue 28). Each surface
reaches the mechanism its own way (flags, the Plan tab's controls, the widget's sliders, a RunConfig), so a
default or a resolution that drifts on one surface fails here."""

from __future__ import annotations

import json
import math

import pytest
from typer.testing import CliRunner

gr = pytest.importorskip("gradio")
pytest.importorskip("ipywidgets")

from conftest import app_values  # noqa: E402

from workbench.app import plan as plan_tab  # noqa: E402
from workbench.cli import app as cli  # noqa: E402
from workbench.config import RunConfig  # noqa: E402
from workbench.engine.prepare import dataset_sizes  # noqa: E402
from workbench.session import Session  # noqa: E402
from workbench.store.runs import RunStore  # noqa: E402
from workbench.widgets.planner import NOISE, TARGET, PlanSettings, compute_plan  # noqa: E402

BASE = dict(model="tiny", data="demo", batch_size=16, max_steps=4, physical_batch_size=16, max_seq_len=32)
BASE.update(generate_max_new_tokens=0, baseline_eval=False, eval_max_examples=8, learning_rate=1e-3)
SETTINGS = {
    "example, add/remove, target": dict(neighboring="add_remove", public=True, target_epsilon=8.0),
    "example, replace-one, target": dict(neighboring="replace_one", target_epsilon=8.0),
    "example, add/remove, noise multiplier": dict(neighboring="add_remove", public=True, noise_multiplier=1.1),
    "example, RDP, target": dict(neighboring="add_remove", public=True, accountant="rdp", target_epsilon=4.0),
    "user ELS k=2, target": dict(unit="user:els", k=2, neighboring="add_remove", public=True, target_epsilon=8.0),
    "user ULS, replace-one, target": dict(unit="user:uls", neighboring="replace_one", target_epsilon=8.0),
}


def run_config(s: dict) -> RunConfig:
    unit, _, sampling = s.get("unit", "example").partition(":")
    cfg = RunConfig(
        **BASE,
        privacy_unit=unit,
        user_sampling=sampling or "els",
        max_examples_per_user=s.get("k", 8),
        neighboring=s["neighboring"],
        accountant=s.get("accountant", "pld"),
        target_epsilon=s.get("target_epsilon"),
        noise_multiplier=s.get("noise_multiplier"),
    )
    if s.get("public"):
        examples, users = dataset_sizes(cfg)
        cfg = cfg.with_overrides({"public_dataset_size": users if sampling == "uls" else examples})
    return cfg


def from_cli(cfg: RunConfig) -> tuple[float, float, dict]:
    sets = [f"{k}={v}" for k, v in cfg.to_dict().items() if v is not None and k in SET_KEYS]
    args = ["plan", "--json"] + [x for kv in sets for x in ("--set", kv)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    return out["noise_multiplier"], out["epsilon"], out


SET_KEYS = (
    "model data batch_size max_steps privacy_unit user_sampling max_examples_per_user neighboring accountant "
    "target_epsilon noise_multiplier public_dataset_size"
).split()


def from_epsilon_command(out: dict, s: dict) -> float:
    """`workbench epsilon` at the plan's sigma, q, T and delta."""
    els = s.get("unit") == "user:els"
    args = ["epsilon", "--json", "--noise-multiplier", repr(out["noise_multiplier"])]
    args += ["--sample-rate", repr(out["sample_rate"]), "--steps", str(out["planned_steps"])]
    args += ["--delta", repr(out["delta"]), "--accountant", out["accountant"], "--neighboring", out["neighboring"]]
    args += ["--privacy-unit", "user" if els else "example", "--max-examples-per-user", str(s.get("k", 1))]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)["epsilon"]


def from_plan_tab(ctx, monkeypatch, s: dict) -> tuple[float, float]:
    stages = []
    summary = plan_tab.plan_summary
    monkeypatch.setattr(plan_tab, "plan_summary", lambda stage: stages.append(stage) or summary(stage))
    target = "target_epsilon" in s and s["target_epsilon"] is not None
    values = app_values(
        batch_size=16,
        max_steps=4,
        privacy_mode="target" if target else "sigma",
        target_epsilon=s.get("target_epsilon") or 8.0,
        noise_multiplier=s.get("noise_multiplier") or 1.0,
        accountant=s.get("accountant", "pld"),
        neighboring=s["neighboring"],
        privacy_unit=s.get("unit", "example"),
        max_examples_per_user=s.get("k", 8),
        public_size=bool(s.get("public")),
    )
    updates = [u for u in plan_tab.plan_updates(ctx, values) if u is not None]
    assert updates and stages, "the Plan tab drew no plan"
    assert updates[-1][-1] == "", updates[-1][-1]  # no error message
    last = stages[-1]
    user = last.user_level
    eps = user.epsilon if s.get("unit") == "user:els" else last.final_epsilon(last.bound)
    return last.noise_multiplier, eps


def from_widget(cfg: RunConfig, plan_out: dict, s: dict) -> tuple[float, float]:
    target = cfg.noise_multiplier is None
    unit = s.get("unit", "example")
    population = plan_out["num_users"] if unit == "user:uls" else plan_out["dataset_size"]
    settings = PlanSettings(
        dataset_size=cfg.public_dataset_size or population,
        batch_size=cfg.batch_size,
        steps=cfg.max_steps,
        delta=plan_out["delta"],
        mode=TARGET if target else NOISE,
        target_epsilon=cfg.target_epsilon or 8.0,
        noise_multiplier=cfg.noise_multiplier or 1.0,
        accountants=(plan_out["accountant"],),
        selected=cfg.accountant,
        neighboring=cfg.neighboring,
        privacy_unit=unit,
        max_examples_per_user=cfg.max_examples_per_user,
    )
    result = compute_plan(settings)
    assert not result.errors, result.errors
    eps = result.user_epsilon if unit == "user:els" else result.epsilon[plan_out["accountant"]]
    return result.noise_multiplier, eps


@pytest.mark.parametrize("name", list(SETTINGS))
def test_every_surface_shows_the_same_sigma_and_epsilon(name, ctx, monkeypatch):
    s = SETTINGS[name]
    cfg = run_config(s)
    sigma, eps, plan_out = from_cli(cfg)
    assert math.isfinite(eps) and sigma > 0
    if "target_epsilon" in s:
        assert eps <= s["target_epsilon"] * (1 + 1e-9), "a calibrated plan never overshoots its target"
    assert from_epsilon_command(plan_out, s) == pytest.approx(eps, rel=1e-6), "workbench epsilon"
    tab_sigma, tab_eps = from_plan_tab(ctx, monkeypatch, s)
    assert tab_sigma == pytest.approx(sigma, rel=1e-9), "the Plan tab's sigma"
    assert tab_eps == pytest.approx(eps, rel=1e-6), "the Plan tab's epsilon"
    w_sigma, w_eps = from_widget(cfg, plan_out, s)
    assert w_sigma == pytest.approx(sigma, rel=1e-9), "the planner widget's sigma"
    assert w_eps == pytest.approx(eps, rel=1e-6), "the planner widget's epsilon"
    summary = Session(cfg, store=RunStore()).run()
    assert summary["status"] == "finished", summary
    assert summary["noise_multiplier"] == pytest.approx(sigma, rel=1e-9), "the run's sigma"
    assert summary["epsilon"] == pytest.approx(eps, rel=1e-6), "the run's epsilon"
