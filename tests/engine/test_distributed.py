"""Data-parallel DP-SGD on torch.distributed (engine/distributed.py; the processes: running/launch.py), with 2 gloo
processes on the CPU:
the union of the ranks' Poisson samples is a Poisson sample of rate q, the noise is added once (std sigma C,
not sqrt(2) sigma C nor sigma C / sqrt(2)), a 2-process seeded run equals the 1-process run (the oracle) with
the same epsilon and report, and a dead or hung rank fails the run within a bounded time, leaving nothing."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from factories import TINY_RUN
from scipy import stats

SIGMA, C = 1.3, 0.7
TIMEOUT = 20  # seconds: the collectives' timeout in the hang test
FAST = dict(TINY_RUN, generate_max_new_tokens=4, eval_max_examples=16)


def _cli(*args: str, **kw) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.update(kw.pop("env", {}))
    return subprocess.Popen(
        [sys.executable, "-m", "workbench", "train", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        **kw,
    )


def _sets(**values) -> list[str]:
    return [x for k, v in values.items() for x in ("--set", f"{k}={'null' if v is None else v}")]


# -- shards and sampling (no processes) -----------------------------------------------------------------


def test_shards_partition_the_units_and_removing_one_moves_no_other():
    from workbench.engine.distributed import shard_of

    ids = [f"example:{i}" for i in range(2000)]
    ranks = [shard_of(x, 2, seed=0) for x in ids]
    assert set(ranks) == {0, 1} and 800 < ranks.count(0) < 1200  # balanced in expectation
    assert [shard_of(x, 2, seed=0) for x in ids[:500] + ids[501:]] == ranks[:500] + ranks[501:]
    assert ranks != [shard_of(x, 2, seed=1) for x in ids]  # keyed by the (public) seed


def test_poisson_inclusion_frequency_per_unit_is_q_across_ranks():
    """Each rank samples its own shard with its own stream (derived from the run key); the union includes
    every unit with frequency q (jax_privacy's habit: within 0.003 of q overall), and no unit twice."""
    from workbench.engine.distributed import ShardSampler, shard_of
    from workbench.engine.randomness import RunRandomness, stream

    n, q, steps, world = 300, 0.1, 3000, 2
    run = RunRandomness.secret()
    owners = np.array([shard_of(f"u{i}", world, seed=0) for i in range(n)])
    keys = [run.rank_sampling_key(r, world) for r in range(world)]
    assert len(set(keys)) == world and run.key not in keys  # no shared stream; the run key is never sent
    samplers = [
        ShardSampler(np.flatnonzero(owners == r), population=n, sample_rate=q, rng=stream(keys[r]), shared=False)
        for r in range(world)
    ]
    counts = np.zeros(n)
    for _ in range(steps):
        drawn = [s.draw() for s in samplers]
        union = np.concatenate(drawn)
        assert len(np.unique(union)) == len(union)
        assert all((owners[d] == r).all() for r, d in enumerate(drawn))
        counts[union] += 1
    freq = counts / steps
    assert abs(freq.mean() - q) < 0.003
    assert np.abs(freq - q).max() < 5.5 * np.sqrt(q * (1 - q) / steps)
    # every unit's count is Binomial(steps, q): a chi-square-like check over the 300 units
    assert stats.kstest((counts - steps * q) / np.sqrt(steps * q * (1 - q)), "norm").pvalue > 1e-4


def test_seeded_mode_union_is_the_one_process_sample():
    from workbench.engine.distributed import ShardSampler, shard_of
    from workbench.engine.randomness import RunRandomness
    from workbench.engine.sampling import poisson_sample

    n, q = 500, 0.2
    owners = np.array([shard_of(f"u{i}", 2, seed=0) for i in range(n)])
    ranks = [
        ShardSampler(
            np.flatnonzero(owners == r),
            population=n,
            sample_rate=q,
            rng=RunRandomness.seeded(5).sampling_rng(),
            shared=True,
        )
        for r in range(2)
    ]
    one = RunRandomness.seeded(5).sampling_rng()
    for _ in range(5):
        assert np.array_equal(np.sort(np.concatenate([s.draw() for s in ranks])), poisson_sample(n, q, one))


# -- the noise, in 2 gloo processes ---------------------------------------------------------------------


def _noise_rank(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORKBENCH_DIST_TIMEOUT="60")
    torch.set_num_threads(1)
    from workbench.config import RunConfig
    from workbench.engine import distributed
    from workbench.engine.dp_step import DPGradient
    from workbench.engine.randomness import RunRandomness

    ctx = distributed.init(RunConfig(model="tiny", device="cpu"), rank, 2, rank)
    weight = torch.nn.Parameter(torch.zeros(40_000))
    noise = RunRandomness.secret().noise() if rank == 0 else distributed.WorkerRandomness().noise()  # raises if drawn
    dp = DPGradient(
        {"layers.0.q_proj.lora_A": [("weight", weight)]},
        max_grad_norm=C,
        noise_multiplier=SIGMA,
        noise=noise,
        collective=ctx,
    )
    dp.start()  # zero clipped sums on both ranks: what is released is the noise alone
    dp.finish(expected_batch_size=1.0)
    torch.save(weight.grad, Path(out) / f"rank{rank}.pt")
    distributed.shutdown()


def test_the_noise_is_added_once_with_std_sigma_c(tmp_path):
    from workbench.running.launch import free_port

    port = free_port()
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_noise_rank, args=(r, port, str(tmp_path))) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0, 0]
    g0, g1 = (torch.load(tmp_path / f"rank{r}.pt") for r in range(2))
    assert torch.equal(g0, g1), "every rank must apply rank 0's noisy sum, bit for bit"
    x = g0.double().numpy()
    assert stats.kstest(x, "norm", args=(0, SIGMA * C)).pvalue > 1e-4
    assert stats.kstest(x, "norm", args=(0, np.sqrt(2) * SIGMA * C)).pvalue < 1e-8  # each rank adding noise
    assert stats.kstest(x, "norm", args=(0, SIGMA * C / np.sqrt(2))).pvalue < 1e-8  # noise divided over ranks


# -- whole runs through the command line ----------------------------------------------------------------


ORACLE = dict(FAST, max_steps=3, noise_multiplier=1.0, noise_seed=11, learning_rate=1e-2)


def test_two_processes_match_one_in_seeded_mode_with_the_same_epsilon_and_report():
    from workbench import train

    proc = _cli(*_sets(**ORACLE), "--nproc", "2", "--json")
    one = train(**ORACLE)  # while the 2 ranks start up
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err.decode()[-2000:]
    _assert_same_run(one, json.loads(out))


def _assert_same_run(one: dict, two: dict) -> None:
    """The 2-process run ``two`` equals the 1-process run ``one``: epsilon, report, adapter, step events."""
    from safetensors.torch import load_file

    from workbench.store.runs import RunStore

    assert one["status"] == two["status"] == "finished", (one.get("reason"), two.get("reason"))
    for key in ("epsilon", "delta", "sample_rate", "noise_multiplier", "steps", "dataset_size", "neighboring"):
        assert one[key] == two[key], key
    ta, tb = (load_file(str(Path(s["adapter_dir"]) / "adapter_model.safetensors")) for s in (one, two))
    assert set(ta) == set(tb)
    for k in ta:
        torch.testing.assert_close(ta[k], tb[k], rtol=1e-5, atol=1e-6)
    assert any(t.abs().sum() > 0 for k, t in tb.items() if "lora_B" in k)
    ra, rb = (json.loads((Path(s["adapter_dir"]) / "privacy_report.json").read_text()) for s in (one, two))
    for key in ("epsilon", "delta", "noise_multiplier", "sample_rate", "steps", "sampling", "privacy_unit"):
        assert ra.get(key) == rb.get(key), key
    store = RunStore()
    assert store.get(two["run_id"]).config["nproc"] == 2
    steps = [
        [(e.batch_size, sum(e.grad_norm_hist)) for _, e in store.events(s["run_id"]) if e.kind == "step"]
        for s in (one, two)
    ]
    assert steps[0] == steps[1]  # rank 0's events hold the global batch and every rank's norms


def _rank_pids(launcher: int) -> dict[int, int]:
    """{rank: pid} of the launcher's children, read from /proc (RANK in their environment)."""
    out = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            if int((d / "stat").read_text().rsplit(")", 1)[1].split()[1]) != launcher:
                continue
            env = dict(x.split("=", 1) for x in (d / "environ").read_bytes().decode().split("\0") if "=" in x)
        except (OSError, ValueError, IndexError):
            continue
        if "RANK" in env:  # not multiprocessing's resource tracker, say
            out[int(env["RANK"])] = int(d.name)
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.parametrize("fault", ["kill", pytest.param("hang", marks=pytest.mark.slow)])
def test_a_dead_or_hung_rank_fails_the_run_in_bounded_time_and_leaves_no_process(fault):
    """kill: rank 1's sockets close and rank 0 fails at its next collective at once; hang (SIGSTOP): rank 0 fails
    when the collective times out (WORKBENCH_DIST_TIMEOUT, short here: rank 0's start-up work must fit in it too)."""
    from workbench.store.runs import RunStore

    settings = dict(FAST, max_steps=60, noise_multiplier=1.0, target_epsilon=None, eval_every=1000)
    env = {"WORKBENCH_DIST_TIMEOUT": str(TIMEOUT)} if fault == "hang" else {}
    proc = _cli(*_sets(**settings), "--nproc", "2", "--json", env=env)
    store, deadline = RunStore(), time.monotonic() + 120
    run_id = None
    while time.monotonic() < deadline and proc.poll() is None:  # wait for rank 0's second step event
        runs = store.list() if run_id is None else []
        run_id = run_id or (runs[0].id if runs else None)
        if run_id and sum(e.kind == "step" for _, e in store.events(run_id)) >= 2:
            break
        time.sleep(0.3)
    assert run_id and proc.poll() is None, proc.communicate()[1].decode()[-2000:]
    ranks = _rank_pids(proc.pid)
    assert set(ranks) == {0, 1}
    t0 = time.monotonic()
    os.kill(ranks[1], signal.SIGKILL if fault == "kill" else signal.SIGSTOP)
    out, err = proc.communicate(timeout=60)
    took = time.monotonic() - t0
    assert proc.returncode == 2, err.decode()[-2000:]
    assert took < (TIMEOUT if fault == "hang" else 0) + 15, took
    rec = store.get(run_id)
    assert rec.status == "failed" and "rank 0 of 2 lost the other processes" in rec.reason, rec.reason
    assert json.loads(out)["status"] == "failed"
    assert not any(_alive(p) for p in ranks.values()), "a rank was left running"


# -- bad input ------------------------------------------------------------------------------------------


def test_bad_nproc_gets_one_message_and_exit_2(monkeypatch):
    from typer.testing import CliRunner

    from workbench import train
    from workbench.cli import app
    from workbench.config import ConfigError, RunConfig
    from workbench.engine import distributed

    result = CliRunner().invoke(app, ["train", "--set", "model=tiny", "--nproc", "0"])
    assert result.exit_code == 2 and "--nproc must be at least 1" in result.output
    assert "Traceback" not in result.output
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(distributed.DistributedSetupError, match="needs 4 GPUs .* this machine has 1"):
        distributed.check_launch(RunConfig(model="tiny", device="cuda"), 4)
    monkeypatch.setattr(torch.distributed, "is_nccl_available", lambda: False)
    with pytest.raises(distributed.DistributedSetupError, match="NCCL backend is not available"):
        distributed.check_launch(RunConfig(model="tiny", device="cuda"), 1)
    summary = train(model="tiny", nproc=2, device="cuda", max_steps=1)  # a Session hosting the ranks checks first
    assert summary["status"] == "failed" and "needs 2 GPUs" in summary["reason"], summary["reason"]
    monkeypatch.undo()
    with pytest.raises(ConfigError, match="workbench train --nproc 2"):  # a bare Trainer still runs alone
        distributed.current(RunConfig(model="tiny", nproc=2))


# -- a group hosted by a Session (the app, the notebooks: this process is rank 0) ------------------------


def _children() -> dict[int, int]:
    return _rank_pids(os.getpid())


def _session(**settings):
    from workbench.config import RunConfig
    from workbench.session import Session

    return Session(RunConfig().with_overrides({**settings, "nproc": 2}))


def _wait_steps(session, n: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while sum(e.kind == "step" for e in list(session.events)) < n and not session.done:
        assert time.monotonic() < deadline, "no step events"
        time.sleep(0.2)
    assert not session.done, session.summary


def test_a_session_hosts_two_processes_and_matches_one_in_seeded_mode():
    from workbench import train
    from workbench.engine import distributed
    from workbench.running import launch

    session = _session(**ORACLE)
    two = session.run()  # in this thread: this process is rank 0, rank 1 a child process
    assert not _children() and not torch.distributed.is_initialized()
    assert distributed._CURRENT is None and not launch._HOST_LOCK.locked()
    assert (session.store.run_dir(session.run_id) / "rank-1.log").exists()
    _assert_same_run(train(**ORACLE), two)


def test_stopping_a_hosted_session_stores_it_stopped_and_leaves_no_process():
    session = _session(**FAST, max_steps=60, noise_multiplier=1.0, target_epsilon=None, eval_every=1000)
    session.start()
    _wait_steps(session, 2)
    ranks = _children()
    assert set(ranks) == {1}
    session.stop()
    summary = session.wait(60)
    assert session.done and summary["status"] == "stopped", summary
    assert session.store.get(session.run_id).status == "stopped"
    assert 2 <= summary["steps"] < 60 and summary["adapter_dir"]
    assert not _children() and not Path(f"/proc/{ranks[1]}").exists(), "rank 1 was left behind (or a zombie)"


def test_killing_a_hosted_rank_fails_the_run_with_its_log_and_no_hang(monkeypatch):
    monkeypatch.setenv("WORKBENCH_DIST_TIMEOUT", "30")
    session = _session(**FAST, max_steps=60, noise_multiplier=1.0, target_epsilon=None, eval_every=1000)
    session.start()
    _wait_steps(session, 2)
    pid = _children()[1]
    t0 = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    summary = session.wait(60)
    assert session.done and time.monotonic() - t0 < 15
    reason = session.store.get(session.run_id).reason
    assert summary["status"] == "failed" and "rank 0 of 2 lost the other processes" in reason, reason
    assert "rank 1 was killed by SIGKILL" in reason and "rank-1.log" in reason, reason
    assert not _children() and not Path(f"/proc/{pid}").exists()


def test_a_rank_that_cannot_start_fails_the_hosted_run_at_once(monkeypatch):
    from workbench.running import launch

    monkeypatch.setattr(launch.sys, "executable", "/bin/false")  # rank 1 exits 1 before saying "up"
    t0 = time.monotonic()
    summary = _session(model="tiny", max_steps=1).run()
    assert summary["status"] == "failed" and time.monotonic() - t0 < 10
    assert "rank 1 of 2 exited with code 1 before the process group formed" in summary["reason"], summary["reason"]
    assert "rank-1.log" in summary["reason"] and not _children()


def test_one_hosted_group_per_process_and_a_one_process_session_beside_it(monkeypatch):
    from workbench.config import RunConfig
    from workbench.engine import distributed
    from workbench.engine.collective import LocalCollective
    from workbench.running import launch

    assert launch.hosts(RunConfig(nproc=2)) and not launch.hosts(RunConfig(nproc=1))
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert not launch.hosts(RunConfig(nproc=2))  # a rank already (torchrun): the launcher's group, not a host
    monkeypatch.undo()
    with launch._HOST_LOCK:
        launch._HOST_RUN[:] = ["run-a"]
        summary = _session(model="tiny", max_steps=1).run()
        launch._HOST_RUN.clear()
    assert summary["status"] == "failed" and "wait for run run-a to end" in summary["reason"], summary["reason"]
    assert isinstance(distributed.current(RunConfig(nproc=1)), LocalCollective)
