"""HTML snippets for ipywidgets.HTML: present's tables and one-line status messages, escaped."""

from __future__ import annotations

import html
import math
from typing import Any

from workbench.present import STATUS_COLORS as present_status_colors
from workbench.present import Table

_TABLE_STYLE = "border-collapse:collapse;font-size:12px;margin:4px 0;"
_CELL = "border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top;"


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        if math.isnan(value):
            return "–"
        if math.isinf(value):
            return "∞"
        return f"{value:.4g}"
    return str(value)


def table_html(table: Table, *, empty: str = "nothing to show") -> str:
    """A plain HTML table of ``present.Table`` (headers, rows); ``empty`` when there are no rows."""
    if not table.rows:
        return f"<i style='color:#777'>{html.escape(empty)}</i>"
    head = "".join(f"<th style='{_CELL}background:#f5f5f5'>{html.escape(str(h))}</th>" for h in table.headers)
    body = "".join(
        "<tr>" + "".join(f"<td style='{_CELL}'>{html.escape(_fmt(v))}</td>" for v in row) + "</tr>"
        for row in table.rows
    )
    return f"<table style='{_TABLE_STYLE}'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def status_html(text: str, *, color: str = "#333", bold: bool = False) -> str:
    weight = "600" if bold else "400"
    return f"<span style='color:{color};font-weight:{weight}'>{html.escape(text)}</span>"


STATUS_COLORS = present_status_colors  # one definition: workbench.present.panels
