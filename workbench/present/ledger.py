"""The privacy ledger for people: per dataset, its runs, their epsilon and the composed total.

Pure functions of ``store.ledger`` values, shared by the app's Runs tab, the ``Ledger`` widget and the
Compare tab's line on the cost of choosing a run; nothing here imports gradio or ipywidgets.
"""

from __future__ import annotations

import html
import math
import time
from typing import Sequence

from workbench.present.compare import Table
from workbench.present.series import fmt_eps

SELECTION_NOTE = "a validation metric computed on private data and used to choose a run is part of the selection"
HEADERS = ["run", "name", "trained", "steps", "δ", "ε", "relation", "note"]


def ledger_table(dataset) -> Table:
    """One dataset's runs (a ``store.ledger.DatasetLedger``), oldest first."""
    rows = []
    for e in dataset.entries:
        rows.append(
            [
                e.run_id,
                e.name or "",
                time.strftime("%Y-%m-%d %H:%M", time.localtime(e.time)),
                e.steps,
                f"{e.delta:.2g}",
                fmt_eps(e.epsilon),
                e.neighboring,
                e.note or "",
            ]
        )
    return Table(list(HEADERS), rows)


def total_text(dataset) -> str:
    """'total ε = 0.888 at δ = 1e-05 (PLD composition of 2 runs, replace_one)', or why there is none."""
    total = dataset.total
    if not total.runs:
        return "no runs count towards the total (every run on this data was forgotten)"
    if total.epsilon is None:
        return f"no total: {total.note}"
    if math.isinf(total.epsilon):
        return f"total ε = ∞: the non-private run {', '.join(total.non_private_runs)} makes the total infinite"
    plural = "s" if total.runs != 1 else ""
    text = (
        f"total ε = {fmt_eps(total.epsilon)} at δ = {total.delta:.2g} per {dataset.privacy_unit} (PLD composition of "
        f"{total.runs} run{plural}, {total.neighboring}; the largest δ among the runs)"
    )
    return text + (f". Note: {total.note}" if total.note else "")


def dataset_title(dataset) -> str:
    paths = ", ".join(dataset.data_paths)
    more = len(dataset.fingerprints) - 1
    return (
        f"{dataset.dataset_name or '?'} ({dataset.privacy_unit}-level) · data {paths or '?'} · "
        f"fingerprint {dataset.fingerprint[:12]}" + (f" and {more} overlapping" if more > 0 else "")
    )


def group_lines(dataset) -> list[str]:
    """Why these runs are one group: the datasets' shared units, the rule a user-level total counts
    example-level runs by, and rows stored before units were kept."""
    from workbench.store.ledger_units import LEGACY_NOTE

    lines = [f"overlap: {line}" for line in dataset.overlap]
    if dataset.rule:
        lines.append(dataset.rule)
    if dataset.legacy:
        lines.append(f"older rows: {LEGACY_NOTE}")
    return lines


def forgotten_lines(dataset) -> list[str]:
    return [
        f"forgotten: {e.label} (ε {fmt_eps(e.epsilon)}) by {f.who} on "
        f"{time.strftime('%Y-%m-%d %H:%M', time.localtime(f.time))}: {f.reason}"
        for e, f in dataset.forgotten
    ]


_CELL = "border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top;"


def ledger_html(datasets: Sequence, *, empty: str = "The privacy ledger is empty: no run has trained yet.") -> str:
    """Every dataset's table, its total and its forgotten runs, as one HTML fragment (escaped)."""
    if not datasets:
        return f"<p style='color:#777'><i>{html.escape(empty)}</i></p>"
    parts = []
    for d in datasets:
        table = ledger_table(d)
        head = "".join(f"<th style='{_CELL}background:#f5f5f5'>{html.escape(h)}</th>" for h in table.headers)
        body = "".join(
            "<tr>" + "".join(f"<td style='{_CELL}'>{html.escape(str(v))}</td>" for v in row) + "</tr>"
            for row in table.rows
        )
        extra = "".join(
            f"<div style='color:#777;font-size:12px'>{html.escape(line)}</div>"
            for line in (*group_lines(d), *forgotten_lines(d))
        )
        parts.append(
            f"<div class='wb-ledger' style='margin:6px 0 12px'><b>{html.escape(dataset_title(d))}</b>"
            f"<table style='border-collapse:collapse;font-size:12px;margin:4px 0'><thead><tr>{head}</tr></thead>"
            f"<tbody>{body}</tbody></table><div><b>{html.escape(total_text(d))}</b></div>{extra}</div>"
        )
    return "".join(parts)


def selection_cost_text(entries: Sequence, run_ids: Sequence[str]) -> str:
    """The Compare tab's line: what choosing the best of ``run_ids`` costs (composition of all of them), per
    dataset; ``entries`` are their ledger rows (``Ledger.entries_for``)."""
    from workbench.store.ledger import compose_entries

    by_data: dict[str, list] = {}
    for e in entries:
        by_data.setdefault(e.fingerprint, []).append(e)
    missing = [r for r in run_ids if r not in {e.run_id for e in entries}]
    lines = []
    for rows in by_data.values():
        total = compose_entries(rows)
        where = f" on {rows[0].dataset_name}" if len(by_data) > 1 else ""
        if total.epsilon is None:
            cost = f"cannot be composed ({total.note})"
        elif math.isinf(total.epsilon):
            cost = f"is unbounded (ε = ∞: {', '.join(total.non_private_runs)} is non-private)"
        else:
            cost = (
                f"costs at most ε = {fmt_eps(total.epsilon)} at δ = {total.delta:.2g} (composition of all {len(rows)})"
            )
        lines.append(f"Choosing the best of these {len(rows)} runs{where} {cost}; {SELECTION_NOTE}.")
    if missing:
        lines.append(
            f"Not in the privacy ledger (trained before it existed, still running, or never trained): "
            f"{', '.join(missing)}; their cost is not included."
        )
    return "\n\n".join(lines)
