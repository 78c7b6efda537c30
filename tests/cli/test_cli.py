"""The command line: bad input gives one clear message and exit code 2, never a traceback, and
never a run left 'running'; killed runs read as 'interrupted' with their events; the engine
trains without gradio."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from workbench.cli import app
from workbench.store.runs import RunStore

TINY = [
    "--set",
    "model=tiny",
    "--set",
    "batch_size=8",
    "--set",
    "physical_batch_size=8",
    "--set",
    "generate_max_new_tokens=0",
    "--set",
    "eval_max_examples=8",
]


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


def options(**values) -> list[str]:
    """``--name value`` for each of ``values`` (underscores in the names become dashes)."""
    return [x for name, value in values.items() for x in (f"--{name.replace('_', '-')}", str(value))]


def write(path: Path, text: str | bytes) -> str:
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return str(path)


def good_rows(n: int = 40) -> str:
    return "\n".join(json.dumps({"prompt": f"question {i}?", "response": f"answer {i}."}) for i in range(n))


BAD_INPUTS = {
    "missing path": (lambda d: str(d / "nope.jsonl"), "nope.jsonl"),
    "empty file": (lambda d: write(d / "empty.jsonl", ""), "empty.jsonl"),
    "malformed json line": (lambda d: write(d / "bad.jsonl", good_rows(5) + '\n{"prompt": "x", \n'), "line 6"),
    "unknown schema": (lambda d: write(d / "odd.jsonl", '{"foo": 1, "bar": 2}\n' * 20), "foo"),
    "non-utf8": (lambda d: write(d / "latin.csv", b"text,label\ncaf\xe9 ok,a\nfine,b\n"), "latin.csv"),
    "fewer examples than batch": (lambda d: write(d / "small.jsonl", good_rows(40)), "batch_size"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_data_is_a_message_not_a_traceback(tmp_path, case):
    make, needle = BAD_INPUTS[case]
    # (the split is a keyed hash per record, so a file of a handful of rows may hold out none: the
    # "fewer than batch" case uses 40 rows and a batch of 64 instead)
    extra = ["--set", "batch_size=64"] if case == "fewer examples than batch" else []
    result = invoke("train", *TINY, "--set", f"data={make(tmp_path)}", "--set", "max_steps=1", *extra)
    assert result.exit_code == 2, result.output
    assert needle in result.output
    assert "Traceback" not in result.output
    assert all(r.status == "failed" for r in RunStore().list()), "no run is left running"


def test_missing_column_mapping_names_the_column(tmp_path):
    path = write(tmp_path / "d.csv", "sentence,label\nnice,a\nbad,b\n" * 20)
    result = invoke("train", *TINY, "--set", f"data={path}", "--set", "columns={text: body}", "--set", "max_steps=1")
    assert result.exit_code == 2 and "body" in result.output


def test_validation_labels_absent_from_training(tmp_path):
    train_path = write(tmp_path / "train.csv", "text,label\ngood,pos\nbad,neg\n" * 20)
    val_path = write(tmp_path / "val.csv", "text,label\nmeh,neutral\n")
    result = invoke(
        "train", *TINY, "--set", f"data={train_path}", "--set", f"validation_data={val_path}", "--set", "max_steps=1"
    )
    assert result.exit_code == 2 and "neutral" in result.output


def test_sequences_longer_than_the_model_allows():
    result = invoke("train", *TINY, "--set", "max_seq_len=5000", "--set", "max_steps=1")
    assert result.exit_code == 2 and "5000" in result.output


def test_delta_not_below_one_over_n_is_refused():
    result = invoke("train", *TINY, "--set", "delta=0.01", "--set", "max_steps=1")
    assert result.exit_code == 2 and "1/N" in result.output


@pytest.mark.parametrize(
    "override,needle",
    [("batch_size=0", "batch_size"), ("nosuchkey=1", "nosuchkey"), ("model=/no/such/dir", "/no/such/dir")],
)
def test_bad_config_values(override, needle):
    result = invoke("train", *TINY, "--set", override, "--set", "max_steps=1")
    assert result.exit_code == 2 and needle in result.output and "Traceback" not in result.output


def test_train_json_summary_and_runs_commands(tmp_path):
    result = invoke("train", *TINY, "--set", "max_steps=2", "--set", "noise_multiplier=1.0", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    for key in (
        "run_id",
        "status",
        "epsilon",
        "delta",
        "noise_multiplier",
        "sample_rate",
        "steps",
        "accountant",
        "adapter_dir",
        "val_loss",
    ):
        assert key in summary
    run_id = summary["run_id"]
    listed = json.loads(invoke("runs", "list", "--json").stdout)
    assert [r["run_id"] for r in listed] == [run_id]
    shown = json.loads(invoke("runs", "show", run_id, "--json").stdout)
    assert shown["status"] == "finished" and shown["event_counts"]["step"] == 2
    out = json.loads(invoke("runs", "export", run_id, str(tmp_path / "exp"), "--json").stdout)
    exported = Path(out["exported_to"])
    assert (exported / "adapter" / "privacy_report.json").exists() and (exported / "summary.json").exists()
    released = json.loads((exported / "summary.json").read_text())
    assert "epsilon" in released and "val_loss" not in released  # metrics on private data stay out
    assert not (exported / "telemetry").exists() and not list(exported.rglob("events.jsonl"))
    out = json.loads(invoke("runs", "export", run_id, str(tmp_path / "exp2"), "--with-telemetry", "--json").stdout)
    telemetry = Path(out["exported_to"]) / "telemetry"
    assert (telemetry / "events.jsonl").exists() and "not covered" in (telemetry / "README.md").read_text()
    assert "val_loss" in json.loads((telemetry / "summary.json").read_text())
    assert invoke("runs", "show", "no-such-run").exit_code == 2
    assert json.loads(invoke("runs", "delete", run_id, "--json").stdout)["deleted"]
    assert json.loads(invoke("runs", "list", "--json").stdout) == []


def test_epsilon_and_calibrate_commands():
    run = options(sample_rate="0.04", steps=2250, delta="1e-5", accountant="rdp")
    r = invoke("epsilon", "--noise-multiplier", "1.5", *run, "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["epsilon"] == pytest.approx(7.32911117143, rel=1e-3)
    r = invoke("calibrate", "--target-epsilon", "8", *run, "--json")
    out = json.loads(r.stdout)
    assert out["noise_multiplier"] == pytest.approx(1.416, abs=0.01) and out["epsilon"] <= 8
    bad = invoke("epsilon", "--noise-multiplier", "1", "--sample-rate", "1.5", "--steps", "10", "--delta", "1e-5")
    assert bad.exit_code == 2 and "1.5" in bad.output


def test_data_command_describes_a_file(tmp_path):
    path = write(
        tmp_path / "d.jsonl",
        "\n".join(json.dumps({"prompt": f"q{i}", "response": "a", "user_id": i % 3}) for i in range(12)),
    )
    r = invoke("data", path, "--json")
    assert r.exit_code == 0, r.output
    info = json.loads(r.stdout)
    assert info["schema"] == "prompt_response" and info["num_examples"] == 12 and info["num_users"] == 3


def _cli(*args: str, env: dict | None = None, **kw) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "workbench.cli", *args],
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


def test_a_killed_run_reads_interrupted_with_its_events():
    proc = _cli(
        "train",
        *TINY,
        "--set",
        "max_steps=2000",
        "--set",
        "noise_multiplier=1.0",
        "--set",
        "target_epsilon=null",
        "--set",
        "accountant=rdp",
        "--set",
        "public_dataset_size=1000",
    )
    store = RunStore()
    deadline = time.time() + 180
    run_id = None
    while time.time() < deadline:
        runs = store.list()
        if runs:
            run_id = runs[0].id
            if len(store.events(run_id, kinds=("step",))) >= 2:
                break
        time.sleep(0.5)
    assert run_id is not None, proc.communicate(timeout=5)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    rec = store.get(run_id)
    assert rec.status == "interrupted"
    steps = store.events(run_id, kinds=("step",))
    assert len(steps) >= 2 and steps[0][1].kind == "step"


def test_engine_trains_without_gradio(tmp_path):
    code = (
        "import sys; sys.modules['gradio'] = None; sys.modules['gradio_client'] = None\n"
        "from workbench import train\n"
        "s = train(model='tiny', max_steps=1, batch_size=8, noise_multiplier=1.0, generate_max_new_tokens=0, eval_max_examples=4)\n"
        "assert s['status'] == 'finished', s\n"
        "assert 'gradio' not in [m for m in sys.modules if sys.modules[m] is not None]\n"
        "print('ok')\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=os.environ.copy()
    )
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-2000:]


def test_user_level_epsilon_and_calibrate_commands():
    user_level = options(sample_rate="0.01", delta="1e-6", privacy_unit="user", max_examples_per_user=2)
    r = invoke("epsilon", "--noise-multiplier", "1", "--steps", "1000", *user_level, "--json")
    out = json.loads(r.stdout)
    assert out["epsilon"] == pytest.approx(4.55, rel=0.02)  # REFERENCES.md: ELS, k=2
    assert out["example_level_epsilon"] == pytest.approx(2.12, rel=0.02)
    r = invoke("calibrate", "--target-epsilon", "4", "--steps", "200", *user_level, "--json")
    out = json.loads(r.stdout)
    assert out["epsilon"] <= 4 and out["epsilon"] > 3.9


def test_app_command_presets_the_controls_from_a_config(monkeypatch, tmp_path):
    import workbench.app

    seen = {}
    monkeypatch.setattr(workbench.app, "launch", lambda **kw: seen.update(kw))
    demo = Path(__file__).resolve().parents[2] / "assets" / "demo.yaml"
    r = invoke("app", "--config", str(demo))
    assert r.exit_code == 0, r.output
    assert seen["defaults"]["lora_layers"] == 4 and seen["defaults"]["target_epsilon"] == 8.0
    assert seen["host"] == "127.0.0.1"
    r = invoke("app", "--config", str(tmp_path / "missing.yaml"))
    assert r.exit_code == 2 and "does not exist" in r.output and "Traceback" not in r.output


@pytest.mark.parametrize("neighboring", ["auto", "add_remove", "replace_one"])
def test_plan_calculator_agrees_with_the_notebook_planner(neighboring):
    """`workbench plan --dataset-size N` and the notebook planner are the same calculator: the N typed is public, so
    for the same inputs (auto included) they state the same relation and the same epsilon, which dp_accounting
    gives independently for that relation."""
    import dp_accounting
    from dp_accounting.pld import PLDAccountant

    from workbench.widgets.planner import PlanSettings

    args = ["plan", "--dataset-size", "1000", "--json", "--neighboring", neighboring]
    args += ["--set", "noise_multiplier=1", "--set", "batch_size=10", "--set", "max_steps=100", "--accountant", "pld"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    cli = json.loads(result.stdout[result.stdout.index("{") :])
    widget = PlanSettings(dataset_size=1000, batch_size=10, steps=100, noise_multiplier=1.0, neighboring=neighboring)
    from workbench.planning.plan import make_plan

    mechanism = make_plan(widget.config(), dataset_size=1000).mechanism
    expected = "replace_one" if neighboring == "replace_one" else "add_remove"
    assert cli["neighboring"] == mechanism.neighboring == expected
    relation = dp_accounting.NeighboringRelation.REPLACE_ONE if expected == "replace_one" else None
    acc = PLDAccountant(**({"neighboring_relation": relation} if relation else {}))
    event = dp_accounting.PoissonSampledDpEvent(0.01, dp_accounting.GaussianDpEvent(1.0))
    oracle = acc.compose(event, 100).get_epsilon(1e-5)
    assert cli["epsilon"] == pytest.approx(mechanism.epsilon(), rel=1e-9)
    assert cli["epsilon"] == pytest.approx(oracle, rel=2e-2)
