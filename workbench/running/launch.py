"""Launching and reaping the processes of a data-parallel run; the run itself is the engine's (engine/distributed.py
says why R processes give exactly the one-process mechanism, engine/worker.py trains a rank > 0).

Two ways in:
- ``enter``: what ``workbench train`` does about processes. With ``--nproc N`` and no torchrun environment it is the
  launcher: it starts N ranks of ``python -m workbench train`` (torchrun's environment variables on a free local
  port), waits for them and leaves none behind (``launch``); as one rank of several it joins the group, and a rank
  > 0 trains (engine/worker.py) and ends the process with its exit code.
- ``hosted``: a Session whose config has nproc > 1 in a process that is no rank yet (the app, a notebook) hosts the
  group itself: this process joins as rank 0 on its session thread, ranks 1..N-1 run as ``python -m workbench
  train`` children (each one's output in ``rank-r.log`` in the run folder), and every child is reaped when the run
  ends. torch.distributed's default group is process-wide, so one hosted group at a time.

Failures: a rank that dies or hangs fails the run with a ``DistributedError`` (the collectives' timeout,
WORKBENCH_DIST_TIMEOUT); rank 0's Session stores it as ``failed``, and every process started here is reaped:
terminated, then killed, and waited for (no zombies). A child is also killed when the thread that started it ends
without reaping it (``prctl(PR_SET_PDEATHSIG)`` through ctypes, on Linux).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Iterator, Sequence

from workbench.config import RunConfig

# engine.distributed before anything imports torch: it quiets c10d's C++ log, read when torch is first imported
from workbench.engine.distributed import (
    HOSTED_ENV,
    READY_KEY,
    Distributed,
    DistributedError,
    DistributedSetupError,
    check_launch,
    from_env,
    init,
    join,
    joined,
    shutdown,
    tcp_store,
    timeout_s,
)
from workbench.engine.worker import run_worker

__all__ = ["enter", "free_port", "hosted", "hosts", "launch", "shutdown"]

GRACE_S = 5.0  # the launcher waits this long for the other ranks once rank 0 has ended, then kills them


# -- workbench train ------------------------------------------------------------------------------------


def enter(config: RunConfig, *, nproc: int | None, extra_args: Sequence[str] = ()) -> tuple[RunConfig, int | None]:
    """What ``workbench train`` does about processes. Returns (config, None) for this process to run the
    Session (one process, or rank 0), or (config, exit code) when the launcher's work is done; a rank > 0
    trains and ends the process with its exit code. DistributedSetupError for bad input."""
    if nproc is not None:
        if nproc < 1:
            raise DistributedSetupError(f"--nproc must be at least 1 (the number of processes). Found {nproc}.")
        config = config.with_overrides({"nproc": nproc})
    env = from_env()
    if env is None:
        if config.nproc == 1:
            return config, None
        check_launch(config, config.nproc)
        return config, launch(config, extra_args=extra_args)
    rank, world, local = env
    config = config.with_overrides({"nproc": world})  # torchrun's world size is the run's
    ctx = init(config, rank, world, local)
    if ctx.is_main:
        return config, None
    code = run_worker(config, ctx)
    # A worker rank ends here, without the interpreter's teardown: destroying gloo's threads from C++ static
    # destructors at exit once aborted a rank that had finished cleanly ("terminate called without an active
    # exception", exit code 134), which the launcher then reported as a failed run.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


# -- the launcher (--nproc N on one machine) -------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_PRCTL: list = []  # libc's prctl, looked up in the parent (``_load_prctl``): no dlopen between fork and exec


def _load_prctl() -> None:
    if not _PRCTL and sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):
            _PRCTL.append(ctypes.CDLL("libc.so.6", use_errno=True).prctl)


def _die_with_parent() -> None:  # runs in the child before exec: SIGKILL when the launcher dies
    # PR_SET_PDEATHSIG fires when the *thread* that started the child ends, not the process: for ``launch`` that
    # is the main thread; for ``hosted`` it is the Session's thread, which reaps its ranks before it ends anyway,
    # so the signal only matters when the whole app process dies (a crash, SIGKILL).
    with contextlib.suppress(Exception):
        (_PRCTL[0] if _PRCTL else ctypes.CDLL("libc.so.6", use_errno=True).prctl)(1, signal.SIGKILL)


def launch(config: RunConfig, *, extra_args: Sequence[str] = ()) -> int:
    """Start ``config.nproc`` ranks of ``python -m workbench train`` (torchrun's environment variables on a free
    local port), wait for them, and leave none behind. Rank 0 prints and stores; Ctrl-C asks it to stop.
    Returns rank 0's exit code, or 1 when only another rank failed."""
    n = config.nproc
    fd, path = tempfile.mkstemp(prefix="workbench-run-", suffix=".json")
    with os.fdopen(fd, "w") as fh:
        fh.write(json.dumps(config.to_dict()))
    port = free_port()
    threads = max(1, (os.cpu_count() or 1) // n)
    procs: list[subprocess.Popen] = []
    _load_prctl()
    try:
        for rank in range(n):
            env = {
                **os.environ,
                "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": str(port),
                "RANK": str(rank),
                "WORLD_SIZE": str(n),
                "LOCAL_RANK": str(rank),
                "LOCAL_WORLD_SIZE": str(n),
            }
            env.setdefault("OMP_NUM_THREADS", str(threads))  # n ranks share the cores
            cmd = [sys.executable, "-m", "workbench", "train", "--config", path, *extra_args]
            procs.append(
                subprocess.Popen(
                    cmd,
                    env=env,
                    start_new_session=True,  # Ctrl-C reaches the launcher only; it asks rank 0 to stop
                    preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
                    stdout=None if rank == 0 else subprocess.DEVNULL,
                )
            )
        return _supervise(procs)
    finally:
        _reap(procs, grace=0.0)
        with contextlib.suppress(OSError):
            os.unlink(path)


def _supervise(procs: list[subprocess.Popen]) -> int:
    interrupted = 0
    ended_at: float | None = None
    while True:
        try:
            codes = [p.poll() for p in procs]
            if all(c is not None for c in codes):
                break
            if ended_at is None and (codes[0] is not None or any(c not in (None, 0) for c in codes)):
                ended_at = time.monotonic()  # rank 0 ended, or a rank failed: the rest follow within the timeout
            if ended_at is not None:
                # rank 0 must have time to notice (its next collective fails) and store the run as failed
                limit = GRACE_S if codes[0] is not None else timeout_s() + GRACE_S
                if time.monotonic() - ended_at > limit:
                    break
            time.sleep(0.1)
        except KeyboardInterrupt:
            interrupted += 1
            if interrupted == 1 and procs[0].poll() is None:
                print("stopping after the current step (Ctrl-C again to kill every rank)...", file=sys.stderr)
                procs[0].send_signal(signal.SIGINT)
            else:
                break
    _reap(procs, grace=2.0)
    first = procs[0].returncode
    if first is not None and first > 0:
        return first
    return 0 if all(p.returncode == 0 for p in procs) else 1


def _reap(procs: list[subprocess.Popen], *, grace: float) -> None:
    """Terminate what still runs, then kill it; wait for every child (no zombies)."""
    for p in procs:
        if p.poll() is None:
            with contextlib.suppress(OSError):
                p.terminate()
    deadline = time.monotonic() + grace
    for p in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        if p.poll() is None:
            with contextlib.suppress(OSError):
                p.kill()
            p.wait()


# -- a group hosted by a Session (the app, a notebook) ------------------------------------------------------

_HOST_LOCK = threading.Lock()  # torch.distributed's default group is process-wide: one hosted group at a time
_HOST_RUN: list[str] = []  # the run that holds it, for the message


def hosts(config: RunConfig) -> bool:
    """True when a Session in this process must host ``config``'s group itself: nproc > 1 and this process is
    no rank yet (not started by ``workbench train --nproc`` or torchrun)."""
    return config.nproc > 1 and not joined() and from_env() is None


@contextlib.contextmanager
def hosted(config: RunConfig, run_dir: Path, *, run_id: str = "") -> Iterator[Distributed]:
    """Host ``config.nproc`` ranks from this process: ranks 1..N-1 as ``python -m workbench train`` children
    (torchrun's variables on a free local port, their output in ``run_dir/rank-r.log``), this process as rank 0
    on the calling thread. Yields rank 0's ``Distributed``; on leaving (end, stop or error) every child is reaped
    and the group destroyed. ``os.environ`` and the engine's current group are left alone: a one-process Session
    running beside this one still trains alone (``distributed.current`` gives it a ``LocalCollective``)."""
    n = config.nproc
    check_launch(config, n)
    if not _HOST_LOCK.acquire(blocking=False):
        holder = _HOST_RUN[0] if _HOST_RUN else "?"
        raise DistributedSetupError(
            f"another multi-process run is using this process's torch.distributed group; wait for run {holder} "
            "to end (or set nproc=1)."
        )
    _HOST_RUN[:] = [run_id or Path(run_dir).name]
    procs: list[subprocess.Popen] = []
    logs: list[Path] = []
    path, store, started, joined, clean = None, None, False, False, False
    try:
        import torch.distributed as tdist

        if tdist.is_initialized():
            raise DistributedSetupError(
                "this process already belongs to a torch.distributed group, so it cannot host another: set nproc=1 "
                "or run `workbench train --nproc N` in a terminal."
            )
        limit = timeout_s()
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        # Rank 0's store, on a free port: the ranks rendezvous through it and say "up" in it (READY_KEY), so a rank
        # that dies while starting fails the run at once instead of after the rendezvous' timeout.
        store = tcp_store("127.0.0.1", 0, n, limit=limit, master=True)
        fd, path = tempfile.mkstemp(prefix="workbench-run-", suffix=".json")
        with os.fdopen(fd, "w") as fh:
            fh.write(json.dumps(config.to_dict()))
        threads = max(1, (os.cpu_count() or 1) // n)
        _load_prctl()
        for rank in range(1, n):
            env = {
                **os.environ,
                "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": str(store.port),
                "RANK": str(rank),
                "WORLD_SIZE": str(n),
                "LOCAL_RANK": str(rank),
                "LOCAL_WORLD_SIZE": str(n),
                HOSTED_ENV: "1",
            }
            env.setdefault("OMP_NUM_THREADS", str(threads))  # the ranks share the cores (rank 0 keeps the app's)
            logs.append(run_dir / f"rank-{rank}.log")
            with open(logs[-1], "wb") as log:
                procs.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "workbench", "train", "--config", path],
                        env=env,
                        stdin=subprocess.DEVNULL,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,  # a Ctrl-C in the app's terminal reaches the app alone
                        preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
                    )
                )
        _await_ranks(store, procs, logs, limit)  # its errors name the rank and its log already
        started = True
        # Every rank said "up" and is joining now. One that dies in the instant between would still leave rank 0
        # waiting in init_process_group until the timeout (WORKBENCH_DIST_TIMEOUT), then failing with its message.
        dist = join(config, 0, n, 0, store=store)
        joined = True
        yield dist
        clean = True
    except (DistributedError, DistributedSetupError) as err:
        if not started:
            raise
        raise type(err)(f"{err}{_ranks_note(procs, logs)}") from None
    finally:
        if clean:  # the ranks end by themselves after the last step (or the stop): let them exit
            deadline = time.monotonic() + GRACE_S
            for p in procs:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(timeout=max(0.0, deadline - time.monotonic()))
        _reap(procs, grace=2.0)
        if joined:
            with contextlib.suppress(Exception):
                import torch.distributed as tdist

                tdist.destroy_process_group()
        del store
        if path is not None:
            with contextlib.suppress(OSError):
                os.unlink(path)
        _HOST_RUN.clear()
        _HOST_LOCK.release()


def _await_ranks(store, procs: list[subprocess.Popen], logs: list[Path], limit: float) -> None:
    """Wait until every child rank said "up" in the store; a rank that exits first, or the timeout, fails."""
    n = len(procs) + 1
    deadline = time.monotonic() + limit
    while (ready := store.add(READY_KEY, 0)) < len(procs):
        for rank, (p, log) in enumerate(zip(procs, logs), start=1):
            if p.poll() is not None:
                raise DistributedError(
                    f"rank {rank} of {n} {_exit_text(p.returncode)} before the process group formed "
                    f"({_last_line(log)}); its log: {log}"
                )
        if time.monotonic() > deadline:
            raise DistributedError(
                f"only {ready} of the {len(procs)} other ranks started within {limit:g} s (WORKBENCH_DIST_TIMEOUT); "
                f"their logs: {', '.join(map(str, logs))}"
            )
        time.sleep(0.05)


def _ranks_note(procs: list[subprocess.Popen], logs: list[Path]) -> str:
    """What became of each child rank, with its log, to append to a failure's message."""
    if not procs:
        return ""
    deadline = time.monotonic() + 1.0  # a rank that just died: give the kernel a moment to report its end
    while time.monotonic() < deadline and all(p.poll() is None for p in procs):
        time.sleep(0.05)
    notes = []
    for rank, (p, log) in enumerate(zip(procs, logs), start=1):
        state = "is still running" if p.poll() is None else _exit_text(p.returncode)
        notes.append(f"rank {rank} {state}; its log: {log}")
    return ". " + "; ".join(notes)


def _exit_text(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-code).name}"
    return f"exited with code {code}"


def _last_line(log: Path) -> str:
    with contextlib.suppress(OSError):
        lines = [x.strip() for x in log.read_text(errors="replace").splitlines() if x.strip()]
        if lines:
            return lines[-1][:300]
    return "no output"
