"""The per-client table of a federated run, round by round (torch-free): the rows each round's ``ClientMetrics``
event carries, which of their columns the run's epsilon covers, and the table a surface shows (the app's Federated
tab, ``workbench federate``), live or for a finished run: the same function of the stored events.

A row is what the server holds of one client after the round:

    client, index, examples (held), sampled (this round), rounds (sampled so far), failed, loss (local),
    update_norm (before clipping), clipped (norm > C, client level only), epsilon (local, record/subject level)

What each level's epsilon covers decides which columns are telemetry (``telemetry_keys``):

- **client** (DP-FedAvg with the server trusted with the clients' raw updates: it clips them). The epsilon covers
  the released, noised aggregate only; nothing per client is released. Every per-client number is server-side
  telemetry: the update norm before clipping and clipped-or-not (from a clinic's raw update: an outlier clinic
  shows), its loss (from its raw records), its size, and who was sampled (the secret draw whose secrecy gives the
  amplification by sampling). Shown marked, for the operator's eyes, never exported without the telemetry.
- **record / subject** (each client's DP-SGD is the mechanism; the server is not trusted with raw data). A
  client's update is its released adapter minus the global one, so its norm is post-processing of a DP release,
  covered by the client's local epsilon; the local epsilon follows from its plan, its size is its plan's dataset
  size (published as a centralised run's is), and the server's client sampling is not part of the mechanism
  (each client counted as sampled every round). The client's training loss is computed from its raw records and
  not covered by its epsilon: it is the client's local telemetry, marked as such.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Sequence

# (key, header) in the table's order
COLUMNS: tuple[tuple[str, str], ...] = (
    ("client", "client"),
    ("examples", "examples held"),
    ("sampled", "sampled this round"),
    ("rounds", "rounds sampled"),
    ("failed", "failed"),
    ("loss", "local loss"),
    ("update_norm", "update norm (before clipping)"),
    ("clipped", "clipped (norm > C)"),
    ("epsilon", "local ε"),
)
TELEMETRY_MARK = " †"
TELEMETRY_CAPTION = (
    "† telemetry, not covered by ε: computed from a client's raw data (or the server's secret choice of clients); "
    "for the operator's eyes, never exported without the telemetry."
)


def telemetry_keys(level: str) -> list[str]:
    """The row keys the ``level``'s epsilon does not cover (module docstring)."""
    if level == "client":
        return ["examples", "sampled", "rounds", "failed", "loss", "update_norm", "clipped"]
    return ["loss"]


def client_rows(
    *,
    names: Sequence[str],
    sizes: Sequence[int],
    replies: Sequence[dict],
    norms: Sequence[float],
    failed: Sequence[int],
    rounds: dict[int, int],
    clip: float | None,
    level: str,
) -> list[dict[str, Any]]:
    """One row per client after a round: ``replies`` are the sampled clients' metrics (with their ``client``
    index), ``norms`` their updates' norms in the same order, ``failed`` the indices of sampled clients that
    failed, ``rounds`` the rounds each client was sampled in so far (updated here)."""
    heard = {int(m["client"]): (m, n) for m, n in zip(replies, norms)}
    for c in [*heard, *failed]:
        rounds[c] = rounds.get(c, 0) + 1
    rows = []
    for c, name in enumerate(names):
        reply, norm = heard.get(c, (None, None))
        local_eps = reply.get("epsilon") if reply is not None and level != "client" else None
        rows.append(
            {
                "client": name,
                "index": c,
                "examples": int(sizes[c]),
                "sampled": reply is not None or c in failed,
                "rounds": rounds.get(c, 0),
                "failed": c in failed,
                "loss": None if reply is None else _num(reply.get("loss")),
                "update_norm": None if norm is None else float(norm),
                "clipped": None if norm is None or clip is None or level != "client" else bool(norm > clip),
                "epsilon": None if local_eps is None else _num(float(local_eps)),
            }
        )
    return rows


def _num(x: Any) -> float | None:
    return None if x is None or not math.isfinite(float(x)) else float(x)


def table(event) -> tuple[list[str], list[list[Any]]]:
    """(headers, rows) of one ``ClientMetrics`` event, as a surface shows them (numbers rounded, None as blank)."""
    marked = set(event.telemetry)
    heads = [h + (TELEMETRY_MARK if k in marked else "") for k, h in COLUMNS]
    return heads, [[_cell(row.get(k)) for k, _ in COLUMNS] for row in event.rows]


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return "" if not math.isfinite(value) else float(f"{value:.4g}")
    return value


def latest(events: Iterable) -> Any:
    """The last ``ClientMetrics`` among ``events`` (events or (seq, event) pairs, as ``RunStore.events`` gives),
    or None."""
    last = None
    for item in events:
        event = item[1] if isinstance(item, tuple) else item
        if getattr(event, "kind", None) == "clients":
            last = event
    return last


def stored_table(store, run_id: str) -> tuple[list[str], list[list[Any]]] | None:
    """The table of run ``run_id``'s latest round in ``store`` (live or finished: the same rows), or None before
    its first round (or for a run that is not federated)."""
    event = store.latest(run_id, "clients")
    return None if event is None else table(event)
