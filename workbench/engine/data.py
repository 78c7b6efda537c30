"""Training data: read files, recognise their schema, normalise, split, tokenise and collate.

Data flows one way: a file (or the demo, or a hub id) -> `Dataset` of immutable `Record`s ->
`split_validation` -> `tokenize_dataset` -> `TokenizedExample`s -> `collate` -> tensors.
Every problem a user can cause is a `DataError` whose message names the file, the line (or
row / column), the bad value and what to do.

The file is in three parts: reading (files -> rows), normalising (rows -> Dataset), and
tokenising (Dataset -> tensors).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch

__all__ = [
    "DataError", "Record", "Dataset", "SCHEMAS", "ROLES", "load_dataset", "split_validation",
    "apply_labels", "cap_per_user", "check_labels", "align_labels", "TokenizedExample",
    "TokenizeStats", "TokenizedDataset", "tokenize_dataset", "encode_prompt", "collate",
    "describe_dataset", "render_plain",
]

SCHEMAS = ("prompt_response", "alpaca", "chat", "text", "classification")
ROLES = ("prompt", "response", "instruction", "input", "output", "messages", "text", "label",
         "user_id")
FORMATS = (".jsonl", ".json", ".csv", ".tsv", ".parquet")
IGNORE_INDEX = -100  # label value the loss skips (torch.nn.CrossEntropyLoss default)

# Column names recognised for each role without configuration (matched case-insensitively).
_ALIASES: dict[str, tuple[str, ...]] = {
    "messages": ("messages", "conversations"),
    "instruction": ("instruction",),
    "input": ("input",),
    "output": ("output",),
    "prompt": ("prompt", "question", "query"),
    "response": ("response", "answer", "completion"),
    "text": ("text", "sentence"),  # "sentence": GLUE-style TSV (SST-2)
    "label": ("label",),
    "user_id": ("user_id", "userid"),
}
# schema -> (required roles, optional roles), in the order a schema is tried.
_SCHEMA_ROLES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "chat": (("messages",), ("label", "user_id")),
    "alpaca": (("instruction", "output"), ("input", "label", "user_id")),
    "prompt_response": (("prompt", "response"), ("label", "user_id")),
    "classification": (("text", "label"), ("user_id",)),
    "text": (("text",), ("user_id",)),
}
_SCHEMA_HELP = ("prompt_response (prompt, response), alpaca (instruction, optional input, output), "
                "chat (messages: a list of {role, content}), text (text), "
                "classification (text, label); each with an optional user_id")
_CHAT_ROLES = {"system": "system", "user": "user", "human": "user", "assistant": "assistant",
               "gpt": "assistant", "bot": "assistant", "model": "assistant"}


class DataError(ValueError):
    """A problem with the user's data; str(err) is one message saying where, what and what to do."""


@dataclass(frozen=True)
class Record:
    """One training example, whatever the file looked like.

    Instruction data (prompt_response, alpaca, chat) is held as chat `messages`; plain text and
    classification use `text`. `label` is the class (classification) or the task label of
    instruction data; `user_id` is the person the example belongs to (unit of user-level DP).
    """

    messages: tuple[dict, ...] | None
    text: str | None
    label: str | None
    user_id: str | None
    line: int | None = None


@dataclass(frozen=True)
class Dataset:
    """A loaded, validated dataset. `columns` maps each role to the column actually used."""

    name: str
    schema: str
    task: str
    records: tuple[Record, ...]
    columns: dict[str, str]
    label_names: tuple[str, ...] | None
    answer_template: str | None = None
    eval_prompts: tuple[tuple[dict, ...], ...] = ()

    def __len__(self) -> int:
        return len(self.records)

    @property
    def num_users(self) -> int | None:
        """Distinct users, or None when the data has no user_id."""
        users = {r.user_id for r in self.records if r.user_id is not None}
        return len(users) if users else None


# ---------------------------------------------------------------------------------------------
# Reading: a source -> a table of rows, each with the 1-based line (or row) it came from
# ---------------------------------------------------------------------------------------------

@dataclass
class _Table:
    name: str                                  # shown in messages: the file name
    rows: list[tuple[int | None, dict]]        # (line or row number, row)
    columns: list[str]
    unit: str = "line"                         # "line" (text files) or "row" (parquet, hub)

    def where(self, number: int | None) -> str:
        return self.name if number is None else f"{self.name} {self.unit} {number}"


def load_dataset(source: str, *, columns: dict[str, str] | None = None,
                 split: str = "train") -> Dataset:
    """Load `source`: "demo", a .jsonl/.json/.csv/.tsv/.parquet file, a folder holding
    `<split>.<ext>`, or a Hugging Face Hub dataset id (needs `datasets` and a network).

    `columns` maps roles (prompt, response, instruction, input, output, messages, text, label,
    user_id) to the file's column names where they are not the standard ones.
    """
    if source == "demo":
        from .demo_data import demo_dataset
        return demo_dataset()
    _check_column_map(columns, source)
    path = Path(source).expanduser()
    if path.is_dir():
        path = _file_in_folder(path, split)
    if path.is_file():
        table = _read_file(path)
    elif _looks_like_hub_id(source):
        table = _read_hub(source, split)
    else:
        raise DataError(
            f"{source}: no such file. Check the path (formats: {', '.join(FORMATS)}), "
            "or use 'demo' for the built-in demo dataset.")
    return _build_dataset(table, columns or {})


def _check_column_map(columns: dict[str, str] | None, source: str) -> None:
    if columns is None:
        return
    unknown = sorted(set(columns) - set(ROLES))
    if unknown:
        raise DataError(f"{source}: unknown role(s) {unknown} in `columns`. Map these roles to "
                        f"your column names: {', '.join(ROLES)}, e.g. {{'text': 'sentence'}}.")


def _file_in_folder(folder: Path, split: str) -> Path:
    for ext in FORMATS:
        if (folder / f"{split}{ext}").is_file():
            return folder / f"{split}{ext}"
    found = sorted(p.name for p in folder.iterdir() if p.suffix.lower() in FORMATS)
    raise DataError(f"{folder}: a folder with no '{split}' file ({split}.jsonl, {split}.csv, ...). "
                    f"Data files in it: {found or 'none'}. Pass one file, or the split to use.")


def _looks_like_hub_id(source: str) -> bool:
    return (re.fullmatch(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?", source) is not None
            and Path(source).suffix.lower() not in FORMATS)


def _read_file(path: Path) -> _Table:
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise DataError(f"{path.name}: unsupported file type '{suffix or '(none)'}'. "
                        f"Use one of {', '.join(FORMATS)}.")
    empty = DataError(f"{path.name}: the file is empty. Put one example per line (JSONL) "
                      "or per row (CSV/TSV) in it.")
    if path.stat().st_size == 0:
        raise empty
    if suffix == ".parquet":
        table = _read_parquet(path)
    else:
        text = _decode_utf8(path.read_bytes(), path.name)
        if not text.strip():
            raise empty
        reader = {".jsonl": _read_jsonl, ".json": _read_json_array,
                  ".csv": _read_delimited, ".tsv": _read_delimited}[suffix]
        table = reader(text, path.name, suffix)
    if not table.rows:
        raise DataError(f"{path.name}: no examples found (the file has no data rows). "
                        "Add examples, one per line or row.")
    return table


def _decode_utf8(data: bytes, name: str) -> str:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise DataError(
            f"{name} line {line} (byte offset {err.start}): not valid UTF-8 "
            f"(byte 0x{data[err.start]:02x}). Save the file as UTF-8, e.g. "
            f"`iconv -f latin1 -t utf-8 {name} > fixed{Path(name).suffix}`.") from None
    return text.removeprefix("\ufeff")  # byte-order mark some editors write


def _read_jsonl(text: str, name: str, _suffix: str) -> _Table:
    rows, cols = [], {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{name} line {number}: not valid JSON ({err.msg}: column "
                            f"{err.colno}). Fix the line or remove it.") from None
        if not isinstance(row, dict):
            raise DataError(f"{name} line {number}: expected a JSON object like "
                            f'{{"prompt": ..., "response": ...}}, found {type(row).__name__} '
                            f"{_preview(row)}. Put one object per line.")
        rows.append((number, row))
        cols.update(dict.fromkeys(row))
    return _Table(name, rows, list(cols))


def _read_json_array(text: str, name: str, _suffix: str) -> _Table:
    """A JSON array of objects (or {"<split or one key>": [objects]}), with each object's line."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        if err.msg == "Extra data" and text.lstrip().startswith("{"):
            return _read_jsonl(text, name, ".jsonl")  # JSON Lines saved as .json
        raise DataError(f"{name} line {err.lineno}: not valid JSON ({err.msg}: column "
                        f"{err.colno}). Fix the file, or use JSONL (one object per line).") \
            from None
    if isinstance(data, dict):
        lists = [k for k, v in data.items() if isinstance(v, list) and v
                 and all(isinstance(x, dict) for x in v) and k.lower() not in _ALIASES["messages"]]
        if len(lists) != 1:
            raise DataError(f"{name}: expected a JSON array of example objects, found an object "
                            f"with keys {list(data)[:10]}. Write [{{...}}, {{...}}] or use JSONL.")
        items, lines = data[lists[0]], [None] * len(data[lists[0]])
    elif isinstance(data, list):
        items, lines = data, _array_item_lines(text)
    else:
        raise DataError(f"{name}: expected a JSON array of example objects, found "
                        f"{type(data).__name__}. Write [{{...}}, {{...}}] or use JSONL.")
    rows, cols = [], {}
    for i, (item, line) in enumerate(zip(items, lines)):
        if not isinstance(item, dict):
            where = f"line {line}" if line else f"item {i + 1}"
            raise DataError(f"{name} {where}: expected a JSON object, found "
                            f"{type(item).__name__} {_preview(item)}. Each array element must be "
                            "one example object.")
        rows.append((line, item))
        cols.update(dict.fromkeys(item))
    return _Table(name, rows, list(cols))


def _array_item_lines(text: str) -> list[int]:
    """1-based line on which each element of a top-level JSON array starts."""
    decoder, lines = json.JSONDecoder(), []
    ws = re.compile(r"[\s,]*")
    pos, line, counted = text.index("[") + 1, 1, 0
    while True:
        pos = ws.match(text, pos).end()
        if pos >= len(text) or text[pos] == "]":
            return lines
        line += text.count("\n", counted, pos)
        counted = pos
        lines.append(line)
        _, pos = decoder.raw_decode(text, pos)


def _read_delimited(text: str, name: str, suffix: str) -> _Table:
    """CSV (RFC 4180 quoting) or TSV (no quoting, as GLUE writes it: quotes are text)."""
    csv.field_size_limit(2**31 - 1)  # default 128 KiB per field is too small for documents
    if suffix == ".tsv":
        reader = csv.reader(io.StringIO(text, newline=""), delimiter="\t", quoting=csv.QUOTE_NONE)
    else:
        reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header, rows, last = None, [], 0
        for values in reader:
            start, last = last + 1, reader.line_num
            if not values or all(not v.strip() for v in values):
                continue
            if header is None:
                header = [h.strip() for h in values]
                _check_header(header, name)
                continue
            if len(values) != len(header):
                raise DataError(
                    f"{name} line {start}: {len(values)} fields, but the header has "
                    f"{len(header)} ({', '.join(header)}). {_delimiter_advice(suffix)}")
            rows.append((start, dict(zip(header, values))))
    except csv.Error as err:
        raise DataError(f"{name} line {reader.line_num}: cannot parse ({err}). "
                        f"{_delimiter_advice(suffix)}") from None
    if header is None:
        raise DataError(f"{name}: the file has no header row. Make the first row the column "
                        "names, e.g. prompt,response.")
    return _Table(name, rows, header)


def _check_header(header: list[str], name: str) -> None:
    empty = [i + 1 for i, h in enumerate(header) if not h]
    dupes = sorted({h for h in header if header.count(h) > 1})
    if empty or dupes:
        raise DataError(f"{name} line 1: the header needs distinct, non-empty column names; "
                        f"found {header}. Name every column once.")


def _delimiter_advice(suffix: str) -> str:
    if suffix == ".tsv":
        return "In a .tsv file fields are separated by tabs, and a field cannot contain a tab."
    return ('Quote fields that contain commas or line breaks ("like, this"), or save as .tsv.')


def _read_parquet(path: Path) -> _Table:
    import pyarrow.parquet as pq
    try:
        table = pq.read_table(path)
    except Exception as err:  # pyarrow raises several types for a corrupt file
        raise DataError(f"{path.name}: not a readable Parquet file ({_first_line(err)}). "
                        "Re-export it, or save the data as JSONL or CSV.") from None
    rows = [(i + 1, row) for i, row in enumerate(table.to_pylist())]
    return _Table(path.name, rows, list(table.column_names), unit="row")


def _read_hub(source: str, split: str) -> _Table:
    try:
        import datasets  # optional: only for hub ids
    except ImportError:
        raise DataError(f"{source}: no such file, and it cannot be fetched from the Hugging Face "
                        "Hub because the `datasets` package is not installed. Check the path, "
                        "or `pip install datasets` (needs internet).") from None
    try:
        hub = datasets.load_dataset(source, split=split)
    except Exception as err:  # network, auth, unknown id, unknown split: all the same to the user
        raise DataError(
            f"{source}: no such file, and loading it from the Hugging Face Hub failed "
            f"({type(err).__name__}: {_first_line(err)}). The hub may be unreachable or the id "
            f"or split '{split}' wrong. Download the data and pass the local file path, "
            "or use 'demo'.") from None
    rows = [(i + 1, dict(row)) for i, row in enumerate(hub)]
    if not rows:
        raise DataError(f"{source} (split '{split}'): no examples. Choose another split.")
    return _Table(source, rows, list(hub.column_names), unit="row")


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0][:200] if text else type(err).__name__


def _preview(value: Any, limit: int = 60) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str) if not isinstance(value, str) \
        else repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


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
    return Dataset(name=table.name, schema=schema, task=task, records=records, columns=used,
                   label_names=label_names,
                   answer_template=_detect_answer_template(records, label_names))


def _resolve_roles(table: _Table, mapping: dict[str, str]) -> dict[str, str]:
    """role -> column: the user's mapping first, then the standard names."""
    by_lower = {c.lower(): c for c in table.columns}
    roles = {}
    for role, column in mapping.items():
        if column not in table.columns:
            raise DataError(
                f"{table.name}: column '{column}' (mapped to {role}) not found. Columns in the "
                f"file: {', '.join(map(str, table.columns))}. Fix the `columns` mapping.")
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
        "e.g. columns={'prompt': 'question', 'response': 'answer'}.")


def _make_record(table: _Table, line: int | None, row: dict, schema: str,
                 used: dict[str, str]) -> Record:
    def text(role: str, required: bool = True) -> str | None:
        return _text_field(table, line, row, role, used[role], required)

    label = _label_field(table, line, row, used["label"], schema == "classification") \
        if "label" in used else None
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


def _text_field(table: _Table, line: int | None, row: dict, role: str, column: str,
                required: bool) -> str | None:
    value = row.get(column)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = _scalar_str(value)  # a number as text; NaN (a missing value) -> None
    if value is not None and not isinstance(value, str):
        raise DataError(f"{table.where(line)}, column '{column}' ({role}): expected text, found "
                        f"{type(value).__name__} {_preview(value)}. Make it a string.")
    value = value.strip() if value is not None else ""
    if not value and required:
        raise DataError(f"{table.where(line)}, column '{column}' ({role}): empty. Every example "
                        f"needs a {role}; fill it in or remove the {table.unit}.")
    return value or None


def _label_field(table: _Table, line: int | None, row: dict, column: str,
                 required: bool) -> str | None:
    raw = row.get(column)
    if isinstance(raw, (list, tuple, dict)):
        raise DataError(f"{table.where(line)}, column '{column}' (label): expected one label, "
                        f"found {_preview(raw)}. Use a single string or number.")
    value = _scalar_str(raw)
    if value is None and required:
        raise DataError(f"{table.where(line)}, column '{column}' (label): empty. Every "
                        f"classification example needs a label; fill it in or remove the "
                        f"{table.unit}.")
    return value


def _user_field(table: _Table, line: int | None, row: dict, column: str) -> str:
    value = _scalar_str(row.get(column))
    if value is None:
        raise DataError(
            f"{table.where(line)}, column '{column}' (user_id): empty or not a single value "
            f"({_preview(row.get(column))}). With a user_id column every example needs a user "
            "(user-level privacy counts people); fill it in or drop the column.")
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
        raise DataError(f"{where}: expected a non-empty list of {{role, content}} turns, found "
                        f"{_preview(value)}. Write e.g. [{{\"role\": \"user\", \"content\": "
                        f"\"...\"}}, {{\"role\": \"assistant\", \"content\": \"...\"}}].")
    turns = tuple(_chat_turn(where, i, t) for i, t in enumerate(value, start=1))
    if turns[-1]["role"] != "assistant":
        raise DataError(f"{where}: the last turn is '{turns[-1]['role']}', but it must be the "
                        "assistant's reply the model learns to write. Add the reply or drop "
                        f"the {table.unit}.")
    if not any(t["role"] == "user" for t in turns):
        raise DataError(f"{where}: no user turn. Each conversation needs a user message before "
                        "the assistant's reply.")
    return turns


def _chat_turn(where: str, i: int, turn: Any) -> dict:
    if not isinstance(turn, dict):
        raise DataError(f"{where}, turn {i}: expected {{role, content}}, found {_preview(turn)}.")
    role = turn.get("role", turn.get("from"))
    content = turn.get("content", turn.get("value"))
    if isinstance(content, list):  # [{"type": "text", "text": ...}] content parts
        content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
    if _CHAT_ROLES.get(str(role).lower()) is None:
        raise DataError(f"{where}, turn {i}: unknown role {role!r}. Use system, user or "
                        "assistant.")
    if not isinstance(content, str) or not content.strip():
        raise DataError(f"{where}, turn {i} ({role}): empty content. Fill it in or drop the "
                        "turn.")
    return {"role": _CHAT_ROLES[str(role).lower()], "content": content.strip()}


def _label_names(records: Sequence[Record]) -> tuple[str, ...] | None:
    labels = {r.label for r in records if r.label is not None}
    if not labels:
        return None
    numeric = all(re.fullmatch(r"-?\d+", x) for x in labels)
    return tuple(sorted(labels, key=(lambda x: (int(x), x)) if numeric else None))


def _check_two_labels(table: _Table, column: str, names: tuple[str, ...], n: int) -> None:
    if len(names) < 2:
        raise DataError(f"{table.name}, column '{column}' (label): only one distinct label "
                        f"({names[0]!r}) in {n} examples; classification needs at least two. "
                        "Check the column, or map only `text` to train a language model.")


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


# ---------------------------------------------------------------------------------------------
# Validation split
# ---------------------------------------------------------------------------------------------

def split_validation(ds: Dataset, *, fraction: float, seed: int) -> tuple[Dataset, Dataset]:
    """Hold out about `fraction` of the users (or of the examples when there are no users).

    With user ids no user is in both parts, so validation measures generalisation to new
    people. Whether a unit (a user, or a record without users) is held out depends only on
    that unit: a keyed hash (BLAKE2b, key derived from `seed`) of its identity -- the user_id,
    or the record's content (messages, text, label; not its line) -- mapped to [0, 1) and held
    out when below `fraction`. Removing or adding one unit therefore leaves every other unit on
    its side, so neighbouring datasets give training sets that differ in exactly that unit, as
    DP accounting assumes (REFERENCES.md section 7). The split is deterministic for `seed` but
    independent of the rest of the data; the held-out share is `fraction` only on average.
    Both parts keep the original order and `label_names`.
    """
    if not 0.0 < fraction < 1.0:
        raise DataError(f"validation fraction must be between 0 and 1 (exclusive); got "
                        f"{fraction}. Use e.g. 0.1 for 10%.")
    by_user = ds.num_users is not None
    salt = _salt("workbench-validation-split", seed)
    held_out: dict[str, bool] = {}  # unit identity -> held out (each unit hashed once)
    is_val = []
    for r in ds.records:
        key = ("user:" + r.user_id if by_user and r.user_id is not None
               else "record:" + _record_identity(r))
        if key not in held_out:
            held_out[key] = _unit_interval(key, salt) < fraction
        is_val.append(held_out[key])
    train = tuple(r for r, v in zip(ds.records, is_val) if not v)
    val = tuple(r for r, v in zip(ds.records, is_val) if v)
    if not train or not val:
        unit = "users" if by_user else "examples"
        n_val = sum(held_out.values())
        raise DataError(
            f"{ds.name}: the validation split (validation_fraction={fraction}) put "
            f"{len(held_out) - n_val} of {len(held_out)} {unit} in training and {n_val} in "
            f"validation; both parts need at least one. Each unit is assigned on its own (by a "
            f"keyed hash, so the split is stable between neighbouring datasets), so with few "
            f"{unit} a part can come out empty. "
            + ("Raise validation_fraction" if not val else "Lower validation_fraction")
            + ", add data, or give a separate validation_data file.")
    return replace(ds, records=train), replace(ds, records=val)


def _salt(purpose: str, seed: int) -> bytes:
    """Key for BLAKE2b (at most 64 bytes) derived from a purpose string and the seed."""
    return hashlib.blake2b(f"{purpose}:{seed}".encode(), digest_size=32).digest()


def _keyed_digest(identity: str, salt: bytes) -> bytes:
    return hashlib.blake2b(identity.encode("utf-8"), key=salt, digest_size=16).digest()


def _unit_interval(identity: str, salt: bytes) -> float:
    """A float in [0, 1) that depends only on `identity` and `salt` (53 bits of the hash)."""
    return (int.from_bytes(_keyed_digest(identity, salt)[:8], "little") >> 11) / 2.0**53


def _record_identity(r: Record) -> str:
    """A record's identity by content (canonical JSON), never by its position in the file."""
    return json.dumps({"messages": list(r.messages) if r.messages is not None else None,
                       "text": r.text, "label": r.label},
                      sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def apply_labels(ds: Dataset, labels: Sequence[str] | None) -> tuple[Dataset, str | None]:
    """Fix the label set from the run config instead of inferring it from the private data.

    With `labels` (class names from the config) the dataset gets `label_names=tuple(labels)`;
    a label in the data that `labels` does not list is a DataError naming it. With
    `labels=None` a classification dataset is returned unchanged with a warning: its label set
    was inferred from the data, so a label only one record uses reveals that record.
    """
    if labels is None:
        if ds.task != "classification":
            return ds, None
        return ds, (f"{ds.name}: the label set {list(ds.label_names or ())} was inferred from the "
                    "(private) training data, so a label used by a single record reveals that "
                    "record. Set `labels: [...]` in the run config to fix the classes in advance.")
    names = tuple(str(x) for x in labels)
    dupes = sorted({x for x in names if names.count(x) > 1})
    if len(names) < 2 or dupes:
        raise DataError(f"`labels` in the config must list at least two distinct class names; "
                        f"got {list(names)}. List each class once, e.g. "
                        "labels: [negative, positive], or leave `labels` out.")
    found = {r.label for r in ds.records if r.label is not None}
    unknown = sorted(found - set(names))
    if unknown:
        raise DataError(f"{ds.name}: label(s) {unknown} occur in the data but are not in "
                        f"`labels` {list(names)} from the config. Add them to `labels` in the "
                        "config, or fix the data.")
    return replace(ds, label_names=names), None


def cap_per_user(examples: Sequence, *, k: int, how: str, seed: int, name: str) -> list:
    """User-level DP: every example needs a user, and each user keeps at most `k` examples.

    `examples` have `.user_id` and `.input_ids` (e.g. `TokenizedExample`s). how="longest" keeps
    a user's k longest (ties by file order); how="random" draws k with a generator seeded by a
    keyed hash of (seed, user_id) only, so which examples one user keeps does not depend on any
    other user (neighbour stability, REFERENCES.md section 7). Order is preserved.
    """
    if how not in ("random", "longest"):
        raise ValueError(f"cap_per_user: how must be 'random' or 'longest'; got {how!r}.")
    if k < 1:
        raise ValueError(f"cap_per_user: k must be at least 1; got {k}.")
    if any(ex.user_id is None for ex in examples):
        raise DataError(
            f"{name}: privacy_unit=user needs a user_id for every example (a user_id column, or "
            "map one with columns: {user_id: your_column}). Use privacy_unit=example otherwise.")
    by_user: dict[str, list[int]] = {}
    for i, ex in enumerate(examples):
        by_user.setdefault(ex.user_id, []).append(i)
    salt = _salt("workbench-cap-per-user", seed)
    keep: list[int] = []
    for user, idx in by_user.items():
        if len(idx) > k:
            if how == "longest":
                idx = sorted(idx, key=lambda i: (-len(examples[i].input_ids), i))[:k]
            else:
                rng = np.random.default_rng(
                    int.from_bytes(_keyed_digest(str(user), salt), "little"))
                idx = [idx[j] for j in rng.choice(len(idx), size=k, replace=False)]
        keep.extend(idx)
    return [examples[i] for i in sorted(keep)]


def check_labels(train: Dataset, val: Dataset) -> None:
    """Classification: every validation label must occur in training, else DataError naming them."""
    if train.task != "classification" or val.task != "classification":
        return
    seen = {r.label for r in train.records}
    missing = sorted({r.label for r in val.records} - seen)
    if missing:
        raise DataError(f"{val.name}: validation label(s) {missing} never occur in the training "
                        f"data ({train.name}, labels {sorted(seen)}). Fix the labels, or use a "
                        "larger or different validation split.")


def align_labels(train: Dataset, val: Dataset) -> Dataset:
    """`val` checked by `check_labels` and given train's label_names, so label ids agree.

    Use it when validation comes from its own file (its label_names may be a subset).
    """
    check_labels(train, val)
    return replace(val, label_names=train.label_names)


# ---------------------------------------------------------------------------------------------
# Tokenising
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TokenizedExample:
    """Token ids of one example. `labels` are causal-LM targets aligned with input_ids
    (IGNORE_INDEX on prompt tokens; the model shifts them); `label_id` is the class index."""

    input_ids: tuple[int, ...]
    labels: tuple[int, ...] | None
    label_id: int | None
    user_id: str | None
    prompt_len: int


@dataclass(frozen=True)
class TokenizeStats:
    """What tokenisation did: how many examples were cut to max_seq_len or dropped."""

    num_records: int
    num_truncated: int
    num_dropped: int                      # the response was truncated away entirely
    dropped_lines: tuple[int | None, ...]
    lengths: tuple[int, ...]              # full token length of every record, before truncation
    max_seq_len: int


class TokenizedDataset(list):
    """list[TokenizedExample] that also carries the `TokenizeStats` of the call that made it."""

    def __init__(self, examples: Iterable[TokenizedExample], stats: TokenizeStats):
        super().__init__(examples)
        self.stats = stats


def tokenize_dataset(ds: Dataset, tokenizer, *, max_seq_len: int,
                     model_max_length: int | None = None) -> TokenizedDataset:
    """Token ids and targets for every record; the loss counts response tokens only.

    Instruction/chat data goes through `tokenizer.chat_template` when set, else the plain
    "### Instruction: / ### Response:" format; EOS follows each response. Sequences over
    `max_seq_len` lose prompt tokens from the left first; an example left with no response
    token to learn is dropped. Counts are in the result's `.stats`.
    """
    limit = model_max_length if model_max_length is not None else _tokenizer_limit(tokenizer)
    if max_seq_len < 2:
        raise DataError(f"max_seq_len must be at least 2 tokens; got {max_seq_len}.")
    if limit is not None and max_seq_len > limit:
        raise DataError(f"max_seq_len {max_seq_len} is longer than the model's context window "
                        f"({limit} tokens). Set max_seq_len to at most {limit}.")
    encoder = _Encoder(tokenizer, ds.name)
    out, lengths, truncated, dropped = [], [], 0, []
    label_index = {name: i for i, name in enumerate(ds.label_names or ())}
    for rec in ds.records:
        if ds.task == "classification":
            ids, n = encoder.classification(rec.text, max_seq_len)
            lengths.append(n)
            truncated += n > max_seq_len
            if rec.label not in label_index:
                raise DataError(f"{ds.name} line {rec.line}: label {rec.label!r} is not one of "
                                f"{list(label_index)}. Use align_labels(train, val) to tokenise "
                                "a validation set with the training labels.")
            out.append(TokenizedExample(tuple(ids), None, label_index[rec.label], rec.user_id, 0))
            continue
        ids, labels, prompt_len = encoder.causal(rec)
        lengths.append(len(ids))
        if len(ids) > max_seq_len:
            truncated += 1
            ids, labels, prompt_len = _truncate(ids, labels, prompt_len, max_seq_len)
        if all(x == IGNORE_INDEX for x in labels[1:]):  # labels[0] is never a target (shift)
            dropped.append(rec.line)
            continue
        out.append(TokenizedExample(tuple(ids), tuple(labels), None, rec.user_id, prompt_len))
    stats = TokenizeStats(len(ds), truncated, len(dropped), tuple(dropped), tuple(lengths),
                          max_seq_len)
    return TokenizedDataset(out, stats)


def encode_prompt(tokenizer, messages: Sequence[dict]) -> list[int]:
    """Token ids of a prompt (chat turns ending with the user's) ready for generation, formatted
    exactly as `tokenize_dataset` formats training prompts. Append response ids from
    `tokenizer(text, add_special_tokens=False)` to score a candidate answer."""
    return _Encoder(tokenizer, "prompt").prompt(list(messages))


def _tokenizer_limit(tokenizer) -> int | None:
    limit = getattr(tokenizer, "model_max_length", None)
    return int(limit) if isinstance(limit, int) and 0 < limit < 10**7 else None  # 1e30 = unset


def _truncate(ids: list[int], labels: list[int], prompt_len: int,
              max_len: int) -> tuple[list[int], list[int], int]:
    """Keep the whole response when it fits, cutting the prompt from the left; otherwise keep
    up to half the window of prompt (its end) and cut the response from the right."""
    response_len = len(ids) - prompt_len
    keep_prompt = max(max_len - response_len, min(prompt_len, max_len // 2))
    start, stop = prompt_len - keep_prompt, prompt_len + (max_len - keep_prompt)
    return ids[start:stop], labels[start:stop], keep_prompt


class _Encoder:
    """Formats records as the model sees them: segments of (token ids, is-target)."""

    def __init__(self, tokenizer, name: str):
        self.tok, self.name = tokenizer, name
        self.eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
        self.eos_text = tokenizer.eos_token if self.eos else None
        self.template = bool(getattr(tokenizer, "chat_template", None))
        bos = tokenizer.bos_token_id
        leading = tokenizer("", add_special_tokens=True)["input_ids"][:1]
        self.bos = leading if bos is not None and leading == [bos] else []

    def ids(self, text: str) -> list[int]:
        return list(self.tok(text, add_special_tokens=False)["input_ids"]) if text else []

    def classification(self, text: str, max_len: int) -> tuple[list[int], int]:
        ids = self.tok(text, add_special_tokens=True)["input_ids"]
        if len(ids) <= max_len:
            return list(ids), len(ids)
        cut = self.tok(text, add_special_tokens=True, truncation=True, max_length=max_len)
        return list(cut["input_ids"]), len(ids)

    def causal(self, rec: Record) -> tuple[list[int], list[int], int]:
        """(input_ids, labels, prompt_len); prompt_len = tokens before the last response."""
        if rec.messages is None:
            ids = self.bos + self.ids(rec.text) + self.eos
            return ids, list(ids), 0
        segments = self._chat_segments(list(rec.messages), rec.line)
        ids, labels = [], []
        for seg_ids, target in segments:
            ids += seg_ids
            labels += seg_ids if target else [IGNORE_INDEX] * len(seg_ids)
        last = segments[-1]  # the final response (content + EOS) is always the last segment
        return ids, labels, len(ids) - len(last[0])

    def prompt(self, messages: list[dict]) -> list[int]:
        if self.template:
            return self.ids(self._render(messages, True, None))
        return self.bos + self.ids(render_plain(messages))

    def _chat_segments(self, messages: list[dict],
                       line: int | None) -> list[tuple[list[int], bool]]:
        """Alternating (prompt ids, False), (reply ids + EOS, True); the last is the final reply.

        Prompt and reply are tokenised separately, as at generation time (prompt ids, then the
        model's tokens); template text after the final reply (e.g. a newline) is dropped.
        """
        spans = self._template_spans(messages, line) if self.template else _plain_spans(messages)
        segments, prompt = [], ""
        for text, target in spans:
            if target:
                bos = self.bos if not (self.template or segments) else []
                head = bos + self.ids(prompt)
                segments += [(head, False), (self.ids(text) + self.eos, True)]
                prompt = ""
            else:
                prompt += text
        return segments

    def _template_spans(self, messages: list[dict], line: int | None) -> list[tuple[str, bool]]:
        """Split the rendered conversation into (text, is-target) spans, one target per assistant
        turn: the text from where the generation prompt ends to the end of the reply."""
        full = self._render(messages, False, line)
        spans, pos = [], 0
        for i, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            head = self._render(messages[:i], True, line) if i else ""
            start = len(head)
            found = full.find(message["content"], start) if full.startswith(head) else -1
            if found < 0 or start < pos:  # template not prefix-stable: train the last turn only
                return [(self._render(messages[:-1], True, line), False),
                        (messages[-1]["content"], True)]
            end = found + len(message["content"])
            spans += [(full[pos:start], False), (full[start:end], True)]
            pos = end + (len(self.eos_text) if self.eos_text and
                         full.startswith(self.eos_text, end) else 0)
        return spans

    def _render(self, messages: list[dict], generation: bool, line: int | None) -> str:
        try:
            return self.tok.apply_chat_template(messages, tokenize=False,
                                                add_generation_prompt=generation)
        except Exception as err:  # jinja raises for conversations a template does not accept
            where = f"{self.name} line {line}" if line else self.name
            raise DataError(f"{where}: the model's chat template rejected this conversation "
                            f"({_first_line(err)}). Fix the turn order (system, user, assistant, "
                            "...) or remove the example.") from None


def _plain_spans(messages: Sequence[dict]) -> list[tuple[str, bool]]:
    spans, sep = [], ""
    for m in messages:
        if m["role"] == "system":
            spans.append((sep + m["content"] + "\n\n", False))
            sep = ""
        elif m["role"] == "user":
            spans.append((f"{sep}### Instruction:\n{m['content']}\n\n### Response:\n", False))
            sep = ""
        else:
            spans.append((m["content"], True))
            sep = "\n\n"
    return spans


def render_plain(messages: Sequence[dict]) -> str:
    """The plain format used when a tokenizer has no chat template (without EOS), e.g.
    >>> render_plain([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}])
    '### Instruction:\\nHi\\n\\n### Response:\\nYo'
    """
    return "".join(t for t, _ in _plain_spans(messages))


# ---------------------------------------------------------------------------------------------
# Collation
# ---------------------------------------------------------------------------------------------

def collate(batch: Sequence[TokenizedExample], *, pad_id: int, padding_side: str = "right",
            task: str | None = None) -> dict[str, torch.Tensor]:
    """Pad a batch: input_ids and attention_mask (B, T) long; labels (B, T) with IGNORE_INDEX on
    padding for causal LM, or (B,) class ids for classification. An empty batch (Poisson
    sampling can draw one) gives (0, 0) tensors, and labels (0,) when task="classification"."""
    if padding_side not in ("right", "left"):
        raise ValueError(f"padding_side must be 'right' or 'left'; got {padding_side!r}.")
    B = len(batch)
    T = max((len(ex.input_ids) for ex in batch), default=0)
    classify = batch[0].label_id is not None if batch else task == "classification"
    if any((ex.label_id is not None) != classify for ex in batch):
        raise ValueError("collate: a batch mixes classification and language-model examples.")
    input_ids = torch.full((B, T), pad_id, dtype=torch.long)        # (B, T)
    attention = torch.zeros((B, T), dtype=torch.long)                # (B, T)
    labels = torch.full((B, T), IGNORE_INDEX, dtype=torch.long)      # (B, T), causal only
    for i, ex in enumerate(batch):
        n = len(ex.input_ids)
        cols = slice(0, n) if padding_side == "right" else slice(T - n, T)
        input_ids[i, cols] = torch.tensor(ex.input_ids, dtype=torch.long)
        attention[i, cols] = 1
        if not classify:
            labels[i, cols] = torch.tensor(ex.labels, dtype=torch.long)
    if classify:
        labels = torch.tensor([ex.label_id for ex in batch], dtype=torch.long)  # (B,)
    return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}


# ---------------------------------------------------------------------------------------------
# Description (for `workbench data PATH` and the app's data tab)
# ---------------------------------------------------------------------------------------------

def describe_dataset(ds: Dataset, tokenizer=None, *, max_seq_len: int = 512,
                     examples: int = 3) -> dict:
    """A JSON-serialisable summary: schema, sizes, users, labels, token lengths (with a
    tokenizer) and the first `examples` examples exactly as the model will see them."""
    info: dict[str, Any] = {
        "name": ds.name, "schema": ds.schema, "task": ds.task, "columns": dict(ds.columns),
        "num_examples": len(ds), "num_users": ds.num_users,
    }
    if ds.num_users is not None:
        info["examples_per_user"] = _per_user(ds)
    if ds.label_names is not None:
        counts = {name: 0 for name in ds.label_names}
        for r in ds.records:
            if r.label is not None:
                counts[r.label] = counts.get(r.label, 0) + 1
        info["label_names"], info["label_counts"] = list(ds.label_names), counts
    if ds.answer_template is not None:
        info["answer_template"] = ds.answer_template
    if tokenizer is None:
        info["examples"] = [_render_record(r) for r in ds.records[:examples]]
        return info
    tokenized = tokenize_dataset(ds, tokenizer, max_seq_len=max_seq_len)
    stats = tokenized.stats
    info["token_lengths"] = _percentiles(stats.lengths)
    info.update(max_seq_len=max_seq_len, num_truncated=stats.num_truncated,
                num_dropped=stats.num_dropped, dropped_lines=list(stats.dropped_lines)[:20])
    info["examples"] = [_render_tokens(ex, tokenizer, ds) for ex in tokenized[:examples]]
    return info


def _per_user(ds: Dataset) -> dict:
    counts: dict[str, int] = {}
    for r in ds.records:
        counts[r.user_id] = counts.get(r.user_id, 0) + 1
    values = sorted(counts.values())
    return {"min": values[0], "median": float(_quantile(values, 0.5)), "max": values[-1],
            "mean": round(sum(values) / len(values), 2)}


def _percentiles(lengths: Sequence[int]) -> dict:
    values = sorted(lengths)
    if not values:
        return {"p50": 0, "p90": 0, "p99": 0, "max": 0, "mean": 0.0}
    return {"p50": _quantile(values, 0.5), "p90": _quantile(values, 0.9),
            "p99": _quantile(values, 0.99), "max": values[-1],
            "mean": round(sum(values) / len(values), 1)}


def _quantile(sorted_values: Sequence[int], q: float) -> float:
    """Linear-interpolation quantile (numpy's default) of already sorted values."""
    pos = q * (len(sorted_values) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return round(sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo), 1)


def _render_record(r: Record) -> dict:
    out: dict[str, Any] = {"line": r.line, "user_id": r.user_id}
    if r.messages is not None:
        out["prompt"] = render_plain(r.messages[:-1])
        out["response"] = r.messages[-1]["content"]
    else:
        out["text"] = r.text
    if r.label is not None:
        out["label"] = r.label
    return out


def _render_tokens(ex: TokenizedExample, tokenizer, ds: Dataset) -> dict:
    decode = lambda ids: tokenizer.decode(list(ids), skip_special_tokens=False)  # noqa: E731
    out: dict[str, Any] = {"user_id": ex.user_id, "num_tokens": len(ex.input_ids)}
    if ex.label_id is not None:
        out.update(text=decode(ex.input_ids), label=ds.label_names[ex.label_id])
    elif ex.prompt_len:
        out.update(prompt=decode(ex.input_ids[:ex.prompt_len]),
                   response=decode(ex.input_ids[ex.prompt_len:]))
    else:
        out["text"] = decode(ex.input_ids)
    return out
