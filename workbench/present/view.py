"""RunView: a run's event stream folded into what the dashboard panels need.

Built incrementally (``view.add(event)``) so a live dashboard reads only new events from the run
store (``store.events(run_id, after_seq=view.last_seq)``) and long runs stay cheap: the step list
keeps every step's scalars and histogram but only the latest step's per-module dictionaries.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Iterable

from workbench.events import EvalMetrics, Event, RunEnded, RunStarted, StepMetrics, stored_epsilon


@dataclass
class RunView:
    """What is known about one run so far; ``add`` events in order (duplicates by seq are ignored)."""

    run_id: str
    name: str | None = None
    started: RunStarted | None = None
    steps: list[StepMetrics] = field(default_factory=list)  # per-module dicts emptied except the latest
    evals: list[EvalMetrics] = field(default_factory=list)
    ended: RunEnded | None = None
    latest_step: StepMetrics | None = None  # complete, with module_grad_norm / module_noise_std
    last_seq: int = 0
    config: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_events(cls, run_id: str, events: Iterable[Event | tuple[int, Event]], **kw: Any) -> "RunView":
        view = cls(run_id=run_id, **kw)
        view.extend(events)
        return view

    def extend(self, events: Iterable[Event | tuple[int, Event]]) -> bool:
        """Add events, or (seq, event) pairs as ``RunStore.events`` returns them; True if any was new."""
        changed = False
        for item in events:
            if isinstance(item, tuple):
                changed |= self.add(item[1], seq=item[0])
            else:
                changed |= self.add(item)
        return changed

    def add(self, event: Event, *, seq: int | None = None) -> bool:
        """Fold one event in; returns False when ``seq`` was already seen."""
        if seq is not None:
            if seq <= self.last_seq:
                return False
            self.last_seq = seq
        else:
            self.last_seq += 1
        if isinstance(event, StepMetrics):
            if self.latest_step is not None and self.steps:
                self.steps[-1] = dataclasses.replace(self.steps[-1], module_grad_norm={}, module_noise_std={})
            self.steps.append(event)
            self.latest_step = event
        elif isinstance(event, EvalMetrics):
            self.evals.append(event)
        elif isinstance(event, RunStarted):
            self.started = event
            self.config = dict(event.config)
            self.name = self.name or event.config.get("name")
        elif isinstance(event, RunEnded):
            self.ended = event
        return True

    # -- what the panels ask for -------------------------------------------------------------------
    @property
    def label(self) -> str:
        """Short name for legends: the run's name, else its id."""
        return self.name or self.run_id

    @property
    def status(self) -> str:
        """From the events alone: ended status, 'running' once started, else 'queued'."""
        if self.ended is not None:
            return self.ended.status
        return "running" if self.started is not None else "queued"

    @property
    def clip_norm(self) -> float | None:
        if self.started is not None:
            value = self.started.config.get("max_grad_norm")
            return float(value) if value is not None else None
        return None

    @property
    def target_epsilon(self) -> float | None:
        return self.started.target_epsilon if self.started is not None else None

    @property
    def final_epsilon(self) -> float | None:
        """An ended run's epsilon as its summary stores it (``events.stored_epsilon``, the value every surface
        shows); before the end, the epsilon after the last step so far (inf for a non-private run, None before
        any step)."""
        if self.ended is not None and stored_epsilon(self.ended.summary) is not None:
            return stored_epsilon(self.ended.summary)
        if self.latest_step is not None:
            return self.latest_step.epsilon
        return None

    @property
    def last_eval(self) -> EvalMetrics | None:
        return self.evals[-1] if self.evals else None

    def metric(self) -> tuple[str, float] | None:
        """The validation metric to rank by: ('accuracy', a) when present, else ('val_loss', l)."""
        ev = self.last_eval
        if ev is None:
            return None
        if ev.accuracy is not None and not math.isnan(ev.accuracy):
            return "accuracy", float(ev.accuracy)
        return "val_loss", float(ev.val_loss)
