"""Runs that train in worker processes, for the workshop's queue (issue 31).

In one process, a training run shares Python's interpreter lock with everything else the server does. A tiny
model's step is mostly Python between short torch calls, and each call gives the lock away: when 20 participants
log in, open their pages and press Start within two seconds, the server's request threads took the lock between
every pair of torch calls, and the run training then ran at 0.11 to 0.42 of its speed alone
(``benchmarks/workshop.py``). Here each of the queue's slots has a worker process of its own, started once with the
server (``spawn``: never a fork of the server with its threads; torch, transformers and the engine imported once,
so a run starts in the time a run in process takes). The server only relays.

- ``TrainingPool(home, workers=slots)`` is called like ``Session`` (``session_factory`` of running/queue.py) and
  makes a ``ProcessSession``: a ``Session`` whose run is registered in the server (stored at once, status queued,
  its secret key written beside it, mode 0600, as every run's is) and whose training, once the queue opens its
  gate, happens in a worker: the worker opens the same run (``Session(run_id=...)``: the key is read from the run's
  folder, never sent), stores every event itself, and sends each one back (``Event.to_dict``); the server hands it
  to the session's subscribers (the queue, the app) without storing it twice.
- **Stop** is a message to the worker, which sets the run's stop flag: the same Stop as in process (within one
  layer of the forward pass). A run stopped while it waits never reaches a worker.
- **A worker that dies** (killed, out of memory) ends its run 'failed' with a message that says so, stored by the
  server; the next run gets a fresh worker. Nothing stays 'running'.
- **Threads.** The workshop gives each worker the cores less one, divided among the slots (``worker_threads``):
  the server keeps a core for the room. Each worker sets its own torch threads.

Python's own ``multiprocessing`` does the process work; nothing here is a privacy mechanism. The randomness a run
rests on is drawn in the server from the operating system's entropy (``RunRandomness.secret``) and stays in the
run's key file, as for every run.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import queue as queue_module
import threading
from pathlib import Path
from typing import Any

from workbench.config import RunConfig
from workbench.events import Event, RunEnded, event_from_dict
from workbench.session import Session
from workbench.store.runs import ACTIVE, RunStore

__all__ = ["TrainingPool", "ProcessSession"]

log = logging.getLogger(__name__)

WARM_MODULE = "workbench.engine.trainer"  # what a worker imports before its first run
WORKER_NAME = "workbench-training"  # the workers' process name (the plan pool tells its own children by it)
SERVER_NICE = 10  # how much lower the server's own CPU priority goes once its workers run (``yield_to_training``)


def worker_threads(slots: int, cores: int | None = None) -> int:
    """Torch threads for each of ``slots`` workers: the cores less one, which the server keeps for the room (logins,
    pages, streams, plans), divided among the slots; at least one. A run whose threads share their cores with the
    server's work loses more than that work's share: every parallel section waits for its slowest thread (a 2-thread
    tiny run kept 0.27 of its speed beside one busy process of the same priority, a 1-thread run 0.85-0.95, and ran
    as fast alone)."""
    cores = cores or os.cpu_count() or 1
    return max(1, (cores - 1) // max(1, slots))


# -- the worker process ----------------------------------------------------------------------------------------


def _worker_main(inbox, outbox, home: str, threads: int | None) -> None:
    """A worker: trains the runs it is sent, one after another, sending each event back."""
    import importlib

    if threads:
        import torch

        torch.set_num_threads(threads)
    importlib.import_module(WARM_MODULE)
    store = RunStore(Path(home))
    jobs: queue_module.Queue = queue_module.Queue()
    current: dict[str, Session] = {}
    stopped: set[str] = set()  # stop messages for runs not begun yet
    guard = threading.Lock()
    outgoing: queue_module.SimpleQueue = queue_module.SimpleQueue()

    def send(message) -> None:
        """Never blocks the training: a thread of its own writes to the pipe, however slowly the server reads it
        (the server's relay waited behind the room's logins, and a full pipe stalled the run)."""
        outgoing.put(message)

    def write() -> None:
        while (message := outgoing.get()) is not None:
            try:
                outbox.send(message)
            except (OSError, ValueError):  # the server is gone
                return

    writer = threading.Thread(target=write, name="workbench-pool-outbox", daemon=True)
    writer.start()

    def read() -> None:
        while True:
            try:
                message = inbox.recv()
            except (EOFError, OSError):  # the server is gone: the run under way stops (stored 'stopped'), then exit
                jobs.put(None)
                with guard:
                    running = list(current.values())
                for session in running:
                    session.stop()
                return
            if message[0] == "train":
                jobs.put(message)
            elif message[0] == "stop":
                with guard:
                    session = current.get(message[1])
                    if session is None:
                        stopped.add(message[1])
                if session is not None:
                    session.stop()
            elif message[0] == "close":
                jobs.put(None)
                return

    threading.Thread(target=read, name="workbench-pool-inbox", daemon=True).start()
    send(("ready", os.getpid()))
    while (message := jobs.get()) is not None:
        _, run_id, config, owner, name = message
        try:
            session = Session(RunConfig.from_dict(config), store=store, owner=owner, name=name, run_id=run_id)
        except Exception as err:  # noqa: BLE001 - the key unreadable, the config refused: the run ends failed
            send(("failed", run_id, f"the training process could not open run {run_id}: {err}"))
            continue
        session.subscribe(lambda event: send(("event", event.to_dict())))
        with guard:
            current[run_id] = session
            if run_id in stopped:
                session.stop()
        try:
            session.run()
        finally:
            with guard:
                current.pop(run_id, None)
                stopped.discard(run_id)
    outgoing.put(None)  # what is still to send goes before the worker ends
    writer.join(30)


# -- the server's side -----------------------------------------------------------------------------------------


class ProcessSession(Session):
    """A ``Session`` whose training happens in one of ``pool``'s workers (see the module docstring); the rest of
    its life (registered, queued behind its gate, stopped before it started) is the server's, as for any session."""

    def __init__(self, config: RunConfig, *, pool: "TrainingPool", **kwargs: Any) -> None:
        super().__init__(config, **kwargs)
        self._pool = pool
        self._ended = threading.Event()
        self._worker: _Worker | None = None

    def stop(self) -> None:
        super().stop()
        worker = self._worker
        if worker is not None:
            worker.send(("stop", self.run_id))

    def _train(self) -> None:
        """The gate is open: a worker trains the run; this thread waits until its end has been relayed."""
        if self._pool.closed:  # the server is closing: the run never reaches a worker
            self._end("stopped", "stopped before it started: the workshop server was closing", {})
            return
        worker = self._pool._assign(self)
        self._worker = worker
        worker.send(("train", self.run_id, self.config.to_dict(), self.owner, self.name))
        if self._stop.is_set():  # asked while the run was being handed over
            worker.send(("stop", self.run_id))
        self._ended.wait()

    def _relay(self, event: Event) -> None:
        """An event the worker stored: to this session's subscribers (not to the store again)."""
        if isinstance(event, RunEnded):
            self.summary = event.summary
            self.status = event.status
        self._notify(event)
        if isinstance(event, RunEnded):
            self._ended.set()

    def _lost(self, why: str) -> None:
        """The worker ended without the run's end: stored 'failed' here (or, if the worker had stored the end but
        not sent it, that end is relayed)."""
        if self._ended.is_set():
            return
        try:
            record = self.store.get(self.run_id)
        except Exception:  # noqa: BLE001 - deleted meanwhile
            record = None
        if record is not None and record.status not in ACTIVE:
            end = self.store.latest(self.run_id, "run_ended")
            if isinstance(end, RunEnded):
                self._relay(end)
                return
        self._end("failed", why, {"run_id": self.run_id})
        self._ended.set()


class _Worker:
    """One worker process and the thread that reads what it sends."""

    def __init__(self, pool: "TrainingPool") -> None:
        ctx = multiprocessing.get_context("spawn")
        self.pool = pool
        inbox_read, self._inbox = ctx.Pipe(duplex=False)
        self._outbox, outbox_write = ctx.Pipe(duplex=False)
        self.process = ctx.Process(
            target=_worker_main,
            args=(inbox_read, outbox_write, str(pool.home), pool.threads),
            name=WORKER_NAME,
            daemon=True,
        )
        self.process.start()
        inbox_read.close()
        outbox_write.close()
        self.sessions: dict[str, ProcessSession] = {}
        self.ready = threading.Event()
        self._send_lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, name="workbench-pool-relay", daemon=True)
        self._reader.start()

    @property
    def alive(self) -> bool:
        return self.process.is_alive()

    def send(self, message) -> None:
        try:
            with self._send_lock:
                self._inbox.send(message)
        except (OSError, ValueError):  # the worker is gone: the reader ends its runs
            log.warning("training worker %s is gone; %s not delivered", self.process.pid, message[0])

    def _read(self) -> None:
        while True:
            try:
                message = self._outbox.recv()
            except (EOFError, OSError):
                break
            kind = message[0]
            if kind == "ready":
                self.ready.set()
            elif kind == "event":
                event = event_from_dict(message[1])
                session = self.sessions.get(event.run_id)
                if session is not None:
                    session._relay(event)
                    if isinstance(event, RunEnded):
                        self.sessions.pop(event.run_id, None)
            elif kind == "failed":
                session = self.sessions.pop(message[1], None)
                if session is not None:
                    session._lost(message[2])
        self.process.join(5)
        code = self.process.exitcode
        for session in list(self.sessions.values()):
            session._lost(
                f"the training process stopped unexpectedly (exit code {code}) while it trained this run; what it "
                "stored before is kept. Start the run again."
            )
        self.sessions.clear()


class TrainingPool:
    """The workers of the workshop's queue: ``workers`` processes (one a slot), started now, each training one run
    at a time. Call it like ``Session`` (the queue's ``session_factory``). ``threads``: torch threads a worker (None:
    torch's default)."""

    def __init__(self, home: str | Path, *, workers: int = 1, threads: int | None = None) -> None:
        self.home = Path(home)
        self.threads = threads
        self._lock = threading.Lock()
        self._closed = False
        self._workers = [_Worker(self) for _ in range(max(1, workers))]

    def __call__(self, config: RunConfig, **kwargs: Any) -> ProcessSession:
        if "store" not in kwargs:  # the queue passes its own; a new store object opens the database again
            kwargs["store"] = RunStore(self.home)
        return ProcessSession(config, pool=self, **kwargs)

    def _assign(self, session: ProcessSession) -> _Worker:
        """The worker with the fewest runs in hand (a dead one replaced first)."""
        with self._lock:
            for i, worker in enumerate(self._workers):
                if not worker.alive and not self._closed:
                    self._workers[i] = _Worker(self)
            worker = min(self._workers, key=lambda w: len(w.sessions))
            worker.sessions[session.run_id] = session
            return worker

    def processes(self) -> list[int]:
        """The workers' process ids."""
        return [w.process.pid for w in self._workers if w.process.pid is not None]

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Block until every worker has imported the engine (tests, the benchmark)."""
        return all(w.ready.wait(timeout) for w in self._workers)

    def close(self, timeout: float = 30.0) -> None:
        """Stop the runs in hand, let their ends be stored, then end the workers."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            workers = list(self._workers)
        for worker in workers:
            for session in list(worker.sessions.values()):
                session.stop()
        for worker in workers:
            for session in list(worker.sessions.values()):
                session._ended.wait(timeout)
            worker.send(("close",))
            worker.process.join(timeout)
            if worker.process.is_alive():
                worker.process.terminate()
                worker.process.join(5)

    @property
    def closed(self) -> bool:
        return self._closed

    def yield_to_training(self, increment: int = SERVER_NICE) -> bool:
        """Lower the CPU priority of this process (the server: every thread it has, and so every thread it starts
        later) by ``increment``, below the workers, which were started at the server's priority: when the room
        logs in and opens its pages, the run training keeps its cores and the pages wait milliseconds. The Plan
        tab's workers sit lower still (app/plan_pool.py). A worker started again after a crash has the server's
        lowered priority. Linux lowers each thread (``/proc/self/task``); elsewhere ``os.nice`` lowers the
        process. False where the system refuses or has no priorities (Windows)."""
        try:
            tasks = [int(t) for t in os.listdir("/proc/self/task")]
        except OSError:
            tasks = []
        try:
            if not tasks:
                os.nice(increment)
                return True
            for tid in tasks:
                try:
                    now = os.getpriority(os.PRIO_PROCESS, tid)
                    os.setpriority(os.PRIO_PROCESS, tid, min(19, now + increment))
                except ProcessLookupError:  # a thread that ended meanwhile
                    pass
            return True
        except (OSError, AttributeError):  # refused, or no os.nice (Windows)
            log.info("could not lower the server's CPU priority; the workers train at the same priority")
            return False
