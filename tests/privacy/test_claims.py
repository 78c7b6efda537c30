"""Every number the workbench publishes is true for what it released (issue 26, items 1-3): a classifier's
labels never come from the private data, a run stopped by hand claims its planned epsilon, and under
add/remove no published number depends on the exact (private) dataset size."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from factories import TINY_RUN
from safetensors.torch import load_file
from typer.testing import CliRunner

from workbench.cli import app
from workbench.config import ConfigError, RunConfig
from workbench.planning.plan import make_plan
from workbench.session import Session
from workbench.store.runs import RunStore

FAST = dict(TINY_RUN, max_steps=1, noise_multiplier=1.0)


# -- 1. labels from the config, never from the data ----------------------------------------------------


def _reviews(tmp_path: Path, *, rare: bool) -> Path:
    """Two neighbouring datasets: the second has one more record, the only one with the label 'neutral'."""
    rows = [{"text": f"review {i} {'good' if i % 2 else 'bad'}", "label": "pos" if i % 2 else "neg"} for i in range(60)]
    if rare:
        rows.append({"text": "review 60 fine I suppose", "label": "neutral"})
    path = tmp_path / f"reviews-{'rare' if rare else 'plain'}.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return path


def _head_shapes(summary: dict) -> dict[str, tuple]:
    tensors = load_file(str(Path(summary["adapter_dir"]) / "adapter_model.safetensors"))
    return {k: tuple(v.shape) for k, v in tensors.items()}


def test_neighbours_with_a_unique_label_both_refuse_without_labels(tmp_path):
    store = RunStore()
    outcomes = [
        Session(RunConfig(**FAST, data=str(_reviews(tmp_path, rare=rare))), store=store).run() for rare in (False, True)
    ]
    assert [o["status"] for o in outcomes] == ["failed", "failed"]
    assert all("labels" in o["reason"] and "workbench data" in o["reason"] for o in outcomes)
    out = CliRunner().invoke(app, ["train", "--set", "model=tiny", "--set", f"data={_reviews(tmp_path, rare=True)}"])
    assert out.exit_code == 2 and "labels" in out.output and "Traceback" not in out.output


def test_neighbours_with_a_unique_label_give_the_same_head_with_labels(tmp_path):
    store = RunStore()
    labels = ["neg", "pos", "neutral"]
    runs = [
        Session(RunConfig(**FAST, data=str(_reviews(tmp_path, rare=rare)), labels=labels), store=store).run()
        for rare in (False, True)
    ]
    assert [r["status"] for r in runs] == ["finished", "finished"], runs
    assert _head_shapes(runs[0]) == _head_shapes(runs[1])
    assert any(shape[0] == 3 for shape in _head_shapes(runs[0]).values())  # the head: three classes, from the config
    configs = [json.loads((Path(r["adapter_dir"]) / "adapter_config.json").read_text()) for r in runs]
    assert configs[0] == configs[1]


def test_a_non_private_run_may_still_read_its_labels_from_the_data(tmp_path):
    summary = Session(
        RunConfig(**{**FAST, "noise_multiplier": 0.0}, data=str(_reviews(tmp_path, rare=False))), store=RunStore()
    ).run()
    assert summary["status"] == "finished", summary


def test_labels_accept_numbers_and_workbench_data_lists_them(tmp_path):
    assert RunConfig(labels=[0, 1]).labels == ["0", "1"]
    assert RunConfig().with_overrides(["labels=[0, 1]"]).labels == ["0", "1"]
    out = CliRunner().invoke(app, ["data", str(_reviews(tmp_path, rare=True))])
    assert out.exit_code == 0
    assert '"neg", "neutral", "pos"' in out.output or '"neg", "pos", "neutral"' in out.output
    assert "chosen in advance" in out.output


def test_workbench_check_calls_missing_labels_an_error(tmp_path):
    out = CliRunner().invoke(app, ["check", "--set", "model=tiny", "--set", f"data={_reviews(tmp_path, rare=False)}"])
    assert out.exit_code == 1 and "[error] classification labels are not set" in out.output


# -- 2. a run stopped by hand claims the planned epsilon ---------------------------------------------------


def test_a_stopped_run_claims_the_planned_epsilon_everywhere():
    store = RunStore()
    summary = Session(RunConfig(**{**FAST, "max_steps": 40}), store=store, stop_after=2).run()
    assert summary["status"] == "stopped" and summary["steps"] == 2
    assert summary["epsilon"] == pytest.approx(summary["planned_epsilon"])
    assert 0 < summary["steps_done_epsilon"] < summary["epsilon"]
    report = json.loads((Path(summary["adapter_dir"]) / "privacy_report.json").read_text())
    assert report["epsilon"] == pytest.approx(summary["planned_epsilon"])
    assert report["steps_done_epsilon"] == pytest.approx(summary["steps_done_epsilon"])
    assert "public information only" in report["stop_note"] and "covered by no epsilon" in report["stop_note"]
    card = (Path(summary["adapter_dir"]) / "README.md").read_text()
    assert "(planned: the run was stopped by hand)" in card and "holds only if the stop used public" in card


def test_a_finished_run_claims_the_steps_it_took():
    summary = Session(RunConfig(**{**FAST, "max_steps": 2}), store=RunStore()).run()
    assert summary["status"] == "finished" and "steps_done_epsilon" not in summary


# -- 3. under add/remove no published number depends on the exact size ---------------------------------------


def _old_rounding(n: int) -> int:
    """The rounding an earlier version published under add/remove (two significant figures, at least to 10)."""
    step = 10 ** max(1, len(str(int(n))) - 2)
    return max(step, int(round(n / step)) * step)


BOUNDARIES = [n for n in range(100, 100_000) if _old_rounding(n) != _old_rounding(n + 1)]
PUBLISHED = ("sample_rate", "noise_multiplier", "delta", "steps", "published_population", "neighboring")


def _published(plan) -> tuple:
    return tuple(getattr(plan, k) for k in PUBLISHED)


def test_the_old_rounding_had_boundaries_where_neighbours_published_different_numbers():
    assert len(BOUNDARIES) > 250  # the review counted 270 sizes between 100 and 100,000
    assert _old_rounding(1149) != _old_rounding(1150)


def test_neighbours_at_every_old_boundary_publish_identical_numbers():
    for n in BOUNDARIES:
        config = RunConfig(model="tiny", batch_size=16, max_steps=20, noise_multiplier=1.0, public_dataset_size=5000)
        assert _published(make_plan(config, dataset_size=n)) == _published(make_plan(config, dataset_size=n + 1))


@pytest.mark.parametrize("n", [1149, 9999, 10_000])
def test_calibrated_plans_of_neighbours_are_identical_under_a_public_size(n):
    config = RunConfig(model="tiny", batch_size=64, epochs=1.0, target_epsilon=3.0, public_dataset_size=10_000)
    plans = [make_plan(config, dataset_size=size) for size in (n, n + 1)]
    assert plans[0].neighboring == "add_remove"
    assert _published(plans[0]) == _published(plans[1])
    assert plans[0].delta == config.default_delta(dataset_size=10_000)  # from the public size, not the exact one


def test_add_remove_without_a_public_size_is_refused_with_one_message():
    for kw in (dict(neighboring="add_remove"), dict(accountant="rdp"), dict(privacy_unit="user")):
        with pytest.raises(ConfigError, match="public_dataset_size"):
            make_plan(RunConfig(model="tiny", batch_size=16, max_steps=5, **kw), dataset_size=1000, num_users=100)
    out = CliRunner().invoke(app, ["train", "--set", "model=tiny", "--set", "accountant=rdp"])
    assert out.exit_code == 2 and "public_dataset_size" in out.output and "Traceback" not in out.output


def test_auto_is_add_remove_with_a_public_size_and_replace_one_without():
    without = make_plan(RunConfig(model="tiny", batch_size=32, max_steps=200, target_epsilon=8.0), dataset_size=1000)
    public = make_plan(
        RunConfig(model="tiny", batch_size=32, max_steps=200, target_epsilon=8.0, public_dataset_size=1000),
        dataset_size=1000,
    )
    assert (without.neighboring, public.neighboring) == ("replace_one", "add_remove")
    assert public.sample_rate == without.sample_rate == 32 / 1000
    assert public.noise_multiplier < without.noise_multiplier  # add/remove: less noise for the same epsilon


def test_the_report_publishes_the_declared_size_and_no_user_count_under_add_remove(tmp_path):
    summary = Session(RunConfig(**FAST, public_dataset_size=500), store=RunStore()).run()
    report = json.loads((Path(summary["adapter_dir"]) / "privacy_report.json").read_text())
    assert report["neighboring"] == "add_remove" and report["dataset_size"] == 500
    assert report["sample_rate"] == pytest.approx(16 / 500) and "declared public" in report["dataset_size_published_as"]
    assert summary["dataset_size"] == 500
