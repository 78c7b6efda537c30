"""Exports other tools read (store/export.py, `workbench runs export --format`, `workbench sweep export`): each
format read back by its own reader (TensorBoard's EventAccumulator, pandas), with the telemetry warning, and a
clear message naming the package when a format's writer is not installed."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from sweep_helpers import NBINS, synthetic_run, synthetic_sweep
from typer.testing import CliRunner

from workbench.cli import app
from workbench.events import RunEnded
from workbench.store.export import TELEMETRY_WARNING, ExportError, export_metrics, export_sweep_metrics
from workbench.store.runs import RunStore

RUN = "20260101-000000-aaaaaa"


@pytest.fixture
def store():
    s = RunStore()
    synthetic_run(s, RUN, name="eps4-C1", steps=6, evals=((3, 2.0, 0.4), (6, 1.5, 0.6)))
    return s


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_tables_read_back_with_pandas(store, tmp_path, fmt):
    target = export_metrics(store, RUN, tmp_path, fmt)
    read = pd.read_csv if fmt == "csv" else pd.read_parquet
    steps = read(target / f"steps.{fmt}")
    evals = read(target / f"evals.{fmt}")
    runs = read(target / f"runs.{fmt}")
    assert steps["step"].tolist() == [1, 2, 3, 4, 5, 6]
    assert steps["loss"].tolist() == pytest.approx([3.0 / s for s in range(1, 7)])
    assert steps["tokens_seen"].tolist() == [100 * s for s in range(1, 7)]
    assert steps["epsilon"].iloc[-1] == pytest.approx(4.0)
    assert len(json.loads(steps["grad_norm_hist"].iloc[0])) == NBINS
    assert evals["step"].tolist() == [3, 6] and evals["accuracy"].tolist() == pytest.approx([0.4, 0.6])
    assert evals["epsilon"].iloc[-1] == pytest.approx(4.0)
    (row,) = runs.to_dict("records")
    assert row["run_id"] == RUN and row["status"] == "finished" and row["relation"] == "replace_one"
    assert row["sigma"] == 1.0 and row["q"] == 0.02 and row["accuracy"] == pytest.approx(0.6)
    assert row["config.model"] == "tiny"
    assert (target / "README.md").read_text() == TELEMETRY_WARNING
    with pytest.raises(ExportError, match="already exists"):
        export_metrics(store, RUN, tmp_path, fmt)


def test_tensorboard_events_read_back_with_event_accumulator(store, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    target = export_metrics(store, RUN, tmp_path, "tensorboard")
    acc = EventAccumulator(str(target), size_guidance={"scalars": 0, "histograms": 0, "tensors": 0})
    acc.Reload()
    tags = acc.Tags()
    assert {"train/loss", "privacy/epsilon", "eval/val_loss", "eval/accuracy", "hparam/epsilon"} <= set(tags["scalars"])
    loss = acc.Scalars("train/loss")
    assert [e.step for e in loss] == [1, 2, 3, 4, 5, 6]
    assert [e.value for e in loss] == pytest.approx([3.0 / s for s in range(1, 7)], rel=1e-6)
    assert [e.value for e in acc.Scalars("eval/accuracy")] == pytest.approx([0.4, 0.6])
    (hist, *_) = acc.Histograms("train/grad_norm_over_C")
    assert hist.step == 1 and hist.histogram_value.num == 4
    assert list(hist.histogram_value.bucket)[1] == 3 and list(hist.histogram_value.bucket)[-1] == 1
    content = acc.PluginTagToContent("hparams")
    info = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    assert info.hparams["lora_r"].number_value == 8 and info.hparams["relation"].string_value == "replace_one"
    assert info.hparams["sigma"].number_value == 1.0
    assert (target / "README.md").read_text() == TELEMETRY_WARNING


def test_a_sweep_exports_as_one_table_set_and_one_tensorboard_folder_per_run(tmp_path):
    store = RunStore()
    synthetic_sweep(
        store,
        "grid",
        [
            (f"eps{e}-s{s}", {"target_epsilon": float(e), "seed": s}, {"eps_final": float(e)})
            for e in (2, 8)
            for s in (0, 1)
        ],
    )
    target = export_sweep_metrics(store, "grid", tmp_path, "csv")
    runs = pd.read_csv(target / "runs.csv")
    assert runs["label"].tolist() == ["eps2-s0", "eps2-s1", "eps8-s0", "eps8-s1"] and set(runs["sweep"]) == {"grid"}
    steps = pd.read_csv(target / "steps.csv")
    assert len(steps) == 4 * 10 and steps.groupby("label")["epsilon"].max().to_dict() == pytest.approx(
        {"eps2-s0": 2, "eps2-s1": 2, "eps8-s0": 8, "eps8-s1": 8}
    )
    # the method table of a README from the export: mean accuracy per setting
    assert runs.groupby("config.target_epsilon")["accuracy"].mean().to_dict() == pytest.approx({2.0: 0.6, 8.0: 0.6})
    tb = export_sweep_metrics(store, "grid", tmp_path / "tb", "tensorboard")
    assert sorted(p.name for p in tb.iterdir() if p.is_dir()) == ["eps2-s0", "eps2-s1", "eps8-s0", "eps8-s1"]
    assert all(any(f.name.startswith("events.out.tfevents") for f in p.iterdir()) for p in tb.iterdir() if p.is_dir())


def test_a_missing_writer_or_unknown_format_gets_a_message_naming_the_package(store, tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    with monkeypatch.context() as patch:
        patch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboardX" else real(name, *a))
        with pytest.raises(ExportError, match="needs the tensorboardX package.*pip install tensorboardX"):
            export_metrics(store, RUN, tmp_path, "tensorboard")
        result = CliRunner().invoke(app, ["runs", "export", RUN, str(tmp_path / "x"), "--format", "tensorboard"])
        assert result.exit_code == 2 and "tensorboardX" in result.output and "Traceback" not in result.output
    result = CliRunner().invoke(app, ["runs", "export", RUN, str(tmp_path / "y"), "--format", "xlsx"])
    assert result.exit_code == 2 and "must be one of adapter, csv, parquet, tensorboard" in result.output
    result = CliRunner().invoke(app, ["runs", "export", RUN, str(tmp_path / "z"), "--format", "csv"])
    assert result.exit_code == 0 and "NOT covered by the differential-privacy guarantee" in result.output
    assert not (tmp_path / "x").exists()


# -- what an export must not reveal ------------------------------------------------------------------------------

TRAINED = "20250101-093000-3fa2c1"  # run ids start with the time the run started


def _ended_run(store: RunStore, tmp_path, **summary) -> None:
    """A synthetic run trained on 2025-01-01 09:30 whose summary stores ``summary`` (and its adapter folder)."""
    import os
    import time

    adapter = tmp_path / "adapter-of-the-run"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    (adapter / "privacy_report.json").write_text("{}")
    trained = time.mktime((2025, 1, 1, 9, 30, 0, 0, 0, -1))
    for path in (*adapter.iterdir(), adapter):
        os.utime(path, (trained, trained))
    synthetic_run(store, TRAINED, steps=4, status=None)
    ended = {"run_id": TRAINED, "epsilon": 4.0, "steps": 4, "wall_time": 8.0, "adapter_dir": str(adapter), **summary}
    store.append(RunEnded(run_id=TRAINED, status="finished", reason="", summary=ended))


def test_an_export_says_nothing_of_when_the_run_trained(tmp_path):
    """The summary leaves the wall time out; the export must not put it back through its folder's name (the run id
    starts with a timestamp), the summary's run_id, or the files' times (a copy keeps them): neither on disk nor in
    the app's zip."""
    import os
    import time
    import zipfile

    from workbench.app import runs as runs_tab
    from workbench.app.state import AppContext
    from workbench.store.export import export_run

    store = RunStore()
    _ended_run(store, tmp_path)
    out = export_run(store, TRAINED, tmp_path / "out", telemetry=True)
    assert out.name == "run-3fa2c1"
    stamps = ("20250101", "093000", "2025-01-01")
    for path in (out, *out.rglob("*")):
        assert time.gmtime(os.stat(path).st_mtime)[:4] == (1980, 1, 2, 0), path  # store.export.EXPORT_TIME
        assert not any(s in str(path.relative_to(tmp_path)) for s in stamps), path
    released = json.loads((out / "summary.json").read_text())
    assert released["run_id"] == "run-3fa2c1" and "wall_time" not in released
    for name in ("summary.json", "config.json", "adapter/privacy_report.json"):
        assert not any(s in (out / name).read_text() for s in stamps), name
    archive, _ = runs_tab.export_zip(AppContext(store), TRAINED)
    assert not any(s in os.path.basename(archive) for s in stamps)
    with zipfile.ZipFile(archive) as z:
        times = {info.date_time for info in z.infolist()}
        assert len(times) == 1 and next(iter(times))[0] == 1980, times
        assert not any(s in info.filename for info in z.infolist() for s in stamps)


def test_the_csv_export_writes_the_published_dataset_size_not_the_exact_one(tmp_path):
    """Under add/remove the exact size reveals membership: the run's table carries the size as the summary publishes
    it (engine/report.published_sizes), never RunStarted's exact count (800 here)."""
    store = RunStore()
    _ended_run(store, tmp_path, dataset_size=1000, num_users=None, dataset_size_published_as="declared public size")
    for fmt in ("csv", "parquet"):
        target = export_metrics(store, TRAINED, tmp_path / fmt, fmt)
        (row,) = (pd.read_csv if fmt == "csv" else pd.read_parquet)(target / f"runs.{fmt}").to_dict("records")
        assert row["dataset_size"] == 1000 and row["dataset_size_published_as"] == "declared public size", row
        assert 800 not in row.values()
