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
    # `workbench app --workshop`: the participants, their access rules and the fair queue (app/workshop.py's
    # Workshop); None outside a workshop, where every browser sees and manages every run, as before.
    workshop: Any = None

    def __post_init__(self) -> None:
        if self.views is None:
            self.views = RunViews(self.store)

    @property
    def uploads_dir(self) -> Path:
        return self.store.home / "uploads"

    def runs(self, user: str | None = None) -> list[RunRecord]:
        """The runs ``user`` may see: in a workshop a participant's own (the instructor's: all), else all."""
        return self.store.list() if self.workshop is None else self.workshop.visible(user)

    def check_run(self, user: str | None, run_id: str | None) -> None:
        """In a workshop, RunNotYours (a UserError) unless ``user`` may see and manage ``run_id``; else nothing."""
        if self.workshop is not None and run_id:
            self.workshop.check(user, run_id)

    def check_data(self, user: str | None, source: str) -> None:
        """In a workshop, a participant's data is the demo data, their own uploads or a dataset name (never a file
        of this machine outside their uploads folder); else nothing."""
        if self.workshop is not None:
            self.workshop.check_data(user, source)

    def uploads_for(self, user: str | None) -> Path:
        """Where ``user``'s uploads go: their own folder in a workshop, else the shared one."""
        return self.uploads_dir if self.workshop is None else self.workshop.uploads_dir(user)

    def newest_active(self, user: str | None = None) -> str | None:
        """The newest running run, else the newest queued one (of those ``user`` may see)."""
        runs = self.runs(user)
        for status in ACTIVE:
            for rec in runs:
                if rec.status == status:
                    return rec.id
        return None

    def default_selection(self, user: str | None = None) -> Selection:
        """On page load: the newest running run, else the newest run of any status (of those ``user`` may see)."""
        active = self.newest_active(user)
        if active is not None:
            return Selection(run_id=active)
        runs = self.runs(user)
        return Selection(run_id=runs[0].id if runs else None)
