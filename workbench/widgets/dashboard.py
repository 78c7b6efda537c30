"""The live training dashboard for notebooks: the app's Train-tab panels as FigureWidgets.

    dash = Dashboard(model="tiny", max_steps=40)     # a new run: press Start (or dash.start())
    dash                                             # show it; training runs on a background thread
    Dashboard(model="tiny", nproc=2)                 # data-parallel on 2 processes: the kernel is rank 0
    Dashboard(run_id="20260101-120000-abc123")       # a stored run (live if another process trains it)

The training thread never touches a widget: the session's subscriber only marks "new events"
and a refresher thread redraws at most every ``interval`` seconds, folding the new events into a
``present.RunView`` and copying present's figures into the FigureWidgets in one batched message
per panel.  Drawing is under a lock, so ``refresh()`` can also be called from the notebook.
"""

from __future__ import annotations

import html
import threading
import time
from typing import Any

import ipywidgets as w

from workbench.config import RunConfig
from workbench.engine.randomness import SEEDED_LABEL
from workbench.events import Event
from workbench.planning.wording import relation_text
from workbench.present import PANELS, STATUS_COLORS, RunView, generations_table, panels, progress
from workbench.present.diagnostics import prefix_cache_text
from workbench.session import Session
from workbench.store.runs import ACTIVE, RunStore
from workbench.widgets._html import status_html, table_html
from workbench.widgets._live import Refresher, figure_widget, sync_figure

DEFAULT_WIDTH = 980  # pixels; fits JupyterLab's output area on a laptop screen


class Dashboard:
    """Live panels for one run, with Start and Stop buttons.

    Exactly one of: ``session`` (a ``Session``, started or not), ``run_id`` (a stored run), or a
    configuration (``config`` and/or keyword overrides, as for ``workbench.train``) for a new run
    that Start launches.  ``interval`` bounds the redraw rate (seconds between redraws); ``width``
    is the dashboard's width in pixels (plotly widgets do not follow their container's size).
    """

    def __init__(
        self,
        config: RunConfig | dict | None = None,
        *,
        session: Session | None = None,
        run_id: str | None = None,
        store: RunStore | None = None,
        interval: float = 0.5,
        width: int = DEFAULT_WIDTH,
        **overrides: Any,
    ) -> None:
        if sum(x is not None for x in (session, run_id)) + bool(config is not None or overrides) > 1:
            raise ValueError("give a session, a run_id, or a configuration (config / keyword settings), not several")
        self.interval = interval
        half = (width - 8) // 2
        self._widths = {name: (width if name == "noise_allocation" else half) for name in PANELS}
        self.store = store or (session.store if session is not None else RunStore())
        self.session: Session | None = session
        self.config: RunConfig | None = None
        self._lock = threading.RLock()
        self._consumed = 0  # events of self.session already folded into the view
        self._refresher: Refresher | None = None
        self._drawn_seq = -1
        if session is not None:
            self.config = session.config
            self.run_id: str | None = session.run_id
            session.subscribe(self._on_event)
        elif run_id is not None:
            record = self.store.get(run_id)  # RunNotFound names the id when it is wrong
            self.run_id = record.id
            self.config = _stored_config(record.config)
            name = record.name
        else:
            self.config = _as_config(config, overrides)
            self.run_id = None
        if session is not None or run_id is None:
            name = self.config.name if self.config is not None else None
        self.view = RunView(run_id=self.run_id or "new run", name=name)
        self._build()
        if run_id is not None:
            self._poll_store()
        self.refresh()
        self._watch()

    # -- the widget --------------------------------------------------------------------------------
    def _build(self) -> None:
        self.start_button = w.Button(
            description="Start",
            icon="play",
            button_style="success",
            tooltip="Start a new training run with these settings",
        )
        self.stop_button = w.Button(
            description="Stop",
            icon="stop",
            button_style="danger",
            tooltip="Stop the run: the step under way is discarded (nothing partial is released)",
        )
        self.start_button.on_click(lambda _: self.start())
        self.stop_button.on_click(lambda _: self.stop())
        self.title = w.HTML()
        self.status = w.HTML()
        self.progress_bar = w.FloatProgress(value=0.0, min=0.0, max=1.0, layout=w.Layout(width="260px"))
        self.figures = {name: figure_widget(fig) for name, fig in self._figures().items()}
        self.generations = w.HTML()
        header = w.HBox([self.start_button, self.stop_button, self.progress_bar], layout=w.Layout(align_items="center"))
        self._grid = w.GridBox(
            [self.figures[name] for name in PANELS[:4]],
            layout=w.Layout(grid_template_columns="repeat(2, max-content)", grid_gap="4px 8px"),
        )
        self._wide = w.Box([self.figures["noise_allocation"]])
        samples = w.Accordion(children=[self.generations], titles=("Sample generations",))
        self.widget = w.VBox([self.title, header, self.status, self._grid, self._wide, samples])
        self.widget.add_class("workbench-dashboard")

    def _figures(self) -> dict[str, Any]:
        figures = panels(self.view)
        for name, fig in figures.items():
            fig.update_layout(width=self._widths[name], autosize=False)
        return figures

    def _repr_mimebundle_(self, **kwargs: Any):
        return self.widget._repr_mimebundle_(**kwargs)

    # -- control -----------------------------------------------------------------------------------
    def start(self) -> str:
        """Start a new run with this dashboard's settings on a background thread; returns its id."""
        with self._lock:
            if self.session is not None and not self.session.done and self.session.status != "created":
                raise RuntimeError(f"run {self.session.run_id} is still {self.session.status}; stop it first")
            if self.session is None or self.session.status != "created":
                if self.config is None:
                    raise ValueError("this dashboard has no settings to start a run with")
                self.session = Session(self.config, store=self.store)
                self.session.subscribe(self._on_event)
            self.run_id = self.session.run_id
            self.view = RunView(run_id=self.run_id, name=self.config.name if self.config else None)
            self._consumed = 0
            self._drawn_seq = -1
            self.session.start()
        self._watch()  # the refresher thread draws from now on
        return self.run_id

    def stop(self) -> None:
        """Ask the run to stop; it ends within one step."""
        if self.session is not None:
            self.session.stop()
        if self._refresher is not None and self._refresher.alive:
            self._refresher.poke()
        else:
            self.refresh()

    def wait(self, timeout: float | None = None) -> dict[str, Any] | None:
        """Block until the run ends (or ``timeout``) and the panels show its end; returns its summary."""
        deadline = None if timeout is None else time.monotonic() + timeout
        if self.session is not None:
            self.session.wait(timeout)
        else:
            while not self.finished and (deadline is None or time.monotonic() < deadline):
                time.sleep(self.interval)
        refresher = self._refresher
        if refresher is not None and refresher.alive:
            # The refresher thread draws the end (one thread draws, so the browser gets the updates in order).
            refresher.join(None if deadline is None else max(0.0, deadline - time.monotonic()) + self.interval + 5)
        else:
            if self.session is None:
                self._poll_store()
            self.refresh()
        if self.session is not None:
            return self.session.summary
        return self.view.ended.summary if self.view.ended is not None else None

    def redraw(self) -> None:
        """Re-render every panel in the browser from its widget's full state.

        Plotly's FigureWidget can miss updates that arrive while its view is still rendering (a
        slow browser at the start of a run); a fresh view draws the complete state.  Called once
        after a run ends; call it yourself if a panel looks blank.
        """
        with self._lock:
            grid, wide = self._grid.children, self._wide.children
            self._grid.children, self._wide.children = (), ()
            self._grid.children, self._wide.children = grid, wide

    def close(self) -> None:
        """Stop redrawing (the run itself goes on) and close the widgets."""
        if self._refresher is not None:
            self._refresher.close()
        self.widget.close()
        for fig in self.figures.values():
            fig.close()

    # -- state -------------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        if self.session is not None:
            return self.session.status in ("queued", "running") and not self.session.done
        return self.run_id is not None and self.view.ended is None and self._store_status() in ACTIVE

    @property
    def finished(self) -> bool:
        """True once the run has ended (or was interrupted); False before it starts."""
        if self.view.ended is not None:
            return True
        if self.session is not None:
            return self.session.done and self._consumed >= len(self.session.events)
        return self.run_id is not None and self._store_status() not in ACTIVE

    def _store_status(self) -> str | None:
        try:
            return self.store.get(self.run_id).status if self.run_id else None
        except KeyError:
            return None

    # -- events in -----------------------------------------------------------------------------------
    def _on_event(self, event: Event) -> None:  # the training thread: mark, never draw
        if self._refresher is not None:
            self._refresher.poke()

    def _fold_session_events(self) -> bool:
        if self.session is None:
            return False
        events = self.session.events
        new = events[self._consumed : len(events)]
        self._consumed += len(new)
        return self.view.extend(new)

    def _poll_store(self) -> bool:
        if self.run_id is None or self.session is not None:
            return False
        with self._lock:
            return self.view.extend(self.store.events(self.run_id, after_seq=self.view.last_seq))

    def _watch(self) -> None:
        """Start the refresher thread while the run can still change."""
        if self.finished or self.run_id is None:
            return
        if self._refresher is not None and self._refresher.alive:
            if not self._refresher.finishing:
                return
            self._refresher.close()  # the previous run's refresher is settling: this run gets its own
        poll = None if self.session is not None else self._poll_store
        self._refresher = Refresher(
            self.refresh, interval=self.interval, finished=lambda: self.finished, poll=poll, on_finish=self._settle
        )
        if self.session is not None:
            self._refresher.poke()

    def _settle(self) -> None:
        time.sleep(max(1.0, 2 * self.interval))  # let the browser apply the last updates, then redraw
        self.redraw()

    # -- drawing -----------------------------------------------------------------------------------
    def refresh(self) -> bool:
        """Fold in new events and redraw what changed now; True if the panels were redrawn."""
        with self._lock:
            self._fold_session_events()
            redraw = self.view.last_seq != self._drawn_seq
            if redraw:
                for name, fig in self._figures().items():
                    sync_figure(self.figures[name], fig)
                self.generations.value = table_html(generations_table(self.view.evals), empty="no evaluation yet")
                self._drawn_seq = self.view.last_seq
            self._draw_status()
            return redraw

    def _draw_status(self) -> None:
        view = self.view
        status = (
            self.session.status
            if self.session is not None
            else (view.status if view.started or view.ended else (self._store_status() or "created"))
        )
        if view.ended is not None:
            status = view.ended.status
        name = f" · {html.escape(view.name)}" if view.name else ""
        model = view.config.get("model") or (self.config.model if self.config else "")
        self.title.value = (
            f"<b>DP Workbench run</b> <code>{html.escape(self.run_id or '(not started)')}</code>{name}"
            + (f" · model <code>{html.escape(str(model))}</code>" if model else "")
        )
        final = view.final_epsilon if view.ended is not None else None  # an ended run: its summary's epsilon
        info = progress(view.started, view.latest_step, time.time(), final_epsilon=final)
        self.progress_bar.value = info["fraction"]
        self.progress_bar.bar_style = {"finished": "success", "failed": "danger", "stopped": "warning"}.get(
            status, "info"
        )
        line = f"{status}: {info['text']}" if view.started else status
        if view.ended is not None and view.ended.reason:
            line += f" — {view.ended.reason}"
        if view.started is not None:
            line += f" · {relation_text(view.started.neighboring, view.started.privacy_unit)}"
        seeded = view.started is not None and view.started.seeded_randomness
        if seeded:
            line += f" · WARNING: {SEEDED_LABEL} (noise_seed is set)"
        if view.started is not None:  # the cached frozen prefix: planned, then (ended) what it did
            summary = view.ended.summary if view.ended is not None else {}
            cache = prefix_cache_text(summary.get("prefix_cache")) or prefix_cache_text(
                view.started.prefix_cache, lora_layers=(view.config or {}).get("lora_layers")
            )
            if cache:
                line += f" · {cache}"
        self.status.value = status_html(
            line, color=STATUS_COLORS.get(status, "#333"), bold=status == "failed" or seeded
        )
        self.start_button.disabled = self.config is None or self.running
        self.stop_button.disabled = not (self.session is not None and self.running)


def _as_config(config: RunConfig | dict | None, overrides: dict[str, Any]) -> RunConfig:
    if config is None:
        config = RunConfig()
    elif isinstance(config, dict):
        config = RunConfig.from_dict(config)
    return config.with_overrides(overrides) if overrides else config


def _stored_config(data: dict[str, Any]) -> RunConfig | None:
    """A stored run's settings, or None when they no longer validate (Start is then disabled)."""
    try:
        return RunConfig.from_dict(data) if data else None
    except ValueError:
        return None
