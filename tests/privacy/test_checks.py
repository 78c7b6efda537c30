"""The pre-flight privacy check: each finding appears exactly when its condition holds; the
`workbench check` command gates on errors (exit 1) and reports bad input in one line (exit 2)."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from workbench.cli import app
from workbench.config import RunConfig
from workbench.privacy.checks import Finding, clipping_activity, format_findings, preflight


def plan(**kw) -> SimpleNamespace:
    """A stand-in for PrivacyPlan with the attributes preflight reads."""
    eps = kw.pop("final_epsilon", 3.0)
    base = dict(
        dataset_size=1000,
        num_users=None,
        privacy_unit="example",
        delta=1e-5,
        noise_multiplier=1.0,
        steps=100,
        target_epsilon=8.0,
        neighboring=None,
        population=1000,
        published_population=1000,
    )
    base.update(kw)
    return SimpleNamespace(epsilon_at=lambda step: eps, **base)


def codes(config: RunConfig, p=None, **kw) -> list[str]:
    return [f.code for f in preflight(config, p, **kw)]


def finding(config: RunConfig, code: str, p=None, **kw) -> Finding:
    (match,) = [f for f in preflight(config, p, **kw) if f.code == code]
    return match


# -- one finding per condition --------------------------------------------------------------------------


def test_seeded_randomness_is_an_error_only_with_a_noise_seed():
    f = finding(RunConfig(noise_seed=7), "seeded-randomness")
    assert f.severity == "error" and "seeded randomness" in f.message and "7" in f.message
    assert "seeded-randomness" not in codes(RunConfig())
    assert "seeded-randomness" in codes(RunConfig(noise_seed=0))  # 0 is a seed too


def test_non_private_warns_only_without_noise():
    f = finding(RunConfig(noise_multiplier=0), "non-private")
    assert f.severity == "warning" and "infinite" in f.message
    assert "non-private" not in codes(RunConfig())
    assert "non-private" not in codes(RunConfig(noise_multiplier=0.5))
    # the plan decides when given: a calibrated sigma is private
    assert "non-private" not in codes(RunConfig(), plan(noise_multiplier=0.7))


def test_privacy_findings_are_left_out_of_a_non_private_run():
    found = codes(RunConfig(noise_multiplier=0, target_epsilon=50.0), plan(noise_multiplier=0.0, delta=1e-2))
    for code in ("delta-not-small", "weak-epsilon", "neighbouring-relation", "telemetry-not-private"):
        assert code not in found


def test_delta_not_far_below_one_over_n():
    f = finding(RunConfig(), "delta-not-small", plan(delta=5e-4))  # 1/N = 1e-3, 0.1/N = 1e-4
    assert f.severity == "warning" and "delta=0.0005" in f.message and "N=1000" in f.message
    assert "delta-not-small" not in codes(RunConfig(), plan(delta=1e-4))  # exactly 0.1/N is fine
    assert "delta-not-small" not in codes(RunConfig(), plan(delta=1e-5))
    assert "delta-not-small" not in codes(RunConfig())  # N unknown without a plan


def test_delta_is_measured_against_users_at_user_level():
    config = RunConfig(privacy_unit="user")
    user_plan = plan(privacy_unit="user", dataset_size=1000, num_users=50, delta=1e-3)  # 0.1/50 = 2e-3
    assert "delta-not-small" not in codes(config, user_plan)
    f = finding(config, "delta-not-small", plan(privacy_unit="user", num_users=50, delta=3e-3))
    assert "users" in f.message and "N=50" in f.message


def test_weak_epsilon_from_the_target_or_the_plan():
    assert finding(RunConfig(target_epsilon=12.0), "weak-epsilon").severity == "warning"
    assert "weak-epsilon" not in codes(RunConfig(target_epsilon=10.0))
    assert "weak-epsilon" not in codes(RunConfig(target_epsilon=8.0))
    fixed = RunConfig(target_epsilon=20.0, noise_multiplier=0.8)
    f = finding(fixed, "weak-epsilon", plan(final_epsilon=15.0, target_epsilon=20.0))
    assert "15" in f.message and "planned" in f.message
    # a fixed sigma that spends little: the plan's epsilon counts, not the (unreached) budget
    assert "weak-epsilon" not in codes(fixed, plan(final_epsilon=4.0, target_epsilon=20.0))
    # the budget stop caps the planned epsilon
    assert "weak-epsilon" not in codes(RunConfig(noise_multiplier=0.3), plan(final_epsilon=30.0, target_epsilon=8.0))
    # a calibrated sigma reaches its target
    assert "weak-epsilon" in codes(RunConfig(target_epsilon=12.0), plan(final_epsilon=11.99, target_epsilon=12.0))


def test_weak_epsilon_falls_back_to_the_target_when_the_accountant_fails():
    def broken(step):
        raise RuntimeError("accountant failed")

    p = plan(target_epsilon=12.0)
    p.epsilon_at = broken
    assert "weak-epsilon" in codes(RunConfig(target_epsilon=12.0, noise_multiplier=0.5), p)


def test_edgeworth_is_an_info_only_for_edgeworth():
    f = finding(RunConfig(accountant="edgeworth"), "approximate-accountant")
    assert f.severity == "info" and "PLD" in f.message
    for accountant in ("pld", "rdp", "prv"):
        assert "approximate-accountant" not in codes(RunConfig(accountant=accountant))


def test_neighbouring_relation_names_what_the_size_means():
    replace = finding(RunConfig(), "neighbouring-relation", plan(neighboring="replace_one"))
    assert replace.severity == "info" and "replace-one" in replace.message and "exactly" in replace.message
    assert "N=1000" in replace.message
    add = finding(RunConfig(), "neighbouring-relation", plan(neighboring="add_remove", published_population=1000))
    assert "add/remove" in add.message and "public_dataset_size=1000" in add.message and "never" in add.message
    assert "public_dataset_size=1000" in replace.advice  # the one-step way to add/remove, when the size may be public
    unknown = finding(RunConfig(), "neighbouring-relation", plan(neighboring=None))
    assert "auto" in unknown.message
    assert "replace-one" in finding(RunConfig(neighboring="replace_one"), "neighbouring-relation").message
    no_attr = plan()
    del no_attr.neighboring  # a plan from before the field existed
    assert "auto" in finding(RunConfig(), "neighbouring-relation", no_attr).message


def test_telemetry_sampling_and_tuning_are_infos_of_every_private_run():
    for code in ("telemetry-not-private", "poisson-sampling", "tuning-not-counted"):
        f = finding(RunConfig(), code)
        assert f.severity == "info"
    telemetry = finding(RunConfig(), "telemetry-not-private")
    assert "validation" in telemetry.message and "stop" in telemetry.advice
    assert "Chua" in finding(RunConfig(), "poisson-sampling").advice


def test_no_clipping():
    # calibrated noise without C: no epsilon holds; the config allows it, the engine refuses it later
    f = finding(RunConfig(max_grad_norm=None), "no-clipping")
    assert f.severity == "error" and "max_grad_norm" in f.message
    baseline = finding(RunConfig(max_grad_norm=None, noise_multiplier=0), "no-clipping")
    assert baseline.severity == "warning"
    assert "no-clipping" not in codes(RunConfig())


def test_cross_example_layers_only_for_models_of_ones_own():
    assert "cross-example-layers" not in codes(RunConfig(model="tiny"))
    assert "cross-example-layers" not in codes(RunConfig(model="default"))
    f = finding(RunConfig(model="someone/model-with-batchnorm"), "cross-example-layers")
    assert f.severity == "info" and "batch normalisation" in f.message


def test_label_set_from_private_data():
    assert finding(RunConfig(task="classification"), "label-set-from-data").severity == "error"  # a run refuses
    assert "label-set-from-data" in codes(RunConfig(), task="classification")  # task auto, resolved by the data
    assert "label-set-from-data" not in codes(RunConfig(task="classification", labels=["neg", "pos"]))
    assert "label-set-from-data" not in codes(RunConfig(), task="causal_lm")
    assert "label-set-from-data" not in codes(RunConfig())


def test_findings_come_errors_first():
    found = preflight(RunConfig(noise_seed=1, target_epsilon=20.0, accountant="edgeworth"))
    ranks = [("error", "warning", "info").index(f.severity) for f in found]
    assert ranks == sorted(ranks) and found[0].code == "seeded-randomness"


def test_a_safe_config_has_no_errors_or_warnings():
    found = preflight(RunConfig(), plan(neighboring="replace_one"))
    assert {f.severity for f in found} == {"info"}


def test_finding_refuses_an_unknown_severity():
    with pytest.raises(ValueError, match="severity"):
        Finding("x", "fatal", "m", "a")


def test_format_findings_one_line_each():
    found = [Finding("a", "error", "bad thing", "do this"), Finding("b", "info", "fact", "note")]
    assert format_findings(found) == "[error] bad thing -> do this\n[info] fact -> note"
    assert format_findings([]) == ""


# -- clipping never active ---------------------------------------------------------------------------------


def test_clipping_activity_fires_when_norms_are_far_below_c():
    f = clipping_activity([0.01, 0.02, 0.05, 0.03] * 10, 1.0)
    assert f is not None and f.severity == "warning" and f.code == "clipping-inactive"
    assert "C=1" in f.message and "not private" in f.advice


def test_clipping_activity_is_quiet_for_norms_around_c():
    assert clipping_activity([0.5, 0.9, 1.1, 2.0, 0.8] * 10, 1.0) is None
    assert clipping_activity([0.3] * 50, 1.0) is None  # below C but not far below: C/10 is the line
    assert clipping_activity([0.3] * 50, 4.0) is not None
    # 10% of the norms near C keeps the 90th percentile up: clipping does act on some
    assert clipping_activity([0.01] * 80 + [1.5] * 20, 1.0) is None
    assert clipping_activity([], 1.0) is None
    assert clipping_activity([0.01, 0.02], None) is None  # no clipping: nothing to compare with


def test_clipping_activity_ignores_non_finite_norms():
    assert clipping_activity([math.nan, math.inf] + [0.01] * 20, 1.0) is not None
    assert clipping_activity([math.nan, math.inf], 1.0) is None


# -- the command ---------------------------------------------------------------------------------------------


def yaml_file(tmp_path, text: str) -> str:
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return str(path)


def test_cli_check_fails_a_seeded_run(tmp_path):
    cfg = yaml_file(tmp_path, "model: tiny\ndata: demo\nnoise_seed: 1\n")
    result = CliRunner().invoke(app, ["check", "--config", cfg])
    assert result.exit_code == 1, result.output
    assert "seeded randomness" in result.output and "Traceback" not in result.output


def test_cli_check_passes_a_private_run_and_prints_json(tmp_path):
    cfg = yaml_file(tmp_path, "model: tiny\ndata: demo\n")
    result = CliRunner().invoke(app, ["check", "--config", cfg, "--json", "--set", "target_epsilon=12"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert {"code", "severity", "message", "advice"} == set(rows[0])
    assert "weak-epsilon" in {r["code"] for r in rows}
    assert "seeded-randomness" not in {r["code"] for r in rows}


@pytest.mark.parametrize("args", [["--set", "bogus_key=1"], []])
def test_cli_check_bad_key_is_one_line(tmp_path, args):
    text = "model: tiny\ndata: demo\n" + ("" if args else "bogus_key: 1\n")
    result = CliRunner().invoke(app, ["check", "--config", yaml_file(tmp_path, text), *args])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "bogus_key" in lines[0]


def test_cli_check_data_error_is_one_line(tmp_path):
    cfg = yaml_file(tmp_path, f"model: tiny\ndata: {tmp_path / 'missing.jsonl'}\n")
    result = CliRunner().invoke(app, ["check", "--config", cfg])
    assert result.exit_code == 2 and "missing.jsonl" in result.output and "Traceback" not in result.output
