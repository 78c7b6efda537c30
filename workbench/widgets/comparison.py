"""The app's Compare panels in a notebook: several stored runs side by side.

    compare(["20260101-120000-abc123", "20260101-121500-def456"])

Loss and epsilon curves overlaid, the privacy-utility scatter, and the settings that differ,
all built by ``workbench.present``.  ``refresh()`` re-reads the store (e.g. while a run trains).
"""

from __future__ import annotations

from typing import Any, Sequence

import ipywidgets as w

from workbench.present import RunView, compare_figures, privacy_utility_scatter, settings_diff_table
from workbench.store.runs import RunStore
from workbench.widgets._html import table_html
from workbench.widgets._live import figure_widget, sync_figure


class Comparison:
    """Compare panels for ``run_ids`` (full ids or unique prefixes) read from ``store``."""

    def __init__(self, run_ids: Sequence[str], *, store: RunStore | None = None, width: int = 980) -> None:
        if isinstance(run_ids, str):
            run_ids = [run_ids]
        if not run_ids:
            raise ValueError("compare() needs at least one run id; `workbench runs list` shows them")
        self.store = store or RunStore()
        self.records = [self.store.get(r) for r in run_ids]  # RunNotFound names a wrong id
        self.run_ids = [rec.id for rec in self.records]
        self.views: list[RunView] = [RunView(run_id=rec.id, name=rec.name) for rec in self.records]
        half = (width - 8) // 2
        self._widths = {"loss": half, "epsilon": half, "privacy_utility": width}
        loss, eps = compare_figures([])
        initial = {"loss": loss, "epsilon": eps, "privacy_utility": privacy_utility_scatter([])}
        self.figures = {name: figure_widget(self._sized(name, fig)) for name, fig in initial.items()}
        self.settings = w.HTML()
        grid = w.GridBox(
            [self.figures["loss"], self.figures["epsilon"]],
            layout=w.Layout(grid_template_columns="repeat(2, max-content)", grid_gap="4px 8px"),
        )
        self.widget = w.VBox(
            [grid, self.figures["privacy_utility"], w.HTML("<b>Settings that differ</b>"), self.settings]
        )
        self.widget.add_class("workbench-compare")
        self.refresh()

    def refresh(self) -> None:
        """Read new events of every run from the store and redraw."""
        for view in self.views:
            view.extend(self.store.events(view.run_id, after_seq=view.last_seq))
        loss, eps = compare_figures(self.views)
        figures = {"loss": loss, "epsilon": eps, "privacy_utility": privacy_utility_scatter(self.views)}
        for name, fig in figures.items():
            sync_figure(self.figures[name], self._sized(name, fig))
        labels = [v.label for v in self.views]
        labels = [f"{label} ({v.run_id})" if labels.count(label) > 1 else label for label, v in zip(labels, self.views)]
        configs = {label: (v.config or rec.config) for label, v, rec in zip(labels, self.views, self.records)}
        self.table = settings_diff_table(configs)
        self.settings.value = table_html(self.table, empty="the runs' settings are identical")

    def _sized(self, name: str, fig):
        return fig.update_layout(width=self._widths[name], autosize=False)  # plotly widgets ignore their box

    def _repr_mimebundle_(self, **kwargs: Any):
        return self.widget._repr_mimebundle_(**kwargs)


def compare(run_ids: Sequence[str], *, store: RunStore | None = None, width: int = 980) -> Comparison:
    """The Compare panels for ``run_ids``; display the result in a notebook."""
    return Comparison(run_ids, store=store, width=width)
