"""The Plan tab's answers in worker processes, for workshop mode (issue 31).

A plan for new settings needs a fresh privacy calibration: seconds of pure Python. In the app's process it
holds the GIL against the training thread and, one request at a time, queues the other participants' plans.
Here the plan is computed in a small ``ProcessPoolExecutor`` ("spawn": never a fork of the app with its
threads and model, and no fork server left running after the pool closes), sent the controls' values and the app's
defaults as plain dicts and answering the plain update the tab renders (plan.plan_answer). The app keeps the
answers in an LRU cache by settings, so a repeated request is instant and never reaches a worker.

Each new setting asks for two jobs: the first answer (the calibration and the bound's curve) and the complete one
(every curve and the user-level epsilon), so the page shows a plan early even when the complete one takes seconds.
Participants who ask for settings already being computed share those jobs (``answer``): a room trying the same
batch sizes costs one computation each, not one per participant. The pool keeps its own queue, first answers
before complete ones (a worker busy with a complete answer never makes a first answer wait behind other
complete ones), and sends a worker one job at a time. The workers run at the lowest CPU priority (``os.nice``,
PLAN_NICE): the training worker (workbench/training_pool.py) keeps the cores it needs, and plans use what is left.
A pool that fails (a worker killed, an answer that cannot be pickled) answers with the in-process computation,
as outside a workshop; an error of the plan itself is the worker's answer, the same message the tab shows in
process.
"""

from __future__ import annotations

import heapq
import importlib
import itertools
import json
import multiprocessing
import os
import threading
from collections import OrderedDict
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from typing import Any, Callable

WARM_MODULE = "workbench.app.plan"  # a worker imports it once, before the first request waits for it
WORKERS_ENV = "WORKBENCH_PLAN_WORKERS"  # how many worker processes (default 2; 0: in the app's process)
DEFAULT_WORKERS = 2
CACHE_SIZE = 256
PLAN_NICE = 19  # the workers' niceness: the lowest, so training (0) keeps its cores and plans use what is left
FIRST, COMPLETE, BACKGROUND = 0, 1, 2  # job priorities: a page's first answer, its complete one, a warm-up


def _start_worker(module: str, nice: int, cache_path: str | None) -> None:
    """A worker's initializer: a lower CPU priority, the plan's modules imported once, and the accounting results
    kept on disk where the pool says (planning/disk_cache.py: shared by the workers, kept across restarts)."""
    if nice:
        try:
            os.nice(nice)
        except (OSError, AttributeError):  # not allowed here, or no os.nice (Windows): the server's priority
            pass
    importlib.import_module(module)
    if cache_path:
        from workbench.planning import disk_cache

        disk_cache.use(cache_path)


class _Shared:
    """The first and complete answers of one setting under way, and how many requests wait on them."""

    def __init__(self, first: Future, full: Future) -> None:
        self.first, self.full, self.waiters = first, full, 1


def _context() -> Any:
    return multiprocessing.get_context("spawn")


def settings_key(values: dict[str, Any], defaults: dict[str, Any]) -> str | None:
    """The cache key of one plan: the controls' values and the app's defaults, with the size and time of a data
    file they name (a path's file may change); None when they cannot be written as JSON (not cached)."""
    stamps = {}
    for name in ("upload_path", "data_path", "validation_data"):
        path = values.get(name)
        if isinstance(path, str) and path.strip():
            try:
                st = Path(path.strip()).stat()
                stamps[name] = (st.st_size, st.st_mtime_ns)
            except OSError:
                stamps[name] = None
    try:
        return json.dumps([_numbers(values), _numbers(defaults), stamps], sort_keys=True)
    except (TypeError, ValueError):
        return None


def _numbers(values: dict[str, Any]) -> dict[str, Any]:
    """``values`` with every number as a float: 8 and 8.0 are one setting (a control may send either)."""
    return {k: float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v for k, v in values.items()}


class PlanPool:
    """Worker processes for plans, started on first use, and the LRU cache of complete answers."""

    def __init__(
        self, workers: int | None = None, cache_size: int = CACHE_SIZE, accounting_cache: str | Path | None = None
    ) -> None:
        if workers is None:
            workers = int(os.environ.get(WORKERS_ENV, DEFAULT_WORKERS))
        self.workers = max(0, workers)
        self._cache: OrderedDict[str, tuple] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()
        self._pool: ProcessPoolExecutor | None = None
        self._closed = False
        self._counts = {"cache_hits": 0, "cache_misses": 0, "jobs": 0, "shared": 0}
        self._queue: list[tuple] = []  # (priority, seq, future, fn, args, key): a heap
        self._seq = itertools.count()
        self._busy = 0  # jobs in the executor (at most one per worker)
        self._inflight: dict[str, _Shared] = {}
        self._warming: list[Future] = []
        self.nice = PLAN_NICE
        self.accounting_cache = str(accounting_cache) if accounting_cache else None  # the workers' disk cache

    # -- the cache ---------------------------------------------------------------------------------------
    def cached(self, key: str | None, *, count: bool = True) -> tuple | None:
        if key is None:
            return None
        with self._lock:
            answer = self._cache.get(key)
            if answer is not None:
                self._cache.move_to_end(key)
            if count:
                self._counts["cache_hits" if answer is not None else "cache_misses"] += 1
            return answer

    def remember(self, key: str | None, answer: tuple) -> None:
        if key is None:
            return
        with self._lock:
            self._cache[key] = answer
            self._cache.move_to_end(key)
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)

    # -- the pool ----------------------------------------------------------------------------------------
    def _executor(self) -> ProcessPoolExecutor | None:
        with self._lock:
            if self._closed or self.workers == 0:
                return None
            if self._pool is None:
                self._pool = ProcessPoolExecutor(
                    self.workers,
                    mp_context=_context(),
                    initializer=_start_worker,
                    initargs=(WARM_MODULE, self.nice, self.accounting_cache),
                )
            return self._pool

    def submit(
        self, fn: Callable[..., Any], *args: Any, priority: int = FIRST, key: str | None = None
    ) -> Future | None:
        """``fn(*args)`` (plan.plan_answer and plain values) in a worker, after the queued jobs of a higher
        ``priority`` (FIRST, COMPLETE, BACKGROUND; the same priority in order); None without a pool. A BACKGROUND
        job whose ``key`` is cached or under way by the time a worker is free is dropped (cancelled)."""
        if self._executor() is None:
            return None
        future: Future = Future()
        with self._lock:
            heapq.heappush(self._queue, (priority, next(self._seq), future, fn, args, key))
            self._counts["jobs"] += 1
        self._pump()
        return future

    def answer(self, key: str | None, fn: Callable[..., Any], *args: Any) -> tuple[Future | None, Future | None]:
        """The (first, complete) answers of one setting: ``fn(*args, True)`` and ``fn(*args, False)``, shared
        with every request for the same ``key`` while they are under way; (None, None) without a pool. The
        complete answer goes to the cache when it is not an error. Call ``leave(key)`` when no longer waiting."""
        with self._lock:
            shared = self._inflight.get(key) if key is not None else None
            if shared is not None and not shared.full.cancelled():
                shared.waiters += 1
                self._counts["shared"] += 1
                return shared.first, shared.full
        first = self.submit(fn, *args, True, priority=FIRST)
        full = self.submit(fn, *args, False, priority=COMPLETE)
        if first is None or full is None:
            for job in (first, full):
                if job is not None:
                    job.cancel()
            return None, None
        if key is not None:
            with self._lock:
                self._inflight[key] = _Shared(first, full)
            full.add_done_callback(lambda future: self._settled(key, future))
        return first, full

    def _settled(self, key: str, future: Future) -> None:
        with self._lock:
            shared = self._inflight.get(key)
            if shared is not None and shared.full is future:
                del self._inflight[key]
        if not future.cancelled() and future.exception() is None:
            answer = future.result()
            if answer and not answer[3]:  # (data, figure, summary, error): errors are not cached
                self.remember(key, answer)

    def leave(self, key: str | None) -> None:
        """A request stopped waiting for ``key``'s answers (a newer edit): the last one to leave cancels the jobs
        not started yet (a complete answer under way still fills the cache)."""
        with self._lock:
            shared = self._inflight.get(key) if key is not None else None
            if shared is None:
                return
            shared.waiters -= 1
            if shared.waiters > 0:
                return
        for job in (shared.first, shared.full):
            job.cancel()

    def warm(self, fn: Callable[..., Any], settings: list[tuple[str | None, tuple]]) -> int:
        """Compute the complete answers of ``settings`` ((key, args) pairs: ``fn(*args, False)``) in the
        background, after every participant's request, into the cache; returns how many were queued."""
        queued = 0
        for key, args in settings:
            if key is None or self.cached(key, count=False) is not None:
                continue
            future = self.submit(fn, *args, False, priority=BACKGROUND, key=key)
            if future is None:
                break
            future.add_done_callback(lambda f, key=key: self._settled(key, f))
            with self._lock:
                self._warming.append(future)
            queued += 1
        return queued

    def wait_warm(self, timeout: float | None = None) -> bool:
        """Block until the warm-up's answers are computed (the benchmark; a test); False on timeout."""
        from concurrent.futures import wait

        with self._lock:
            jobs = list(self._warming)
        return not wait(jobs, timeout=timeout).not_done

    def _pump(self) -> None:
        """Send queued jobs to free workers, best priority first (each worker gets one job at a time, so the
        order of the rest stays the pool's)."""
        while True:
            with self._lock:
                if self._busy >= max(1, self.workers) or not self._queue:
                    return
                priority, _, future, fn, args, key = heapq.heappop(self._queue)
                if priority == BACKGROUND and (key in self._cache or key in self._inflight):
                    future.cancel()  # a participant's request computed it meanwhile
                if not future.set_running_or_notify_cancel():  # cancelled while it waited
                    continue
                self._busy += 1
            pool = self._executor()
            try:
                if pool is None:
                    raise RuntimeError("the plan pool is closed")
                job = pool.submit(fn, *args)
            except Exception as err:  # noqa: BLE001 - broken or shut down meanwhile: a new pool next time
                if pool is not None:
                    self._drop(pool)
                self._finish(future, error=err)
                continue
            future.executor = pool  # which pool ran it (``broken``)
            job.add_done_callback(lambda done, future=future: self._transfer(done, future))

    def _transfer(self, done: Future, future: Future) -> None:
        try:
            error = done.exception()
        except BaseException as err:  # noqa: BLE001 - cancelled by a shutdown
            error = err
        if error is None:
            self._finish(future, result=done.result())
        else:
            self._finish(future, error=error)

    def _finish(self, future: Future, *, result: Any = None, error: BaseException | None = None) -> None:
        with self._lock:
            self._busy -= 1
        if error is None:
            future.set_result(result)
        else:
            future.set_exception(error)
        self._pump()

    def _drop(self, pool: ProcessPoolExecutor) -> None:
        with self._lock:
            if self._pool is pool:
                self._pool = None
        pool.shutdown(wait=False, cancel_futures=True)

    def broken(self, future: Future) -> None:
        """A job failed in the pool itself (not in the plan): replace the pool that ran it (once, however many
        requests shared the job)."""
        with self._lock:
            pool = self._pool
        if pool is not None and getattr(future, "executor", pool) is pool:
            self._drop(pool)

    def processes(self) -> list[int]:
        """The worker processes' ids (for tests and the benchmark): this process's live child processes while the
        pool is open (the executor's own list is private), less the workshop's training workers (training_pool.py,
        ``WORKER_NAME``)."""
        with self._lock:
            pool = self._pool
        if pool is None:
            return []
        from workbench.training_pool import WORKER_NAME

        return [c.pid for c in multiprocessing.active_children() if c.name != WORKER_NAME]

    def stats(self) -> dict[str, int]:
        """What the pool did so far (the benchmark prints it): cache hits and misses, jobs sent to the workers."""
        with self._lock:
            return dict(self._counts)

    def close(self) -> None:
        """Stop the workers and wait for them to end; later requests are computed in process."""
        with self._lock:
            self._closed, pool, self._pool = True, self._pool, None
            queued, self._queue = self._queue, []
        for _, _, future, *_ in queued:
            future.cancel()
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)

    @property
    def closed(self) -> bool:
        return self._closed
