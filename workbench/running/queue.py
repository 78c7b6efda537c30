"""The workshop's fair queue: runs from many participants, scheduled round-robin on a few slots.

No UI here: the app (workbench/app/workshop.py) and the benchmark read ``snapshot()`` and subscribe to
``QueueEvent`` values. How it works:

- ``submit`` stores the run at once (a ``Session`` with its owner, status 'queued': nothing is lost if the server
  stops) and starts the session's thread, which waits on a gate of its own (``Session(device_lock=gate)``) that the
  queue opens when the run's turn comes. A run cancelled while it waits ends 'stopped' ("stopped before it started").
- **Fair order.** Each queued run has a round: how many of its owner's runs started before it, plus the owner's runs
  queued ahead of it. The queue is kept in (round, arrival) order, so a participant's first run never waits behind
  anyone's second, whoever asked first (round-robin across participants, not first-come-first-served). The
  instructor may reorder by hand (``move``); a later submission is placed by its round among what is there.
- **Slots.** ``slots`` runs train at once (several small runs sharing the CPU cores); with more than one, torch's
  intra-op threads are split between them (``threads_per_slot``) and each run's noise threads likewise.
- **Estimates.** A run's duration is its planned steps times the seconds per step the finished runs of its model
  took (a prior until one has finished); the wait of a queued run is when a slot frees for it, with the running
  runs' remaining time and the runs ahead of it placed on the earliest free slot.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable

from workbench.config import RunConfig
from workbench.errors import UserError
from workbench.events import Event, RunEnded
from workbench.store.runs import RunStore

__all__ = ["FairQueue", "QueueError", "QueueLimitError", "QueueEvent", "QueuedRun", "ordinal", "wait_text"]

log = logging.getLogger(__name__)

DEFAULT_STEPS = 100  # a run without max_steps whose model has no finished run yet: its steps, for the estimate
PRIOR_SECONDS_PER_STEP = 1.0  # before any run of a model has finished


class QueueError(UserError, ValueError):
    """A queue action that cannot be done (a run that already ended, one that is not in this queue)."""


class QueueLimitError(QueueError):
    """A participant over the per-participant limit of queued runs."""


@dataclass(frozen=True)
class QueueEvent:
    """What changed: kind is submitted | started | ended | cancelled | moved | paused | resumed."""

    kind: str
    run_id: str | None = None
    owner: str | None = None
    time: float = field(default_factory=time.time)


@dataclass
class _Job:
    run_id: str
    owner: str
    session: Any
    gate: threading.Lock
    round: int
    seq: int
    steps: int
    model: str
    submitted: float
    started: float | None = None


@dataclass(frozen=True)
class QueuedRun:
    """One run in ``snapshot()``: ``position`` 1-based among the queued (0 while it runs), ``wait_s`` the estimated
    seconds until it starts (0 while it runs), ``remaining_s`` the estimated seconds until it ends."""

    run_id: str
    owner: str
    status: str  # queued | running
    position: int
    wait_s: float
    remaining_s: float


def ordinal(n: int) -> str:
    """1st, 2nd, 3rd, 4th, ..., 11th, 12th, 13th, 21st."""
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def wait_text(position: int, wait_s: float) -> str:
    """'3rd in line, about 4 min' (under a minute: 'under a minute')."""
    minutes = round(wait_s / 60)
    about = "under a minute" if wait_s < 60 else f"about {minutes} min"
    return f"{ordinal(position)} in line, {about}"


class FairQueue:
    """See the module docstring. ``max_queued``: how many runs one participant may have waiting (not counting the
    ones training); ``slots``: how many runs train at once; ``session_factory``: ``workbench.session.Session`` (or a
    stand-in with its ``run_id``, ``start``, ``stop``, ``status`` and ``subscribe``), called with the config and
    ``store``, ``owner``, ``name`` and ``device_lock`` (running/ does not import session: session imports running/)."""

    def __init__(
        self,
        store: RunStore,
        *,
        slots: int = 1,
        max_queued: int = 2,
        session_factory: Callable[..., Any] | None,
        cores: int | None = None,
    ) -> None:
        if slots < 1 or max_queued < 1:
            raise QueueError(
                f"the queue needs at least one slot and one queued run each (slots={slots}, max_queued={max_queued})."
            )
        self.store = store
        self.slots = slots
        self.max_queued = max_queued
        self.cores = cores or os.cpu_count() or 1
        self.session_factory = session_factory  # what makes a run's session (the workshop closes it with the app)
        self._lock = threading.RLock()
        self._order: list[_Job] = []  # queued, in the order they start
        self._running: dict[str, _Job] = {}
        self._jobs: dict[str, _Job] = {}  # every job this queue took, by run id
        self._started_count: dict[str, int] = defaultdict(int)  # owner -> runs started
        self._seq = itertools.count()
        self._paused = False
        self._subscribers: list[Callable[[QueueEvent], None]] = []
        self._seconds_per_step: dict[str, float] = {}
        self._steps_seen: dict[str, int] = {}
        if slots > 1:
            self._split_threads()

    # -- configuration -------------------------------------------------------------------------------
    @property
    def threads_per_slot(self) -> int:
        return max(1, self.cores // self.slots)

    def _split_threads(self) -> None:
        """Several runs at once share the cores: torch's intra-op threads are process-wide, so they are set to the
        cores divided among the slots (each run's noise threads are set in ``_config``)."""
        try:
            import torch

            torch.set_num_threads(self.threads_per_slot)
        except Exception:  # noqa: BLE001 - no torch, no threads to split
            log.info("could not set torch's threads for %d slots", self.slots)

    def _config(self, config: RunConfig) -> RunConfig:
        if self.slots > 1 and config.noise_threads is None:
            return config.with_overrides({"noise_threads": max(1, self.threads_per_slot // 2)})
        return config

    # -- events --------------------------------------------------------------------------------------
    def subscribe(self, fn: Callable[[QueueEvent], None]) -> None:
        self._subscribers.append(fn)

    def _tell(self, kind: str, job: _Job | None = None) -> None:
        event = QueueEvent(kind, job.run_id if job else None, job.owner if job else None)
        for fn in list(self._subscribers):
            try:
                fn(event)
            except Exception:  # noqa: BLE001 - a subscriber never stops the queue
                log.exception("queue subscriber %r raised on %s", fn, kind)

    # -- participants' actions -----------------------------------------------------------------------
    def submit(self, config: RunConfig, *, owner: str, name: str | None = None) -> str:
        """Store the run (queued, owned by ``owner``) and place it by its round; returns its id. QueueLimitError
        when ``owner`` already has ``max_queued`` runs waiting (nothing is stored then)."""
        config = self._config(config)
        with self._lock:
            waiting = [j for j in self._order if j.owner == owner]
            if len(waiting) >= self.max_queued:
                raise QueueLimitError(
                    f"{owner} already has {len(waiting)} run(s) waiting in the queue, the limit for each participant "
                    f"({', '.join(j.run_id for j in waiting)}). Wait for one to start, or cancel one, then Start again."
                )
            gate = threading.Lock()
            gate.acquire()  # opened by _dispatch when the run's turn comes
            session = self.session_factory(config, store=self.store, owner=owner, name=name, device_lock=gate)
            session.subscribe(self._listener(session))
            job = _Job(
                run_id=session.run_id,
                owner=owner,
                session=session,
                gate=gate,
                round=self._started_count[owner] + len(waiting),
                seq=next(self._seq),
                steps=config.max_steps or self._steps_seen.get(config.model, DEFAULT_STEPS),
                model=config.model,
                submitted=time.time(),
            )
            self._jobs[job.run_id] = job
            self._insert(job)
            session.start()  # stored now, status queued; its thread waits on the gate
        self._tell("submitted", job)
        self._dispatch()
        return job.run_id

    def _insert(self, job: _Job) -> None:
        key = (job.round, job.seq)
        for i, other in enumerate(self._order):
            if (other.round, other.seq) > key:
                self._order.insert(i, job)
                return
        self._order.append(job)

    # -- the instructor's actions --------------------------------------------------------------------
    def pause(self) -> None:
        """No queued run starts until ``resume``; the runs training go on."""
        with self._lock:
            self._paused = True
        self._tell("paused")

    def resume(self) -> None:
        with self._lock:
            self._paused = False
        self._tell("resumed")
        self._dispatch()

    @property
    def paused(self) -> bool:
        return self._paused

    def move(self, run_id: str, position: int) -> None:
        """Put a queued run at ``position`` (1-based; clamped to the queue's length)."""
        with self._lock:
            job = self._queued(run_id, action="move")
            self._order.remove(job)
            self._order.insert(max(0, min(position - 1, len(self._order))), job)
        self._tell("moved", job)

    def cancel(self, run_id: str) -> str:
        """Take a queued run out (it is stored 'stopped', before it started) or stop a training one; returns what
        was done. QueueError for a run that already ended or that this queue never held."""
        with self._lock:
            job = self._jobs.get(run_id)
            if job is None:
                raise QueueError(f"run {run_id} is not in this workshop's queue: nothing to cancel.")
            if job in self._order:
                self._order.remove(job)
                job.session.stop()
                what = f"Cancelled run {run_id} ({job.owner}'s) before it started; it is stored as stopped."
            elif run_id in self._running:
                job.session.stop()
                what = f"Stopping run {run_id} ({job.owner}'s): the step under way is discarded."
            else:
                raise self._ended(job, "cancel")
        self._tell("cancelled", job)
        return what

    def _queued(self, run_id: str, *, action: str) -> _Job:
        job = self._jobs.get(run_id)
        if job is None:
            raise QueueError(f"run {run_id} is not in this workshop's queue: nothing to {action}.")
        if job not in self._order:
            if run_id in self._running:
                raise QueueError(f"run {run_id} is already training: only a queued run can be moved.")
            raise self._ended(job, action)
        return job

    def _ended(self, job: _Job, action: str) -> QueueError:
        status = job.session.status
        return QueueError(f"run {job.run_id} has already ended ({status}): nothing to {action}. It stays stored.")

    # -- reading -------------------------------------------------------------------------------------
    def session(self, run_id: str) -> Any:
        """The session of a run this queue took (None for another)."""
        job = self._jobs.get(run_id)
        return job.session if job else None

    def owner_of(self, run_id: str) -> str | None:
        job = self._jobs.get(run_id)
        return job.owner if job else None

    def snapshot(self, *, now: float | None = None) -> list[QueuedRun]:
        """The running runs, then the queued ones in the order they will start, with estimates."""
        now = now or time.time()
        with self._lock:
            running = list(self._running.values())
            order = list(self._order)
        free_at = sorted(now + self._remaining(j, now) for j in running)
        free_at += [now] * (self.slots - len(free_at))
        out = [QueuedRun(j.run_id, j.owner, "running", 0, 0.0, self._remaining(j, now)) for j in running]
        for i, job in enumerate(order, start=1):
            free_at.sort()
            start = free_at[0]
            duration = self._duration(job)
            free_at[0] = start + duration
            out.append(QueuedRun(job.run_id, job.owner, "queued", i, start - now, start - now + duration))
        return out

    def position(self, run_id: str) -> QueuedRun | None:
        return next((q for q in self.snapshot() if q.run_id == run_id), None)

    def _duration(self, job: _Job) -> float:
        return job.steps * self._seconds_per_step.get(job.model, PRIOR_SECONDS_PER_STEP)

    def _remaining(self, job: _Job, now: float) -> float:
        return max(self._duration(job) - (now - (job.started or now)), 0.0)

    # -- internals -----------------------------------------------------------------------------------
    def _dispatch(self) -> None:
        started = []
        with self._lock:
            while not self._paused and self._order and len(self._running) < self.slots:
                job = self._order.pop(0)
                job.started = time.time()
                self._running[job.run_id] = job
                self._started_count[job.owner] += 1
                job.gate.release()  # the session's thread takes it and trains
                started.append(job)
        for job in started:
            self._tell("started", job)

    def _listener(self, session) -> Callable[[Event], None]:
        def on_event(event: Event) -> None:
            if isinstance(event, RunEnded):
                self._finished(session.run_id, event)

        return on_event

    def _finished(self, run_id: str, event: RunEnded) -> None:
        with self._lock:
            job = self._jobs.get(run_id)
            if job is None:
                return
            ran = self._running.pop(run_id, None) is not None
            if job in self._order:  # stopped while it waited (a cancel, or the server's Stop)
                self._order.remove(job)
            summary = event.summary or {}
            steps, wall = summary.get("steps"), summary.get("wall_time")
            if ran and steps and wall and event.status == "finished":
                old = self._seconds_per_step.get(job.model)
                rate = wall / steps
                self._seconds_per_step[job.model] = rate if old is None else 0.5 * old + 0.5 * rate
                self._steps_seen[job.model] = int(steps)
        self._tell("ended", job)
        self._dispatch()

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until nothing is queued or training (tests, the benchmark); False on timeout."""
        end = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._lock:
                if not self._order and not self._running:
                    return True
            if end is not None and time.monotonic() > end:
                return False
            time.sleep(0.05)
