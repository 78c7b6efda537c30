"""Jupyter widgets for DP Workbench (needs the ``notebook`` extra: ipywidgets, anywidget).

    from workbench.widgets import Dashboard, PrivacyPlanner, compare

    Dashboard(model="tiny", max_steps=40)   # live training panels with Start / Stop
    PrivacyPlanner()                        # epsilon curves per accountant as the sliders move
    compare([run_a, run_b])                 # stored runs side by side
    Ledger()                                # the privacy ledger: per dataset, its runs and the composed epsilon

Every figure is built by ``workbench.present``, so the notebook shows the app's panels.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Dashboard", "PrivacyPlanner", "PlanSettings", "compare", "Comparison", "Ledger"]


def __getattr__(name: str) -> Any:  # lazy: importing the package does not import ipywidgets/plotly
    if name == "Dashboard":
        from workbench.widgets.dashboard import Dashboard

        return Dashboard
    if name in ("PrivacyPlanner", "PlanSettings"):
        from workbench.widgets import planner

        return getattr(planner, name)
    if name in ("compare", "Comparison"):
        from workbench.widgets import comparison as module

        return getattr(module, name)
    if name == "Ledger":
        from workbench.widgets.ledger import Ledger

        return Ledger
    raise AttributeError(f"module 'workbench.widgets' has no attribute {name!r}")
