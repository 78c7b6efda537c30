"""Normalising: a table of rows -> a validated `Dataset` of `Record`s (schema detection, fields, labels)."""

from __future__ import annotations

import json
import re
from typing import Any, Sequence

from workbench.engine.data.records import (
    _ALIASES,
    _CHAT_ROLES,
    _SCHEMA_HELP,
    _SCHEMA_ROLES,
    DataError,
    Dataset,
    Record,
    _preview,
    _Table,
)

# ---------------------------------------------------------------------------------------------
# Normalising: a table -> a validated Dataset of Records
# ---------------------------------------------------------------------------------------------


def _build_dataset(table: _Table, mapping: dict[str, str]) -> Dataset:
    roles = _resolve_roles(table, mapping)
    schema = _detect_schema(table, roles, mapping)
    required, optional = _SCHEMA_ROLES[schema]
    used = {r: roles[r] for r in required + optional if r in roles}
    records = tuple(_make_record(table, line, row, schema, used) for line, row in table.rows)
    task = "classification" if schema == "classification" else "causal_lm"
    label_names = _label_names(records)
    if task == "classification":
        _check_two_labels(table, used["label"], label_names, len(records))
    return Dataset(
        name=table.name,
        schema=schema,
        task=task,
        records=records,
        columns=used,
        label_names=label_names,
        answer_template=_detect_answer_template(records, label_names),
    )


def normalise_row(
    row: dict, columns: dict[str, str] | None = None, *, name: str = "row", line: int | None = None
) -> Record:
    """One row -> its `Record`, by the rules `load_dataset` applies to a file's rows (the roles from
    ``columns``, then the standard column names, and the schema they give), on this row alone: what a row
    becomes depends on no other row. A row of a file whose rows share their columns becomes the record the
    file's loading gives it. DataError when the row does not normalise (no recognised schema, an empty field)."""
    table = _Table(name, [(line, row)], list(row))
    mapping = dict(columns or {})
    roles = _resolve_roles(table, mapping)
    schema = _detect_schema(table, roles, mapping)
    required, optional = _SCHEMA_ROLES[schema]
    used = {r: roles[r] for r in required + optional if r in roles}
    return _make_record(table, line, row, schema, used)


def _resolve_roles(table: _Table, mapping: dict[str, str]) -> dict[str, str]:
    """role -> column: the user's mapping first, then the standard names."""
    by_lower = {c.lower(): c for c in table.columns}
    roles = {}
    for role, column in mapping.items():
        if column not in table.columns:
            raise DataError(
                f"{table.name}: column '{column}' (mapped to {role}) not found. Columns in the "
                f"file: {', '.join(map(str, table.columns))}. Fix the `columns` mapping."
            )
        roles[role] = column
    taken = set(roles.values())
    for role, aliases in _ALIASES.items():
        if role in roles:
            continue
        column = next((by_lower[a] for a in aliases if a in by_lower), None)
        if column is not None and column not in taken:
            roles[role] = column
    return roles


def _detect_schema(table: _Table, roles: dict[str, str], mapping: dict[str, str]) -> str:
    # A schema using a role the user mapped explicitly wins over one found by column names.
    order = sorted(_SCHEMA_ROLES, key=lambda s: not set(mapping) & set(_SCHEMA_ROLES[s][0]))
    for schema in order:
        if all(r in roles for r in _SCHEMA_ROLES[schema][0]):
            return schema
    raise DataError(
        f"{table.name}: cannot tell which schema the data uses. Columns found: "
        f"{', '.join(map(str, table.columns)) or 'none'}. Recognised schemas: {_SCHEMA_HELP}. "
        "Map your column names to these roles with `columns`, "
        "e.g. columns={'prompt': 'question', 'response': 'answer'}."
    )


def _make_record(table: _Table, line: int | None, row: dict, schema: str, used: dict[str, str]) -> Record:
    def text(role: str, required: bool = True) -> str | None:
        return _text_field(table, line, row, role, used[role], required)

    label = _label_field(table, line, row, used["label"], schema == "classification") if "label" in used else None
    user = _user_field(table, line, row, used["user_id"]) if "user_id" in used else None
    messages, body = None, None
    if schema == "chat":
        messages = _chat_messages(table, line, row.get(used["messages"]), used["messages"])
    elif schema == "alpaca":
        extra = text("input", required=False) if "input" in used else None
        prompt = text("instruction") + (f"\n\n{extra}" if extra else "")
        messages = _turns(prompt, text("output"))
    elif schema == "prompt_response":
        messages = _turns(text("prompt"), text("response"))
    else:
        body = text("text")
    return Record(messages=messages, text=body, label=label, user_id=user, line=line)


def _turns(prompt: str, response: str) -> tuple[dict, ...]:
    return ({"role": "user", "content": prompt}, {"role": "assistant", "content": response})


def _text_field(table: _Table, line: int | None, row: dict, role: str, column: str, required: bool) -> str | None:
    value = row.get(column)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = _scalar_str(value)  # a number as text; NaN (a missing value) -> None
    if value is not None and not isinstance(value, str):
        raise DataError(
            f"{table.where(line)}, column '{column}' ({role}): expected text, found "
            f"{type(value).__name__} {_preview(value)}. Make it a string."
        )
    value = value.strip() if value is not None else ""
    if not value and required:
        raise DataError(
            f"{table.where(line)}, column '{column}' ({role}): empty. Every example "
            f"needs a {role}; fill it in or remove the {table.unit}."
        )
    return value or None


def _label_field(table: _Table, line: int | None, row: dict, column: str, required: bool) -> str | None:
    raw = row.get(column)
    if isinstance(raw, (list, tuple, dict)):
        raise DataError(
            f"{table.where(line)}, column '{column}' (label): expected one label, "
            f"found {_preview(raw)}. Use a single string or number."
        )
    value = _scalar_str(raw)
    if value is None and required:
        raise DataError(
            f"{table.where(line)}, column '{column}' (label): empty. Every "
            f"classification example needs a label; fill it in or remove the "
            f"{table.unit}."
        )
    return value


def _user_field(table: _Table, line: int | None, row: dict, column: str) -> str:
    value = _scalar_str(row.get(column))
    if value is None:
        raise DataError(
            f"{table.where(line)}, column '{column}' (user_id): empty or not a single value "
            f"({_preview(row.get(column))}). With a user_id column every example needs a user "
            "(user-level privacy counts people); fill it in or drop the column."
        )
    return value


def _scalar_str(value: Any) -> str | None:
    """A label or id as a string: 3 -> "3", 3.0 -> "3", True -> "true"; None or "" -> None."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        if value != value:  # NaN: pandas' and parquet's missing value
            return None
        return str(int(value)) if value.is_integer() else str(value)
    if isinstance(value, (int, str)):
        return str(value).strip() or None
    return None


def _chat_messages(table: _Table, line: int | None, value: Any, column: str) -> tuple[dict, ...]:
    where = f"{table.where(line)}, column '{column}' (messages)"
    if isinstance(value, str) and value.strip().startswith("["):  # JSON inside a CSV cell
        try:
            value = json.loads(value)
        except json.JSONDecodeError as err:
            raise DataError(f"{where}: not valid JSON ({err.msg}). Fix the cell.") from None
    if not isinstance(value, (list, tuple)) or not value:
        raise DataError(
            f"{where}: expected a non-empty list of {{role, content}} turns, found "
            f'{_preview(value)}. Write e.g. [{{"role": "user", "content": '
            f'"..."}}, {{"role": "assistant", "content": "..."}}].'
        )
    turns = tuple(_chat_turn(where, i, t) for i, t in enumerate(value, start=1))
    if turns[-1]["role"] != "assistant":
        raise DataError(
            f"{where}: the last turn is '{turns[-1]['role']}', but it must be the "
            "assistant's reply the model learns to write. Add the reply or drop "
            f"the {table.unit}."
        )
    if not any(t["role"] == "user" for t in turns):
        raise DataError(f"{where}: no user turn. Each conversation needs a user message before the assistant's reply.")
    return turns


def _chat_turn(where: str, i: int, turn: Any) -> dict:
    if not isinstance(turn, dict):
        raise DataError(f"{where}, turn {i}: expected {{role, content}}, found {_preview(turn)}.")
    role = turn.get("role", turn.get("from"))
    content = turn.get("content", turn.get("value"))
    if isinstance(content, list):  # [{"type": "text", "text": ...}] content parts
        content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
    if _CHAT_ROLES.get(str(role).lower()) is None:
        raise DataError(f"{where}, turn {i}: unknown role {role!r}. Use system, user or assistant.")
    if not isinstance(content, str) or not content.strip():
        raise DataError(f"{where}, turn {i} ({role}): empty content. Fill it in or drop the turn.")
    return {"role": _CHAT_ROLES[str(role).lower()], "content": content.strip()}


def _label_names(records: Sequence[Record]) -> tuple[str, ...] | None:
    labels = {r.label for r in records if r.label is not None}
    if not labels:
        return None
    numeric = all(re.fullmatch(r"-?\d+", x) for x in labels)
    return tuple(sorted(labels, key=(lambda x: (int(x), x)) if numeric else None))


def _check_two_labels(table: _Table, column: str, names: tuple[str, ...], n: int) -> None:
    if len(names) < 2:
        raise DataError(
            f"{table.name}, column '{column}' (label): only one distinct label "
            f"({names[0]!r}) in {n} examples; classification needs at least two. "
            "Check the column, or map only `text` to train a language model."
        )


def _detect_answer_template(records: Sequence[Record], names: tuple[str, ...] | None) -> str | None:
    """The shared first line of the responses with the label as a slot, e.g. "Department: {label}",
    when every labelled instruction example's response starts that way; otherwise None."""
    if not names or len(names) < 2:
        return None
    templates = set()
    for r in records:
        if r.messages is None or r.label is None:
            continue
        first = r.messages[-1]["content"].split("\n", 1)[0]
        if r.label not in first or "{" in first or "}" in first:
            return None
        templates.add(first.replace(r.label, "{label}", 1))
        if len(templates) > 1:
            return None
    return templates.pop() if templates else None
