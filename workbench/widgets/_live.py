"""Plumbing for live widgets: copy a figure into a FigureWidget, and a throttled refresher thread.

The figures themselves come from ``workbench.present`` (one place builds each panel); this module
only moves them into ``plotly.graph_objects.FigureWidget``s with as few messages as it can.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable

import numpy as np
import plotly.graph_objects as go

log = logging.getLogger(__name__)

_SKIP_LAYOUT = frozenset({"template"})


def figure_widget(fig: go.Figure) -> go.FigureWidget:
    """A FigureWidget showing ``fig``; later ``sync_figure`` calls update it in place."""
    return go.FigureWidget(fig)


def _same(a: Any, b: Any) -> bool:
    """Equality that copes with numpy arrays inside plotly JSON."""
    try:
        if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
            return np.array_equal(np.asarray(a), np.asarray(b))
        result = a == b
        return bool(result)
    except (ValueError, TypeError):  # arrays nested in dicts compare element-wise
        return False


def sync_figure(widget: go.FigureWidget, fig: go.Figure) -> None:
    """Make ``widget`` show ``fig``: one batched message for data and layout.

    Traces are updated in place when the new figure has the same trace types in the same order
    (the common case: a live panel gains points); otherwise they are replaced.  Only layout keys
    that changed are sent (the template never is).
    """
    # Per trace, not fig.to_plotly_json(): that one base64-encodes numpy arrays.
    new_data = [trace.to_plotly_json() for trace in fig.data]
    new_layout = fig.layout.to_plotly_json()
    old_layout = widget.layout.to_plotly_json()
    same_traces = len(widget.data) == len(new_data) and all(
        t.type == d.get("type", "scatter") and t.name == d.get("name") for t, d in zip(widget.data, new_data)
    )
    with widget.batch_update():
        if same_traces:
            for trace, data in zip(widget.data, new_data):
                stale = set(trace.to_plotly_json()) - set(data) - {"uid", "type"}
                trace.update({**data, **{key: None for key in stale}}, overwrite=True)
        else:
            widget.data = ()
            if new_data:
                widget.add_traces(list(fig.data))
        for key in (set(old_layout) | set(new_layout)) - _SKIP_LAYOUT:
            if not _same(old_layout.get(key), new_layout.get(key)):
                widget.layout[key] = new_layout.get(key)


class Refresher:
    """Calls ``refresh()`` on a daemon thread at most every ``interval`` seconds while work is pending.

    ``poke()`` (from any thread, e.g. the training thread's event subscriber) marks work pending;
    ``poll`` (optional) is called every interval to ask whether there is new work (e.g. new rows in
    the run store).  When ``finished()`` returns True the thread refreshes a last time, calls
    ``on_finish`` and ends; ``close()`` ends it at once.  Batching this way keeps the browser at a few updates per second whatever the
    step rate is.
    """

    def __init__(
        self,
        refresh: Callable[[], Any],
        *,
        interval: float,
        finished: Callable[[], bool],
        poll: Callable[[], bool] | None = None,
        on_finish: Callable[[], Any] | None = None,
        name: str = "workbench-widget-refresh",
    ) -> None:
        self._refresh = refresh
        self._on_finish = on_finish
        self._finished = finished
        self._poll = poll
        self.interval = interval
        self.finishing = False  # True once the final refresh has begun
        self._pending = threading.Event()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def poke(self) -> None:
        self._pending.set()

    def close(self) -> None:
        self._closed.set()
        self._pending.set()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def _loop(self) -> None:
        while not self._closed.is_set():
            self._pending.wait(self.interval if self._poll is not None else None)
            if self._closed.is_set():
                break
            pending = self._pending.is_set()
            self._pending.clear()
            try:
                if self._poll is not None and self._poll():
                    pending = True
                if pending:
                    self._refresh()
                if self._finished():  # one last look, whatever arrived in between
                    self.finishing = True
                    if self._poll is not None:
                        self._poll()
                    self._refresh()
                    if self._on_finish is not None:
                        self._on_finish()
                    break
            except Exception:  # a drawing bug must not kill the thread silently mid-run: log it
                log.exception("widget refresh failed")
            self._closed.wait(self.interval)  # throttle: at most one refresh per interval
