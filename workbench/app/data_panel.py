"""The Plan tab's data panel: what `workbench data FILE` shows, as markdown under the dataset's size.

Pure presentation of ``engine.data.describe_dataset`` (the ``description`` a ``forms.DataInfo`` holds): the
schema the file was read as and the task it gives, which column plays which role, the labels it holds with their
counts (to copy into the Labels field: a private classifier's labels come from the config, never from the data),
the people in it (``user_id``) and what that means for epsilon, and the first examples as the model will read
them. Everything here is read from the private data and stays on this machine.
"""

from __future__ import annotations

from typing import Any, Mapping

TASKS = {
    "classification": "a sequence classifier (text → label; model `minilm` or any encoder or decoder)",
    "prompt_response": "instruction tuning (the loss counts the response tokens only)",
    "alpaca": "instruction tuning (the loss counts the output tokens only)",
    "chat": "instruction tuning on conversations (the loss counts the last reply only)",
    "text": "language modelling on the text",
}
CELL_CHARS = 90  # a table cell's text is cut to this many characters


def data_markdown(description: Mapping[str, Any] | None, *, labels_set: Any = None) -> str:
    """The data panel for ``description`` (describe_dataset's dict); ``labels_set``: the Labels field's text, so
    the panel says whether the labels still need listing. '' without a description."""
    if not description:
        return ""
    d = description
    columns = ", ".join(f"{role} ← `{col}`" for role, col in d.get("columns", {}).items())
    read = (
        f"**Read as** `{d.get('schema')}`: {TASKS.get(d.get('schema'), d.get('task'))} · **columns** {columns or '–'} "
        "(map others in **Columns**, e.g. `text=sentence, label=label`)"
    )
    head = "  \n".join(x for x in (read, _labels_line(d, labels_set), _users_line(d)) if x)
    table = _examples_table(d.get("examples") or [])
    return head + (f"\n\n**First examples** (of {d.get('num_examples', 0):,})\n\n{table}" if table else "")


def _labels_line(d: Mapping[str, Any], labels_set: Any) -> str:
    names = d.get("label_names")
    if not names:
        return ""
    counts = d.get("label_counts") or {}
    found = " · ".join(f"`{n}` {counts.get(n, 0):,}" for n in names)
    listed = ", ".join(str(n) for n in names)
    if d.get("task") != "classification":
        return f"**Labels in this file**: {found} (scored as answer choices: the accuracy)"
    if str(labels_set or "").strip():
        return f"**Labels in this file**: {found}"
    return (
        f"**Labels in this file**: {found}. A private run needs them listed in **Labels** (e.g. `{listed}`): the "
        "classifier's classes are released with the adapter, so they are chosen, never read from the data."
    )


def _users_line(d: Mapping[str, Any]) -> str:
    users = d.get("num_users")
    if not users:
        return "**People**: no `user_id` column, so each example counts as one person (one example = one unit)."
    per = d.get("examples_per_user") or {}
    line = (
        f"**People**: {users:,} (`{d.get('columns', {}).get('user_id', 'user_id')}`), examples per person: min "
        f"{per.get('min')} · median {per.get('median')} · max {per.get('max')}."
    )
    if (per.get("max") or 1) > 1:
        line += (
            " ε for one example does not bound a person with several: choose **Privacy unit: one user** (with "
            "**Max examples per user k**) to protect people."
        )
    return line


def _examples_table(examples: list[dict]) -> str:
    if not examples:
        return ""
    keys = [k for k in ("prompt", "response", "text", "label") if any(k in e for e in examples)]
    if any(e.get("user_id") is not None for e in examples):
        keys.append("user_id")
    head = "| line | " + " | ".join(keys) + " |\n|---|" + "---|" * len(keys)
    rows = [
        "| " + " | ".join([str(e.get("line", "")), *(_cell(e.get(k), tail=k == "prompt") for k in keys)]) + " |"
        for e in examples
    ]
    return head + "\n" + "\n".join(rows)


def _cell(value: Any, *, tail: bool = False) -> str:
    """One line of at most CELL_CHARS characters; ``tail``: its end (a prompt's last turn, after the system's)."""
    text = " ".join(str("" if value is None else value).split())
    if len(text) > CELL_CHARS:
        text = "…" + text[-(CELL_CHARS - 1) :] if tail else text[: CELL_CHARS - 1] + "…"
    return text.replace("|", "\\|").replace("<", "&lt;")
