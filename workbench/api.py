"""The Python API of sweeps (``workbench.sweep``): validate, store and run a sweep from a notebook or a script,
and read its results back. The sweep itself (grids, costs, the process pool) is ``workbench.sweeps``; what its
results look like is the presentation's (``present.compare``, ``present.sweeps``), which is why this sits above
both."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from workbench.config import RunConfig
from workbench.present.sweeps import progress_line
from workbench.store.runs import RunStore
from workbench.store.sweeps import SweepNotFound, SweepRecord, SweepStore
from workbench.sweeps import Progress, SweepError, create_sweep, execute


def run_sweep(
    config: RunConfig | dict | str | Path | None = None,
    *,
    grid: Iterable[str] | Mapping[str, Sequence[Any]] | None = None,
    seeds: int | str | Sequence[int] | None = None,
    name: str | None = None,
    parallel: int = 1,
    tuning: str | None = None,
    mean_runs: float | None = None,
    tuning_shape: float | None = None,
    store: RunStore | None = None,
    progress: bool | Callable[[Progress], None] = True,
    **overrides: Any,
) -> "SweepResult":
    """Validate, store and run a sweep; returns a ``SweepResult`` (its runs, statuses and final numbers).

    >>> import workbench
    >>> result = workbench.sweep(model="tiny", max_steps=3, grid={"target_epsilon": [4, 8]}, seeds=2)  # doctest: +SKIP
    >>> result.table()                                                                                  # doctest: +SKIP
    """
    store = store or RunStore()
    rec = create_sweep(
        config,
        grid=grid,
        seeds=seeds,
        name=name,
        tuning=tuning,
        mean_runs=mean_runs,
        tuning_shape=tuning_shape,
        store=store,
        overrides=overrides,
    )
    callback = _print_progress if progress is True else (progress or None)
    execute(rec.name, store=store, parallel=parallel, progress=callback)
    return SweepResult(rec.name, store)


def resume(
    name: str,
    *,
    store: RunStore | None = None,
    parallel: int = 1,
    progress: bool | Callable[[Progress], None] = True,
) -> "SweepResult":
    """Train what did not finish of sweep ``name`` (SweepError when there is no such sweep)."""
    store = store or RunStore()
    try:
        SweepStore(store).get(name)
    except SweepNotFound as err:
        raise SweepError(str(err)) from None
    callback = _print_progress if progress is True else (progress or None)
    execute(name, store=store, parallel=parallel, progress=callback)
    return SweepResult(name, store)


def _print_progress(p: Progress) -> None:
    print(progress_line(p), file=sys.stderr, flush=True)


@dataclass
class SweepResult:
    """A stored sweep, read from the run store when asked."""

    name: str
    store: RunStore

    @property
    def record(self) -> SweepRecord:
        return SweepStore(self.store).get(self.name)

    @property
    def run_ids(self) -> list[str]:
        return self.record.run_ids

    def statuses(self) -> dict[str, str]:
        sweeps = SweepStore(self.store)
        return {m.label: sweeps.status(m) for m in self.record.members}

    def table(self):
        """The comparison table of the sweep's groups (``present.compare.group_table``) as a pandas DataFrame."""
        import pandas as pd

        from workbench.present.compare import group_table, load_views

        views = load_views(self.store, self.run_ids)
        table = group_table(views)
        return pd.DataFrame(table.rows, columns=table.headers)

    def _repr_html_(self) -> str:
        counts = SweepStore(self.store).counts(self.record)
        return f"<b>sweep {self.name}</b>: " + ", ".join(f"{v} {k}" for k, v in counts.items())

    def __repr__(self) -> str:
        counts = SweepStore(self.store).counts(self.record)
        return f"SweepResult({self.name!r}: " + ", ".join(f"{v} {k}" for k, v in counts.items()) + ")"


__all__ = ["SweepResult", "run_sweep", "resume"]
