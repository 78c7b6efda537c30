"""What an epsilon protects, in words: the neighbouring relation, the sentence under every run's epsilon (the CLI's
summary, the app's header, the model card) and what it means for a person. Torch-free, so the Plan tab, the
widgets and the CLI read it without loading the engine; the engine's model card (engine/report.py) uses the same
sentences, which is why they sit beside the mechanism rather than in the presentation."""

from __future__ import annotations

import math
import re


def relation_text(neighboring: str, unit: str) -> str:
    """Plain words for the neighbouring relation, e.g. 'one example replaced by another'."""
    return f"one {unit} replaced by another" if neighboring == "replace_one" else f"one {unit} added or removed"


def _delta_text(delta: float) -> str:
    """1e-05 -> '1e-5', 2.5e-06 -> '2.5e-6'."""
    return re.sub(r"e([-+])0*(\d)", r"e\1\2", f"{delta:.2g}")


def epsilon_sentence(
    epsilon: float | None,
    *,
    delta: float,
    unit: str,
    neighboring: str,
    max_examples_per_user: int | None = None,
    example_epsilon: float | None = None,
    seeded: bool = False,
) -> str:
    """One plain sentence on what the run's epsilon protects, for the command line's summary and the app's header.

    ``unit`` is the run's privacy unit; for users, ``max_examples_per_user`` is the cap k and ``example_epsilon``
    (ELS) the epsilon of one example alone. '' before the first step (``epsilon`` None).

    >>> epsilon_sentence(7.9, delta=1e-5, unit="example", neighboring="add_remove")[:72]
    'ε = 7.9 at δ = 1e-5 bounds how much one example added or removed can cha'
    """
    if epsilon is None:
        return ""
    if not math.isfinite(epsilon):
        return f"ε = ∞: a non-private run (no noise), so nothing bounds what its adapter reveals about any {unit}."
    who = relation_text(neighboring, unit)
    if unit == "user":
        cap = f", at most {max_examples_per_user}" if max_examples_per_user else ""
        alone = f"; one example alone: ε = {example_epsilon:.3g}" if example_epsilon is not None else ""
        who += f" (all of their examples{cap}{alone})"
    text = (
        f"ε = {epsilon:.3g} at δ = {_delta_text(delta)} bounds how much {who} can change what this run released (the adapter "
        "and its noisy gradients); the charts of losses, gradient norms and validation metrics are telemetry from "
        "the private data, not covered."
    )
    if seeded:
        text += " Here it does not hold: the sampling and the noise came from a public seed (noise_seed)."
    return text


def person_sentence(
    epsilon: float | None,
    *,
    people: dict | None,
    unit: str,
    user_sampling: str | None = None,
    max_examples_per_user: int | None = None,
    example_epsilon: float | None = None,
) -> str:
    """One sentence on what ``epsilon`` means for a person, for data with users (``people``: describe.people's
    ``{"users", "max_examples"}``); '' without users or before the first step. A user-level run: the epsilon is the
    person's, at the cap k. An example-level run: a person with several examples is bounded by no cap, and the
    sentence says how to protect people instead of examples.

    >>> person_sentence(8.0, people={"users": 300, "max_examples": 30}, unit="example")[:60]
    'for a person: not bounded by a cap. ε = 8 is per example, an'
    """
    if not people or not people.get("users") or epsilon is None:
        return ""
    if not math.isfinite(epsilon):
        return "for a person: ε = ∞, a non-private run: nothing bounds what it reveals about anyone."
    k, m = max_examples_per_user, people.get("max_examples")
    if unit == "user" and user_sampling == "uls":
        return (
            f"for a person: ε = {epsilon:.3g} covers everything one person contributed (people are sampled, each "
            f"giving the mean of at most k = {k} of their examples)."
        )
    if unit == "user":
        alone = f"; one example alone: ε = {example_epsilon:.3g}" if example_epsilon is not None else ""
        return (
            f"for a person: ε = {epsilon:.3g} covers all of one person's examples (at most k = {k} of each "
            f"person's are used{alone})."
        )
    if m == 1:
        return f"for a person: each of the {people['users']:,} people has one example here, so ε = {epsilon:.3g} is also per person."
    return (
        f"for a person: not bounded by a cap. ε = {epsilon:.3g} is per example, and one of the {people['users']:,} "
        f"people here has {m} examples; to protect people instead of examples set privacy_unit=user with "
        "max_examples_per_user=k (`workbench plan` shows the person's ε at that k)."
    )
