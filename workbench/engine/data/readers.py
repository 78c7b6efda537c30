"""Reading: a source (a file, a folder, the demo, a hub id) -> a table of rows, each with the line it came from."""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

from workbench.engine.data.normalise import _build_dataset
from workbench.engine.data.records import _ALIASES, FORMATS, ROLES, DataError, Dataset, _first_line, _preview, _Table

# ---------------------------------------------------------------------------------------------
# Reading: a source -> a table of rows, each with the 1-based line (or row) it came from
# ---------------------------------------------------------------------------------------------


def load_dataset(source: str, *, columns: dict[str, str] | None = None, split: str = "train") -> Dataset:
    """Load `source`: "demo", a .jsonl/.json/.csv/.tsv/.parquet file, a folder holding
    `<split>.<ext>`, or a Hugging Face Hub dataset id (needs `datasets` and a network).

    `columns` maps roles (prompt, response, instruction, input, output, messages, text, label,
    user_id) to the file's column names where they are not the standard ones.
    """
    if source == "demo":
        from workbench.engine.data.demo import demo_dataset  # lazy: the demo is built only when asked for

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
            "or use 'demo' for the built-in demo dataset."
        )
    return _build_dataset(table, columns or {})


def _check_column_map(columns: dict[str, str] | None, source: str) -> None:
    if columns is None:
        return
    unknown = sorted(set(columns) - set(ROLES))
    if unknown:
        raise DataError(
            f"{source}: unknown role(s) {unknown} in `columns`. Map these roles to "
            f"your column names: {', '.join(ROLES)}, e.g. {{'text': 'sentence'}}."
        )


def _file_in_folder(folder: Path, split: str) -> Path:
    for ext in FORMATS:
        if (folder / f"{split}{ext}").is_file():
            return folder / f"{split}{ext}"
    found = sorted(p.name for p in folder.iterdir() if p.suffix.lower() in FORMATS)
    raise DataError(
        f"{folder}: a folder with no '{split}' file ({split}.jsonl, {split}.csv, ...). "
        f"Data files in it: {found or 'none'}. Pass one file, or the split to use."
    )


def _looks_like_hub_id(source: str) -> bool:
    return (
        re.fullmatch(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?", source) is not None
        and Path(source).suffix.lower() not in FORMATS
    )


def _read_file(path: Path) -> _Table:
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise DataError(f"{path.name}: unsupported file type '{suffix or '(none)'}'. Use one of {', '.join(FORMATS)}.")
    empty = DataError(f"{path.name}: the file is empty. Put one example per line (JSONL) or per row (CSV/TSV) in it.")
    if path.stat().st_size == 0:
        raise empty
    if suffix == ".parquet":
        table = _read_parquet(path)
    else:
        text = _decode_utf8(path.read_bytes(), path.name)
        if not text.strip():
            raise empty
        reader = {".jsonl": _read_jsonl, ".json": _read_json_array, ".csv": _read_delimited, ".tsv": _read_delimited}[
            suffix
        ]
        table = reader(text, path.name, suffix)
    if not table.rows:
        raise DataError(
            f"{path.name}: no examples found (the file has no data rows). Add examples, one per line or row."
        )
    return table


def _decode_utf8(data: bytes, name: str) -> str:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise DataError(
            f"{name} line {line} (byte offset {err.start}): not valid UTF-8 "
            f"(byte 0x{data[err.start]:02x}). Save the file as UTF-8, e.g. "
            f"`iconv -f latin1 -t utf-8 {name} > fixed{Path(name).suffix}`."
        ) from None
    return text.removeprefix("\ufeff")  # byte-order mark some editors write


def _read_jsonl(text: str, name: str, _suffix: str) -> _Table:
    rows, cols = [], {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(
                f"{name} line {number}: not valid JSON ({err.msg}: column {err.colno}). Fix the line or remove it."
            ) from None
        if not isinstance(row, dict):
            raise DataError(
                f"{name} line {number}: expected a JSON object like "
                f'{{"prompt": ..., "response": ...}}, found {type(row).__name__} '
                f"{_preview(row)}. Put one object per line."
            )
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
        raise DataError(
            f"{name} line {err.lineno}: not valid JSON ({err.msg}: column "
            f"{err.colno}). Fix the file, or use JSONL (one object per line)."
        ) from None
    if isinstance(data, dict):
        lists = [
            k
            for k, v in data.items()
            if isinstance(v, list)
            and v
            and all(isinstance(x, dict) for x in v)
            and k.lower() not in _ALIASES["messages"]
        ]
        if len(lists) != 1:
            raise DataError(
                f"{name}: expected a JSON array of example objects, found an object "
                f"with keys {list(data)[:10]}. Write [{{...}}, {{...}}] or use JSONL."
            )
        items, lines = data[lists[0]], [None] * len(data[lists[0]])
    elif isinstance(data, list):
        items, lines = data, _array_item_lines(text)
    else:
        raise DataError(
            f"{name}: expected a JSON array of example objects, found "
            f"{type(data).__name__}. Write [{{...}}, {{...}}] or use JSONL."
        )
    rows, cols = [], {}
    for i, (item, line) in enumerate(zip(items, lines)):
        if not isinstance(item, dict):
            where = f"line {line}" if line else f"item {i + 1}"
            raise DataError(
                f"{name} {where}: expected a JSON object, found "
                f"{type(item).__name__} {_preview(item)}. Each array element must be "
                "one example object."
            )
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
                    f"{len(header)} ({', '.join(header)}). {_delimiter_advice(suffix)}"
                )
            rows.append((start, dict(zip(header, values))))
    except csv.Error as err:
        raise DataError(f"{name} line {reader.line_num}: cannot parse ({err}). {_delimiter_advice(suffix)}") from None
    if header is None:
        raise DataError(
            f"{name}: the file has no header row. Make the first row the column names, e.g. prompt,response."
        )
    return _Table(name, rows, header)


def _check_header(header: list[str], name: str) -> None:
    empty = [i + 1 for i, h in enumerate(header) if not h]
    dupes = sorted({h for h in header if header.count(h) > 1})
    if empty or dupes:
        raise DataError(
            f"{name} line 1: the header needs distinct, non-empty column names; found {header}. Name every column once."
        )


def _delimiter_advice(suffix: str) -> str:
    if suffix == ".tsv":
        return "In a .tsv file fields are separated by tabs, and a field cannot contain a tab."
    return 'Quote fields that contain commas or line breaks ("like, this"), or save as .tsv.'


def _read_parquet(path: Path) -> _Table:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as err:  # pyarrow raises several types for a corrupt file
        raise DataError(
            f"{path.name}: not a readable Parquet file ({_first_line(err)}). "
            "Re-export it, or save the data as JSONL or CSV."
        ) from None
    rows = [(i + 1, row) for i, row in enumerate(table.to_pylist())]
    return _Table(path.name, rows, list(table.column_names), unit="row")


def _read_hub(source: str, split: str) -> _Table:
    try:
        import datasets  # optional: only for hub ids
    except ImportError:
        raise DataError(
            f"{source}: no such file, and it cannot be fetched from the Hugging Face "
            "Hub because the `datasets` package is not installed. Check the path, "
            "or `pip install datasets` (needs internet)."
        ) from None
    try:
        hub = datasets.load_dataset(source, split=split)
    except Exception as err:  # network, auth, unknown id, unknown split: all the same to the user
        raise DataError(
            f"{source}: no such file, and loading it from the Hugging Face Hub failed "
            f"({type(err).__name__}: {_first_line(err)}). The hub may be unreachable or the id "
            f"or split '{split}' wrong. Download the data and pass the local file path, "
            "or use 'demo'."
        ) from None
    rows = [(i + 1, dict(row)) for i, row in enumerate(hub)]
    if not rows:
        raise DataError(f"{source} (split '{split}'): no examples. Choose another split.")
    return _Table(source, rows, list(hub.column_names), unit="row")
