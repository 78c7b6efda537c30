"""A classifier read against the class prior (issue 27 items 3 and 4): the evaluation counts which class the model
predicts and for what share of the examples, the validation labels' majority class is the baseline beside the
untuned model (telemetry: never exported), a run at the prior is said plainly with a hint, and on data with people
the summary and `workbench check` say in one sentence what epsilon means for a person."""

from __future__ import annotations

import contextlib
import json
import re
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from factories import TINY_RUN
from typer.testing import CliRunner

from workbench.cli import app
from workbench.config import RunConfig
from workbench.engine.data import TokenizedExample
from workbench.engine.evaluate import evaluate, majority_class
from workbench.engine.prepare import dataset_sizes, load_splits
from workbench.planning.plan import make_plan
from workbench.planning.wording import person_sentence
from workbench.present.diagnostics import baseline_text, class_prior_text
from workbench.store.export import export_run
from workbench.store.runs import RunStore


class _Classifier(torch.nn.Module):
    """Logits over 3 classes: always class ``constant``, or (constant=None) the class the first token names."""

    def __init__(self, constant: int | None):
        super().__init__()
        self.constant = constant

    def forward(self, input_ids, attention_mask):
        classes = input_ids[:, 0] - 10 if self.constant is None else torch.full_like(input_ids[:, 0], self.constant)
        return SimpleNamespace(logits=torch.nn.functional.one_hot(classes, 3).float() * 5)


GOLD = [0, 1, 1, 2, 1, 0, 1, 1]  # class 1 is the majority: 5 of 8


def _examples() -> list[TokenizedExample]:
    return [TokenizedExample((10 + g, 3, 4), None, g, None, 0) for g in GOLD]


def _evaluate(model) -> dict:
    return evaluate(
        model,
        _examples(),
        task="classification",
        pad_id=0,
        device=torch.device("cpu"),
        batch_size=3,  # several chunks: the counts add up across them
        choices=None,
        gold=list(GOLD),
        autocast=contextlib.nullcontext,
    )


def test_the_evaluation_counts_the_predicted_class_and_the_majority_is_the_prior():
    assert majority_class(GOLD + [None]) == (1, 5 / 8)
    assert majority_class([None]) is None
    one = _evaluate(_Classifier(constant=1))
    assert one["predicted_class"] == 1 and one["prediction_share"] == 1.0
    assert one["accuracy"] == pytest.approx(5 / 8)  # always the majority class: accuracy = its share
    other = _evaluate(_Classifier(constant=2))
    assert other["predicted_class"] == 2 and other["accuracy"] == pytest.approx(1 / 8)
    perfect = _evaluate(_Classifier(constant=None))
    assert perfect["accuracy"] == 1.0 and perfect["prediction_share"] == pytest.approx(5 / 8)


def test_the_summary_texts_put_the_majority_class_beside_the_untuned_model_and_name_a_run_at_the_prior():
    base = {"accuracy": 0.505, "val_loss": 0.69, "majority_label": "1", "majority_share": 0.556}
    # the SST-2 run of the issue: accuracy 0.556 = the majority share, every prediction one class
    sst2 = {"accuracy": 0.556, "val_loss": 1.86, "prediction_share": 1.0, "predicted_label": "1"}
    assert baseline_text(sst2, base) == (
        'accuracy 0.556 (untuned 0.505, +0.051; majority class "1" 0.556, +0) · val_loss 1.86 (untuned 0.69, +1.2)'
    )
    assert baseline_text(None, base) == 'untuned accuracy 0.505 · majority class "1" 0.556 · untuned val_loss 0.69'
    assert baseline_text({"accuracy": 0.6}, {"majority_label": "a", "majority_share": 0.5}) == (
        'accuracy 0.6 (majority class "a" 0.5, +0.1)'
    )
    prior = class_prior_text(sst2, base)
    assert prior.startswith('predicts one class ("1" for 100% of the validation examples): nothing learned beyond')
    assert "noise-batch ratio σ/B: `workbench plan --recommend`." in prior
    assert "the Plan tab's Recommend" in class_prior_text(sst2, base, where="app")
    assert "σ/B" not in class_prior_text(sst2, base, private=False)
    mixed = {"accuracy": 0.55, "prediction_share": 0.7, "predicted_label": "1"}
    assert class_prior_text(mixed, base).startswith("accuracy 0.55 is no better than always answering the majority")
    learned = {"accuracy": 0.80, "prediction_share": 0.6, "predicted_label": "1"}
    assert class_prior_text(learned, base) == "" and class_prior_text({"accuracy": None}, base) == ""


def test_the_person_sentence_for_each_unit():
    people = {"users": 300, "max_examples": 30}
    example = person_sentence(8.0, people=people, unit="example")
    assert "not bounded by a cap" in example and "one of the 300 people here has 30 examples" in example
    assert "set privacy_unit=user with max_examples_per_user=k" in example
    els = person_sentence(
        70.6, people=people, unit="user", user_sampling="els", max_examples_per_user=8, example_epsilon=8.0
    )
    assert els == (
        "for a person: ε = 70.6 covers all of one person's examples (at most k = 8 of each person's are used; one "
        "example alone: ε = 8)."
    )
    assert "people are sampled" in person_sentence(8.0, people=people, unit="user", user_sampling="uls")
    assert "also per person" in person_sentence(8.0, people={"users": 5, "max_examples": 1}, unit="example")
    assert person_sentence(8.0, people=None, unit="example") == ""


def _write_reviews(path: Path) -> Path:
    """A TSV of reviews by 30 people (person i wrote i % 4 + 1 of them), two thirds positive."""
    rows = ["review\tsentiment\tauthor"]
    for i in range(120):
        positive = i % 3 != 0
        word = ("great", "lovely", "fine")[i % 3] if positive else ("awful", "dull")[i % 2]
        rows.append(f"a {word} film, number {i}\t{'pos' if positive else 'neg'}\tperson-{i % 30:02d}")
    path.write_text("\n".join(rows) + "\n")
    return path


def test_a_classification_run_on_own_data_reports_the_majority_class_and_the_person_and_exports_neither(tmp_path):
    data = _write_reviews(tmp_path / "reviews.tsv")
    settings = dict(
        TINY_RUN,
        data=str(data),
        columns={"text": "review", "label": "sentiment", "user_id": "author"},
        labels=["neg", "pos"],
        max_steps=2,
        batch_size=16,
        eval_max_examples=200,
        noise_multiplier=1.0,
        validation_fraction=0.3,
    )
    args = ["train", "--set", f"columns={json.dumps(settings.pop('columns'))}"]
    args += [x for k, v in settings.items() for x in ("--set", f"{k}={json.dumps(v) if isinstance(v, list) else v}")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    cfg = RunConfig(**settings, columns={"text": "review", "label": "sentiment", "user_id": "author"})
    _, val = load_splits(cfg)  # the oracle: the validation split's own labels, counted here
    label, count = Counter(r.label for r in val.records).most_common(1)[0]
    share = count / len(val.records)
    store = RunStore()
    (run,) = store.list()
    assert run.summary["baseline"]["majority_label"] == label
    assert run.summary["baseline"]["majority_share"] == pytest.approx(share)
    assert f'majority class "{label}" {share:.3g}' in result.output
    assert "(validation telemetry, not covered by epsilon)" in result.output
    evals = [e for _, e in store.events(run.id) if e.kind == "eval"]
    assert evals and all(e.majority_share == pytest.approx(share) for e in evals)
    final = evals[-1]
    assert final.predicted_label in ("neg", "pos") and 0.5 <= final.prediction_share <= 1.0
    at_prior = final.prediction_share >= 0.99 or final.accuracy <= share
    assert ("nothing learned beyond the class frequencies" in result.output) == at_prior
    # the people: person i % 30 wrote the reviews i, i + 30, ... in the training split
    train, _ = load_splits(cfg)
    most = max(Counter(r.user_id for r in train.records).values())
    assert run.summary["people"] == {"users": len({r.user_id for r in train.records}), "max_examples": most}
    assert f"for a person: not bounded by a cap. ε = {run.summary['epsilon']:.3g} is per example" in result.output
    assert f"people here has {most} examples" in result.output
    released = json.loads((export_run(store, run.id, Path(store.home) / "out") / "summary.json").read_text())
    leaked = {"baseline", "people", "prediction_share", "predicted_label", "accuracy"} & set(released)
    assert not leaked and released["epsilon"] == pytest.approx(run.summary["epsilon"])


def test_check_says_what_epsilon_means_for_a_person(tmp_path):
    data = _write_reviews(tmp_path / "reviews.tsv")
    common = [
        "--set", f"data={data}", "--set", "model=tiny", "--set", "labels=[neg, pos]", "--set", "batch_size=16",
        "--set", "max_steps=10", "--set", "noise_multiplier=1.0", "--set", "validation_fraction=0.3",
        "--set", 'columns={"text": "review", "label": "sentiment", "user_id": "author"}',
    ]  # fmt: skip
    example = CliRunner().invoke(app, ["check", *common])
    assert example.exit_code == 0, example.output
    assert re.search(r"for a person: not bounded by a cap\. ε = [\d.]+ is per example", example.output)
    n_examples, _ = dataset_sizes(RunConfig().with_overrides([c for c in common if c != "--set"]))
    user = ["--set", "privacy_unit=user", "--set", "max_examples_per_user=2", "--set", "neighboring=add_remove"]
    cfg = RunConfig().with_overrides([c for c in common + user if c != "--set"])
    cap_count, users = dataset_sizes(cfg)
    user += ["--set", f"public_dataset_size={cap_count}"]
    result = CliRunner().invoke(app, ["check", *common, *user])
    assert result.exit_code == 0, result.output
    plan = make_plan(cfg.with_overrides({"public_dataset_size": cap_count}), dataset_size=cap_count, num_users=users)
    assert f"for a person: ε = {plan.epsilon_at(plan.steps):.3g} covers all of one person's examples" in result.output
    assert "at most k = 2" in result.output and n_examples > cap_count
