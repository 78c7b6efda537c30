"""The app's Compare panels in a notebook: several stored runs (or whole sweeps) side by side.

    compare(["20260101-120000-abc123", "20260101-121500-def456"])
    compare("my-sweep", group_by=["target_epsilon"], x="epsilon")   # a sweep's groups, seeds aggregated

Loss and epsilon curves overlaid, the privacy-utility scatter, and the settings that differ,
all built by ``workbench.present``; below them the runs grouped by setting (seeds aggregated: mean and a
band) against step, epsilon spent, tokens or wall time, the privacy-utility frontier with its Pareto
front, parallel coordinates and the group table, with controls for the grouping, the x axis and the
band.  ``refresh()`` re-reads the store (e.g. while a run trains).
"""

from __future__ import annotations

from typing import Any, Sequence

import ipywidgets as w

from workbench.present import RunView, compare_figures, privacy_utility_scatter, settings_diff_table
from workbench.present.compare import (
    X_AXES,
    differing_keys,
    group_panels,
    grouped_figure,
    parcoords_figure,
    resolve_runs,
)
from workbench.store.runs import RunStore
from workbench.widgets._html import table_html
from workbench.widgets._live import figure_widget, sync_figure


class Comparison:
    """Compare panels for ``run_ids`` (full ids or unique prefixes) read from ``store``."""

    def __init__(
        self,
        run_ids: Sequence[str],
        *,
        store: RunStore | None = None,
        width: int = 980,
        group_by: Sequence[str] | None = None,
        x: str = "epsilon",
        band: str = "sd",
    ) -> None:
        if isinstance(run_ids, str):
            run_ids = [run_ids]
        if not run_ids:
            raise ValueError("compare() needs at least one run id; `workbench runs list` shows them")
        self.store = store or RunStore()
        run_ids = resolve_runs(self.store, run_ids)  # sweep names become their runs; CompareError names a wrong one
        self.records = [self.store.get(r) for r in run_ids]
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
        # the groups: seeds aggregated, curves aligned on the chosen x axis
        for name in ("group_loss", "group_metric", "frontier"):
            self._widths[name] = half if name != "frontier" else width
        self._widths["parcoords"] = width
        blank = grouped_figure([], "loss", "step")
        for name in ("group_loss", "group_metric", "frontier"):
            self.figures[name] = figure_widget(self._sized(name, blank))
        self.figures["parcoords"] = figure_widget(self._sized("parcoords", parcoords_figure([])))
        self.group_by = w.SelectMultiple(description="group by", rows=4, layout=w.Layout(width="340px"))
        self.x_axis = w.Dropdown(options=[(label, key) for key, label in X_AXES.items()], value=x, description="x axis")
        self.band = w.Dropdown(options=[("± sd", "sd"), ("min–max", "minmax")], value=band, description="band")
        self.groups_table = w.HTML()
        self._initial_group_by = tuple(group_by or ())
        self._updating = False
        controls = w.HBox([self.group_by, w.VBox([self.x_axis, self.band])])
        group_grid = w.GridBox(
            [self.figures["group_loss"], self.figures["group_metric"]],
            layout=w.Layout(grid_template_columns="repeat(2, max-content)", grid_gap="4px 8px"),
        )
        self.widget = w.VBox(
            [
                grid,
                self.figures["privacy_utility"],
                w.HTML("<b>Settings that differ</b>"),
                self.settings,
                w.HTML("<b>Groups</b> (empty group-by: every setting that differs but the seed)"),
                controls,
                group_grid,
                self.figures["frontier"],
                self.figures["parcoords"],
                self.groups_table,
            ]
        )
        self.widget.add_class("workbench-compare")
        self.refresh()
        for control in (self.group_by, self.x_axis, self.band):
            control.observe(lambda _change: None if self._updating else self.regroup(), names="value")

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
        for view, rec in zip(self.views, self.records):
            view.config = view.config or dict(rec.config)
        keys = differing_keys(self.views)
        chosen = tuple(k for k in (self.group_by.value or self._initial_group_by) if k in keys)
        self._initial_group_by = ()
        self._updating = True  # one redraw below, not one per control change
        try:
            self.group_by.options = keys
            self.group_by.value = chosen
        finally:
            self._updating = False
        self.regroup()

    def regroup(self) -> None:
        """Redraw the groups with the current group-by, x axis and band."""
        panels = group_panels(self.views, list(self.group_by.value) or None, self.x_axis.value, band=self.band.value)
        for name, fig in panels.figures.items():
            sync_figure(self.figures[name], self._sized(name, fig))
        self.groups = panels.groups
        self.group_table = panels.table
        self.groups_table.value = table_html(self.group_table, empty="no runs")

    def _sized(self, name: str, fig):
        return fig.update_layout(width=self._widths[name], autosize=False)  # plotly widgets ignore their box

    def _repr_mimebundle_(self, **kwargs: Any):
        return self.widget._repr_mimebundle_(**kwargs)


def compare(
    run_ids: Sequence[str] | str,
    *,
    store: RunStore | None = None,
    width: int = 980,
    group_by: Sequence[str] | None = None,
    x: str = "epsilon",
    band: str = "sd",
) -> Comparison:
    """The Compare panels for ``run_ids`` (run ids, unique prefixes or sweep names); display it in a notebook."""
    return Comparison(run_ids, store=store, width=width, group_by=group_by, x=x, band=band)
