"""Server-side state of the app: the run store, the sessions this server started, a shared cache of
run views, and the small per-browser selection record.  No gradio here, so tests use it directly.
"""

from __future__ import annotations

import secrets
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workbench.present import RunView
from workbench.store.runs import ACTIVE, RunRecord, RunStore


@dataclass(frozen=True)
class Selection:
    """Which run a browser's Train tab shows.  ``follow``: switch to a newer active run when the
    shown one has ended (off once the user opens a run from the Runs tab); the page's stream does
    the switching (workbench/app/live.py)."""

    run_id: str | None = None
    follow: bool = True

    def select(self, run_id: str | None, *, follow: bool | None = None) -> "Selection":
        return Selection(run_id=run_id, follow=self.follow if follow is None else follow)


class RunViews:
    """Run views shared by every browser: each run's events are read from the store once, then only
    the new ones (``after_seq``).  Keeps the ``capacity`` most recently used runs."""

    def __init__(self, store: RunStore, *, capacity: int = 16) -> None:
        self.store = store
        self.capacity = capacity
        self._views: OrderedDict[str, RunView] = OrderedDict()
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def get(self, run_id: str) -> RunView:
        """The run's view, brought up to date with the store."""
        with self._guard:
            view = self._views.get(run_id)
            if view is None:
                view = self._views[run_id] = RunView(run_id=run_id)
                self._locks[run_id] = threading.Lock()
            self._views.move_to_end(run_id)
            lock = self._locks[run_id]
            while len(self._views) > self.capacity:
                old, _ = self._views.popitem(last=False)
                self._locks.pop(old, None)
        with lock:
            view.extend(self.store.events(run_id, after_seq=view.last_seq))
        return view

    def cached(self) -> dict[str, RunView]:
        with self._guard:
            return dict(self._views)

    def forget(self, run_id: str) -> None:
        with self._guard:
            self._views.pop(run_id, None)
            self._locks.pop(run_id, None)


@dataclass
class AppContext:
    """Everything the callbacks share; one per ``build_app``."""

    store: RunStore
    defaults: dict[str, Any] = field(default_factory=dict)
    max_upload_mb: int = 50
    sessions: dict[str, Any] = field(default_factory=dict)  # run_id -> Session started by this server
    sweep_jobs: dict[str, Any] = field(default_factory=dict)  # sweep name -> SweepJob started by this server
    views: RunViews = None  # type: ignore[assignment]
    # The live stream's key (workbench/app/live.py): handed out by Gradio's API, to logged-in pages only.
    stream_key: str = field(default_factory=lambda: secrets.token_urlsafe(32), repr=False)

    def __post_init__(self) -> None:
        if self.views is None:
            self.views = RunViews(self.store)

    @property
    def uploads_dir(self) -> Path:
        return self.store.home / "uploads"

    def runs(self) -> list[RunRecord]:
        return self.store.list()

    def newest_active(self) -> str | None:
        """The newest running run, else the newest queued one."""
        runs = self.store.list()
        for status in ACTIVE:
            for rec in runs:
                if rec.status == status:
                    return rec.id
        return None

    def default_selection(self) -> Selection:
        """On page load: the newest running run, else the newest run of any status."""
        active = self.newest_active()
        if active is not None:
            return Selection(run_id=active)
        runs = self.store.list()
        return Selection(run_id=runs[0].id if runs else None)
