"""The counts a plan is made from: the one function that turns a training split into (N, users).

N is what the sampling draws from before q: the training examples, after the per-user cap under user-level DP
(each user keeps at most k examples); users counts the people of the training split (validation holds out whole
users). The run (``engine.prepare.dataset_sizes``), the app's Plan tab (``app.forms.DataInfo.sizes``),
`workbench check`, `workbench plan` and sweeps all count with it, so they plan with the same q.
"""

from __future__ import annotations

from typing import Iterable


def unit_sizes(
    *, examples: int, user_counts: Iterable[int] | None, privacy_unit: str, k: int
) -> tuple[int, int | None]:
    """(N, users): ``examples`` and the users at the example level; under user-level DP the examples after each
    user's cap k (``user_counts``: each user's examples in the training split)."""
    counts = list(user_counts or ())
    users = len(counts) or None
    if privacy_unit != "user" or not counts:
        return examples, users
    return sum(min(n, k) for n in counts), users
