"""The Plan tab's answers in worker processes, for workshop mode (issue 31).

A plan for new settings needs a fresh privacy calibration: seconds of pure Python. In the app's process it
holds the GIL against the training thread and, one request at a time, queues the other participants' plans.
Here the plan is computed in a small ``ProcessPoolExecutor`` ("spawn": never a fork of the app with its
threads and model, and no fork server left running after the pool closes), sent the controls' values and the app's
defaults as plain dicts and answering the plain update the tab renders (plan.plan_answer). The app keeps the
answers in an LRU cache by settings, so a repeated request is instant and never reaches a worker.

Each request submits two jobs: the first answer (RDP's plan, well under a second) and the complete one, so
the page shows a plan early even when the complete one takes seconds. A pool that fails (a worker killed,
an answer that cannot be pickled) answers with the in-process computation, as outside a workshop; an error
of the plan itself is the worker's answer, the same message the tab shows in process.
"""

from __future__ import annotations

import importlib
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
        return json.dumps([values, defaults, stamps], sort_keys=True)
    except (TypeError, ValueError):
        return None


class PlanPool:
    """Worker processes for plans, started on first use, and the LRU cache of complete answers."""

    def __init__(self, workers: int | None = None, cache_size: int = CACHE_SIZE) -> None:
        if workers is None:
            workers = int(os.environ.get(WORKERS_ENV, DEFAULT_WORKERS))
        self.workers = max(0, workers)
        self._cache: OrderedDict[str, tuple] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()
        self._pool: ProcessPoolExecutor | None = None
        self._closed = False

    # -- the cache ---------------------------------------------------------------------------------------
    def cached(self, key: str | None) -> tuple | None:
        if key is None:
            return None
        with self._lock:
            answer = self._cache.get(key)
            if answer is not None:
                self._cache.move_to_end(key)
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
                    initializer=importlib.import_module,
                    initargs=(WARM_MODULE,),
                )
            return self._pool

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future | None:
        """``fn(*args)`` (plan.plan_answer and plain values) in a worker; None without a pool."""
        pool = self._executor()
        if pool is None:
            return None
        try:
            return pool.submit(fn, *args)
        except RuntimeError:  # broken or shut down meanwhile: a new pool next time
            self._drop(pool)
            return None

    def _drop(self, pool: ProcessPoolExecutor) -> None:
        with self._lock:
            if self._pool is pool:
                self._pool = None
        pool.shutdown(wait=False, cancel_futures=True)

    def broken(self, future: Future) -> None:
        """A job failed in the pool itself (not in the plan): replace the pool."""
        with self._lock:
            pool = self._pool
        if pool is not None:
            self._drop(pool)

    def processes(self) -> list[int]:
        """The worker processes' ids (for tests and the benchmark): this process's live child processes while the
        pool is open (the executor's own list is private; the app starts no other multiprocessing children)."""
        with self._lock:
            pool = self._pool
        return [child.pid for child in multiprocessing.active_children()] if pool is not None else []

    def close(self) -> None:
        """Stop the workers and wait for them to end; later requests are computed in process."""
        with self._lock:
            self._closed, pool, self._pool = True, self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)

    @property
    def closed(self) -> bool:
        return self._closed
