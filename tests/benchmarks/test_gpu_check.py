"""benchmarks/gpu_check.py runs end to end on the CPU with --tiny, so the GPU measurement script cannot rot."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_check.py"


def _script():
    if str(SCRIPT.parent) not in sys.path:  # importable by name: the 2-rank path spawns processes that import it
        sys.path.insert(0, str(SCRIPT.parent))
    return importlib.import_module("gpu_check")


def test_gpu_check_runs_on_the_cpu_with_the_tiny_model(tmp_path, capsys):
    report = _script().main(["--device", "cpu", "--tiny", "--out", str(tmp_path), "--steps", "1", "--warmup", "0"])
    saved = json.loads(Path(report["path"]).read_text())
    assert saved["results"].keys() == {"2", "4"}
    for row in saved["results"].values():
        assert set(row) == {"nonprivate", "workbench", "opacus"}
        assert row["workbench"]["tokens_per_second"] > 0 and row["nonprivate"]["tokens_per_second"] > 0
    assert "dp_over_nonprivate" in saved["ratios"] and saved["tests"]["ran"] is False
    assert saved["data_parallel_2_ranks"]["ran"] is False
    assert "dp_over_nonprivate" in capsys.readouterr().out


@pytest.mark.slow
def test_gpu_check_data_parallel_path_on_two_cpu_ranks(tmp_path):
    report = _script().main(
        ["--device", "cpu", "--tiny", "--out", str(tmp_path), "--methods", "workbench", "--data-parallel", "on"]
    )
    assert report["data_parallel_2_ranks"]["tokens_per_second"] > 0
