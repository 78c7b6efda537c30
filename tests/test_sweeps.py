"""Sweeps (workbench/sweeps.py, store/sweeps.py, `workbench sweep`): expansion, validation before anything
runs, storage as one group, resume after a kill without retraining finished runs, tuning mode's secret draw
and its ledger record, and the command line's messages."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys

import numpy as np
import pytest
from sweep_helpers import TINY, synthetic_run
from typer.testing import CliRunner

import workbench
from workbench.cli import app
from workbench.config import RunConfig
from workbench.present.sweeps import progress_line
from workbench.store.runs import RunStore
from workbench.store.sweeps import SweepStore
from workbench.sweeps import (
    SweepError,
    Tuning,
    create_sweep,
    draw_runs,
    execute,
    parse_grid,
    parse_seeds,
    pending,
    run_label,
    tuning_of,
    validate,
)

BASE = RunConfig(**TINY, max_steps=1, target_epsilon=None, noise_multiplier=1.0)  # no calibration: fast


# -- expansion -------------------------------------------------------------------------------------


def test_grid_and_seeds_parse_and_expand_to_the_cross_product_with_readable_unique_names():
    grid = parse_grid(["target_epsilon=2,8", "max_grad_norm=0.1,1", "allocation=uniform,adaptive"])
    assert grid == [("target_epsilon", [2, 8]), ("max_grad_norm", [0.1, 1]), ("allocation", ["uniform", "adaptive"])]
    assert parse_seeds(3, 5) == [5, 6, 7] and parse_seeds("0,4", 0) == [0, 4] and parse_seeds(None, 2) == [2]
    members = validate(BASE, grid, parse_seeds(2, 0))
    assert len(members) == 2 * 2 * 2 * 2
    labels = [label for label, _ in members]
    assert len(set(labels)) == len(labels)
    assert labels[0] == "eps2-C0.1-uniform-s0" and labels[-1] == "eps8-C1-adaptive-s1"
    label, overrides = members[-1]
    # values are coerced through RunConfig: 8 -> 8.0, 1 -> 1.0
    assert overrides == {"target_epsilon": 8.0, "max_grad_norm": 1.0, "allocation": "adaptive", "seed": 1}
    assert isinstance(overrides["target_epsilon"], float)
    assert run_label({"learning_rate": 0.001, "lora_r": 4}) == "lr0.001-r4"
    # text values are coerced too: '1e-3' (a string to YAML 1.1) becomes the float 0.001
    (_, o), *_ = validate(BASE, parse_grid(["learning_rate=1e-3"]), [0])
    assert o["learning_rate"] == 0.001
    assert parse_grid({"lora_r": [4, 8], "seed": 3}) == [("lora_r", [4, 8]), ("seed", [3])]


def test_validation_reports_every_problem_before_anything_runs():
    with pytest.raises(SweepError) as err:
        validate(BASE, parse_grid(["bogus=1,2", "lora_r=a,4", "batch_size=", "name=x"]), [0])
    text = str(err.value)
    assert "4 problems" in text
    assert "unknown config key 'bogus'" in text
    assert "lora_r='a'" in text and "valid integer" in text
    assert "'batch_size' has no values" in text
    assert "'name' cannot be swept" in text
    # each value is fine alone, the combination is not: reported with its combination
    with pytest.raises(SweepError) as err:
        validate(RunConfig(**TINY), parse_grid(["noise_multiplier=0,1", "max_grad_norm=null,1"]), [0])
    assert "combination sigma1-Cnone (noise_multiplier=1.0, max_grad_norm=None)" in str(err.value)
    assert "clipping norm" in str(err.value) and "sigma0" not in str(err.value)
    with pytest.raises(SweepError, match="given twice"):
        validate(BASE, parse_grid(["lora_r=4", "lora_r=8"]), [0])
    with pytest.raises(SweepError, match="both in the grid and in --seeds"):
        validate(BASE, parse_grid(["seed=1,2"]), [0, 1])
    for bad in ("0", "x", "1,1"):
        with pytest.raises(SweepError):
            parse_seeds(bad, 0)


def test_a_sweep_is_stored_as_one_group_and_a_name_is_used_once():
    store = RunStore()
    rec = create_sweep(BASE, grid=["target_epsilon=2,8"], seeds=2, name="eps", store=store)
    assert [m.label for m in rec.members] == ["eps2-s0", "eps2-s1", "eps8-s0", "eps8-s1"]
    assert rec.keys == ["target_epsilon", "seed"] and all(m.state == "pending" for m in rec.members)
    assert SweepStore(store).get("eps").base_config["max_steps"] == 1
    with pytest.raises(SweepError, match="exists"):
        create_sweep(BASE, grid=["target_epsilon=4"], name="eps", store=store)
    with pytest.raises(SweepError, match="grid is empty"):
        create_sweep(BASE, name="empty", store=store)
    with pytest.raises(SweepError, match="sweep name"):
        create_sweep(BASE, grid=["lora_r=4"], name="no spaces", store=store)
    assert [r.name for r in SweepStore(store).list()] == ["eps"]


def test_an_existing_database_gains_the_sweep_tables_and_keeps_its_runs(_workbench_home):
    _workbench_home.mkdir(parents=True)
    path = _workbench_home / "runs.sqlite"
    con = sqlite3.connect(path)  # a database from before sweeps: runs and events only
    con.executescript(
        "CREATE TABLE runs (id TEXT PRIMARY KEY, name TEXT, created REAL NOT NULL, updated REAL NOT NULL, "
        "status TEXT NOT NULL, reason TEXT, pid INTEGER, host TEXT, config TEXT NOT NULL, summary TEXT);"
        "CREATE TABLE events (run_id TEXT NOT NULL, seq INTEGER NOT NULL, kind TEXT NOT NULL, time REAL NOT NULL, "
        "step INTEGER, payload TEXT NOT NULL, PRIMARY KEY (run_id, seq));"
    )
    con.execute(
        "INSERT INTO runs VALUES ('20250101-000000-old000', 'old', 1, 1, 'finished', '', 1, 'h', ?, '{}')",
        (json.dumps({"model": "tiny"}),),
    )
    con.commit()
    con.close()
    store = RunStore(_workbench_home)
    create_sweep(BASE, grid=["lora_r=4,8"], name="after", store=store)
    assert [r.id for r in store.list()] == ["20250101-000000-old000"]
    assert SweepStore(store).get("after").members[1].label == "r8"


# -- running and resuming --------------------------------------------------------------------------


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_killed_sweep_resumes_without_retraining_finished_runs():
    store = RunStore()
    rec = create_sweep(BASE, grid=["noise_multiplier=1,2,3"], name="killed", store=store)
    sweeps = SweepStore(store)
    # the state a kill leaves: member 0 finished, member 1 was training (its process is gone), member 2 never started
    finished, killed = "20260101-000000-done00", "20260101-000001-kill00"
    synthetic_run(store, finished, name="sigma1", noise_multiplier=1.0)
    synthetic_run(store, killed, name="sigma2", noise_multiplier=2.0, status=None)
    sweeps.start_member("killed", 0, finished)
    sweeps.end_member("killed", 0, "finished")
    sweeps.start_member("killed", 1, killed)
    with store._conn() as c:
        c.execute("UPDATE runs SET pid=? WHERE id=?", (_dead_pid(), killed))
    rec = sweeps.get("killed")
    assert [sweeps.status(m) for m in rec.members] == ["finished", "interrupted", "pending"]
    assert [m.index for m in pending(sweeps, rec)] == [1, 2]
    seen = []
    after = execute("killed", store=store, progress=seen.append)
    assert [p.label for p in seen] == ["sigma2", "sigma3"]
    assert seen[-1].done == seen[-1].total == 3 and "[3/3]" in progress_line(seen[-1])
    assert after.members[0].run_id == finished  # not retrained
    assert after.members[1].run_id != killed and after.members[1].attempts == (killed,)
    assert store.get(killed).status == "interrupted"  # the killed attempt is kept
    assert all(sweeps.status(m) == "finished" for m in after.members)
    assert pending(sweeps, after) == []
    # run names are the labels; the config carries them too
    assert store.get(after.members[2].run_id).name == "sigma3"
    assert store.get(after.members[2].run_id).config["noise_multiplier"] == 3.0
    assert len(store.list()) == 4
    # a finished run deleted later stays finished for its sweep: resume does not train it again
    store.delete(finished)
    assert pending(sweeps, sweeps.get("killed")) == []


def test_python_api_runs_a_sweep_for_notebooks():
    result = workbench.sweep(BASE, grid={"lora_r": [2, 4]}, name="api", progress=False, max_steps=1, store=RunStore())
    assert result.statuses() == {"r2": "finished", "r4": "finished"}
    table = result.table()
    assert list(table["group"]) == ["r2", "r4"] and "σ" in table.columns and "relation" in table.columns


@pytest.mark.slow
def test_parallel_sweep_trains_in_separate_processes():
    store = RunStore()
    create_sweep(BASE, grid=["lora_r=2,4"], name="par", store=store)
    rec = execute("par", store=store, parallel=2)
    assert all(SweepStore(store).status(m) == "finished" for m in rec.members)
    pids = {
        store._conn().__enter__().execute("SELECT pid FROM runs WHERE id=?", (r,)).fetchone()[0] for r in rec.run_ids
    }
    assert len(pids) == 2


# -- tuning mode -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["poisson", "geometric", "logarithmic", "truncated_negative_binomial"])
def test_the_number_of_runs_follows_the_distribution_and_its_mean(name):
    from randomgen import ChaCha

    tuning = tuning_of(name, 4.0)
    rng = np.random.Generator(ChaCha(key=12345, counter=0, rounds=20))
    draws = np.array([draw_runs(tuning, rng) for _ in range(4000)])
    assert draws.mean() == pytest.approx(4.0, rel=0.08)
    assert draws.min() >= (0 if name == "poisson" else 1)


def test_tuning_mode_draws_with_secret_randomness_and_records_the_session_in_the_ledger(monkeypatch):
    import workbench.sweeps as sweep_module
    from workbench.store.ledger import Ledger

    used = []
    real = sweep_module.secret_generator

    def spy():
        rng = real()
        used.append(type(rng.bit_generator).__name__)
        return rng

    monkeypatch.setattr(sweep_module, "secret_generator", spy)
    monkeypatch.setattr(sweep_module, "draw_runs", lambda tuning, rng: 2)
    store = RunStore()
    base = BASE.with_overrides({"neighboring": "add_remove", "public_dataset_size": 1000, "max_steps": 1})
    rec = create_sweep(base, grid=["noise_multiplier=1,2"], tuning="geometric", mean_runs=3, name="tune", store=store)
    assert used == ["ChaCha"]  # the count and the settings come from a ChaCha stream keyed by the OS
    assert rec.tuning == {"distribution": "geometric", "mean": 3.0, "shape": 1.0, "runs": 2}
    tags = [m.label.split("-")[0] for m in rec.members]  # random tags: a name must not give the draw's position
    assert len(set(tags)) == 2 and all(len(t) == 7 and t[0] == "t" for t in tags) and "t01" not in tags
    execute("tune", store=store)
    (dataset,) = Ledger(store).datasets()
    assert {e.tuning_session for e in dataset.entries} == {"tune"}
    cost = dataset.tuning_sessions()["tune"]
    assert cost.runs == 2 and cost.distribution == "geometric" and cost.repeat_and_select is not None
    # a tuning run that took a step is one of the draws: it is not trained again, even if it failed
    sweeps = SweepStore(store)
    with store._conn() as c:
        c.execute("UPDATE sweep_runs SET state='failed' WHERE sweep='tune' AND idx=0")
        c.execute(
            "UPDATE runs SET status='failed' WHERE id=?",
            (rec.members[0].run_id or sweeps.get("tune").members[0].run_id,),
        )
    assert pending(sweeps, sweeps.get("tune")) == []


def test_tuning_runs_train_on_one_split_and_draw_their_seeds_from_the_secret_stream(monkeypatch):
    """RepeatAndSelect assumes every draw trains on the same data: the split's salt is the session's (a seed of
    base + i salted each run's split differently: 1098, 1212, 1154, 1197, 1173 training examples for seeds 0-4 of
    the demo). Each run's own seed comes from the secret stream, so it does not number the runs."""
    import workbench.sweeps as sweep_module
    from workbench.engine.prepare import load_splits
    from workbench.sweeps import member_config

    monkeypatch.setattr(sweep_module, "draw_runs", lambda tuning, rng: 5)
    store = RunStore()
    base = BASE.with_overrides({"seed": 3})
    sessions = [
        create_sweep(base, grid=["lora_r=2,4"], tuning="geometric", mean_runs=3, name=name, store=store)
        for name in ("one", "two")
    ]
    configs = [member_config(rec, m) for rec in sessions for m in rec.members]

    def training_set(cfg):
        return tuple(sorted(json.dumps([r.messages, r.text, r.label]) for r in load_splits(cfg)[0].records))

    assert {training_set(c) for c in configs} == {training_set(base)}  # one training set: the base config's
    seeds = [[member_config(rec, m).seed for m in rec.members] for rec in sessions]
    assert all(len(set(s)) == 5 for s in seeds) and seeds[0] != seeds[1]
    assert all(s != list(range(3, 8)) for s in seeds)  # not base + i
    assert {c.split_salt for c in configs} == {3}


def test_tuning_settings_are_checked():
    with pytest.raises(SweepError, match="needs --mean-runs"):
        tuning_of("poisson", None)
    with pytest.raises(SweepError, match="at least 1"):
        tuning_of("geometric", 0.5)
    with pytest.raises(SweepError, match="must be one of"):
        tuning_of("uniform", 3)
    assert tuning_of("truncated_negative_binomial", 3) == Tuning("truncated_negative_binomial", 3.0, 0.5)
    with pytest.raises(SweepError, match="--seeds does not apply"):
        create_sweep(BASE, grid=["lora_r=4"], seeds=2, tuning="poisson", mean_runs=2, store=RunStore())


# -- command line ----------------------------------------------------------------------------------


def test_cli_bad_input_gets_one_message_and_exit_2_and_loses_no_run(tmp_path):
    store = RunStore()
    create_sweep(BASE, grid=["lora_r=4"], name="taken", store=store)
    store.create_run("20250101-000000-keep00", config={"model": "tiny"}, status="finished")
    cfg = tmp_path / "run.yaml"
    cfg.write_text("model: tiny\nmax_steps: 1\n")
    runner = CliRunner()
    cases = {
        "exists": (["sweep", "-c", str(cfg), "--grid", "lora_r=2", "--name", "taken"], "exists"),
        "resume": (["sweep", "resume", "nope"], "no sweep named 'nope'"),
        "unknown": (["sweep", "-c", str(cfg), "--grid", "bogus=1,2"], "unknown config key 'bogus'"),
        "empty": (["sweep", "-c", str(cfg)], "grid is empty"),
        "empty list": (["sweep", "-c", str(cfg), "--grid", "lora_r="], "has no values"),
        "type": (["sweep", "-c", str(cfg), "--grid", "learning_rate=fast"], "learning_rate='fast'"),
        "grid syntax": (["sweep", "-c", str(cfg), "--grid", "lora_r"], "is not key=v1,v2"),
        "tuning": (["sweep", "-c", str(cfg), "--grid", "lora_r=2", "--tuning", "poisson"], "needs --mean-runs"),
        "compare": (["compare", "nothing"], "neither a stored run nor a sweep"),
        "export": (["sweep", "export", "nope", str(tmp_path / "x")], "no sweep named"),
    }
    bad_file = tmp_path / "sweep.yaml"
    bad_file.write_text("lora_r: [2, 4]\nbogus_key: [1]\n")
    cases["sweep file"] = (["sweep", "-c", str(cfg), "--grid-file", str(bad_file)], "unknown config key 'bogus_key'")
    cases["no sweep file"] = (["sweep", "-c", str(cfg), "--grid-file", str(tmp_path / "none.yaml")], "does not exist")
    for name, (args, message) in cases.items():
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (name, result.output)
        assert message in result.output and "Traceback" not in result.output, (name, result.output)
        assert result.output.count("error:") == 1, (name, result.output)
    assert [r.id for r in store.list()] == ["20250101-000000-keep00"]
    assert [r.name for r in SweepStore(store).list()] == ["taken"]


def test_cli_runs_lists_and_resumes_a_sweep(tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("\n".join(f"{k}: {v}" for k, v in {**TINY, "max_steps": 1, "noise_multiplier": 1.0}.items()) + "\n")
    runner = CliRunner()
    dry = runner.invoke(app, ["sweep", "-c", str(cfg), "--grid", "lora_r=2,4", "--seeds", "2", "--dry-run"])
    assert dry.exit_code == 0 and dry.output.split() == ["r2-s0", "r2-s1", "r4-s0", "r4-s1"]
    sweep_file = tmp_path / "sweep.yaml"
    sweep_file.write_text("lora_r: [2, 4]\nlora_alpha: [8, 16]\n")
    dry = runner.invoke(app, ["sweep", "-c", str(cfg), "--grid-file", str(sweep_file), "--dry-run"])
    assert dry.exit_code == 0 and dry.output.split() == ["r2-alpha8", "r2-alpha16", "r4-alpha8", "r4-alpha16"], (
        dry.output
    )
    assert SweepStore(RunStore()).list() == []  # a dry run stores nothing
    result = runner.invoke(app, ["sweep", "-c", str(cfg), "--grid", "lora_r=2,4", "--name", "cli", "--json"])
    assert result.exit_code == 0, result.output
    assert "sweep cli [2/2] r4: finished" in result.output
    listed = runner.invoke(app, ["sweep", "list"])
    assert "cli" in listed.output and "lora_r" in listed.output
    resumed = runner.invoke(app, ["sweep", "resume", "cli"])
    assert resumed.exit_code == 0 and "2 of 2 runs done, 0 to train" in resumed.output
    shown = json.loads(runner.invoke(app, ["sweep", "show", "cli", "--json"]).output)
    assert [m["status"] for m in shown["members"]] == ["finished", "finished"]
