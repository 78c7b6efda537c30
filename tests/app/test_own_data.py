"""Own data in the app (issue 27 item 3): the Plan tab shows what `workbench data` shows (schema, columns, labels with
their counts, people, the first examples) and takes the columns, the labels and a validation file; the Train tab
lists every shipped model; bad input is a message. The callbacks are called directly (the browser walk is in
test_app_browser.py)."""

from __future__ import annotations

import html
from collections import Counter

import pytest

pytest.importorskip("gradio")

from conftest import app_values as values  # noqa: E402

from workbench.app import forms  # noqa: E402
from workbench.app import plan as plan_tab  # noqa: E402
from workbench.app import train as train_tab  # noqa: E402
from workbench.app.state import Selection  # noqa: E402
from workbench.engine.models import BASE_SOURCE  # noqa: E402

MAPPING = "text=review, label=sentiment, user_id=author"


def write_reviews(path, n=90, people=30):
    """A TSV of reviews under names no schema recognises by itself; person i % people wrote review i."""
    rows = ["review\tsentiment\tauthor"]
    for i in range(n):
        rows.append(f"a {'great' if i % 3 else 'dull'} film, number {i}\t{'pos' if i % 3 else 'neg'}\tp{i % people}")
    path.write_text("\n".join(rows) + "\n")
    return path


def test_the_data_panel_shows_schema_columns_labels_people_and_examples(ctx, tmp_path):
    data = write_reviews(tmp_path / "reviews.tsv")
    own = dict(data_mode="path", data_path=str(data), labels="")
    data_md, _, _, error = plan_tab.update_plan(ctx, values(**own, columns=MAPPING))
    counts = Counter(line.split("\t")[1] for line in data.read_text().splitlines()[1:])  # the oracle: the file
    assert "**Read as** `classification`" in data_md
    assert "text ← `review`, label ← `sentiment`, user_id ← `author`" in data_md
    assert f"`neg` {counts['neg']} · `pos` {counts['pos']}" in data_md
    assert "A private run needs them listed in **Labels** (e.g. `neg, pos`)" in data_md  # Labels still empty
    assert "**People**: 30 (`author`), examples per person: min 3 · median 3.0 · max 3." in data_md
    assert "| 2 | a dull film, number 0 | neg | p0 |" in data_md  # the first example, line 2 of the file
    labelled, *_ = plan_tab.update_plan(ctx, values(**{**own, "labels": "neg, pos"}, columns=MAPPING))
    assert "needs them listed" not in labelled

    unmapped, *_ = plan_tab.update_plan(ctx, values(**own, columns=""))  # review/sentiment: no schema of its own
    assert "review, sentiment, author" in unmapped and "Traceback" not in unmapped
    for bad, said in (
        ("text review", "'text review' is not role=column"),
        ("body=review", "unknown role 'body'"),
        ("text=reviews", "column 'reviews' (mapped to text) not found"),
    ):
        shown = html.unescape(plan_tab.update_plan(ctx, values(**own, columns=bad))[0])
        assert said in shown and "Traceback" not in shown, shown


def test_a_validation_file_is_read_with_the_same_columns_and_counted_apart(ctx, tmp_path):
    data = write_reviews(tmp_path / "train.tsv")
    dev = write_reviews(tmp_path / "dev.tsv", n=21, people=7)
    own = dict(data_mode="path", data_path=str(data), labels="neg, pos", columns=MAPPING)
    data_md, _, _, _ = plan_tab.update_plan(ctx, values(**own, validation_data=str(dev)))
    assert "**N = 90** training examples (21 for validation from dev.tsv; 30 users)" in data_md  # none held out
    cfg = forms.config_from_values(values(**own, validation_data=f"  {dev} "))
    assert cfg.validation_data == str(dev) and cfg.columns == {
        "text": "review",
        "label": "sentiment",
        "user_id": "author",
    }
    assert cfg.labels == ["neg", "pos"]
    missing, *_ = plan_tab.update_plan(ctx, values(**own, validation_data=str(tmp_path / "nope.tsv")))
    assert "nope.tsv" in missing and "Traceback" not in missing


def test_start_checks_labels_and_the_validation_file_before_anything_runs(ctx, tmp_path):
    data = write_reviews(tmp_path / "train.tsv")
    own = dict(data_mode="path", data_path=str(data), columns=MAPPING, batch_size=16, max_steps=2)
    _, message = train_tab.start_run(ctx, Selection(), values(**own, labels=""))
    assert "needs its labels listed in the config" in message and not ctx.sessions
    _, message = train_tab.start_run(ctx, Selection(), values(**own, labels="neg, positive"))
    message = html.unescape(message)
    assert "pos" in message and not ctx.sessions  # a label the list lacks: refused, naming it
    dev = tmp_path / "dev.tsv"
    dev.write_text("review\tsentiment\tauthor\na fine film\tmeh\tq1\n")  # a label the config does not list
    _, message = train_tab.start_run(ctx, Selection(), values(**own, labels="neg, pos", validation_data=str(dev)))
    message = html.unescape(message)
    assert "meh" in message and "dev.tsv" in message and "Traceback" not in message and not ctx.sessions


def test_every_shipped_model_is_offered_and_accepted(ctx, _workbench_home):
    from workbench.app import build_app

    assert set(forms.BUILTIN_MODELS) == set(BASE_SOURCE)  # engine/models.py's shipped models
    for name in forms.BUILTIN_MODELS:
        forms.check_model(name)  # no message
    app = build_app(ctx.store)
    try:
        [model] = [b for b in app.blocks.values() if getattr(b, "elem_id", None) == "model"]
        assert [value for _, value in model.choices] == list(forms.BUILTIN_MODELS)
    finally:
        app.close()
