"""The privacy ledger in a notebook: per dataset, every run that trained on it, its ε and the composed total.

    Ledger()            # the same tables as the app's Runs tab
    Ledger().refresh()  # re-read the store (e.g. after a run ends)

The HTML is ``workbench.present.ledger.ledger_html``, so the notebook shows what the app shows.
"""

from __future__ import annotations

from typing import Any

import ipywidgets as w

from workbench.present.ledger import ledger_html
from workbench.store.ledger import Ledger as LedgerStore
from workbench.store.runs import RunStore


class Ledger:
    """The privacy ledger of ``store`` (default: the run store under WORKBENCH_HOME)."""

    def __init__(self, *, store: RunStore | None = None) -> None:
        self.ledger = LedgerStore(store or RunStore())
        self.tables = w.HTML()
        self.button = w.Button(description="Refresh", layout=w.Layout(width="100px"))
        self.button.on_click(lambda _: self.refresh())
        self.widget = w.VBox([w.HTML("<b>Privacy ledger</b>"), self.tables, self.button])
        self.widget.add_class("workbench-ledger")
        self.refresh()

    def refresh(self) -> None:
        """Read the ledger again and redraw the tables."""
        self.datasets = self.ledger.datasets()
        self.tables.value = ledger_html(self.datasets)

    def _repr_mimebundle_(self, **kwargs: Any):
        return self.widget._repr_mimebundle_(**kwargs)
