"""Every workshop notebook runs end to end in fast mode (WORKBENCH_FAST=1), as CI runs it.

Executed with nbclient on the 'python3' kernel; jupyter_client starts that kernel with the Python
running the tests (the venv's), so a clean checkout after `make install` needs no kernel setup.
Each notebook gets its own WORKBENCH_HOME (the conftest fixture) and runs in a copy of notebooks/
so nothing is written next to the stored notebooks.  Select with `-m notebook`.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = sorted((Path(__file__).resolve().parents[2] / "notebooks").glob("*.ipynb"))


def test_the_workshop_notebooks_exist_and_are_stored_without_outputs():
    names = [p.name for p in NOTEBOOKS]
    for stem in (
        "01_dp_sgd_by_hand",
        "02_privacy_accounting",
        "03_tuning_privacy_settings",
        "04_dp_lora_fine_tune",
        "05_user_level_dp_and_noise_allocation",
        "06_auditing_and_the_cost_of_tuning",
        "07_sweeps",
    ):
        assert f"{stem}.ipynb" in names
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert all(not c.outputs and c.execution_count is None for c in code), f"{path.name} has stored outputs"
        assert any("parameters" in c.metadata.get("tags", []) and "WORKBENCH_FAST" in c.source for c in code), (
            f"{path.name} needs a parameters cell with the WORKBENCH_FAST switch"
        )
        solutions = [c for c in nb.cells if "solution" in c.metadata.get("tags", [])]
        assert len(solutions) >= 2, f"{path.name}: exercises need solutions"
        assert all(c.metadata.get("jupyter", {}).get("source_hidden") for c in solutions), "solutions start folded"
        for i, cell in enumerate(nb.cells):
            if "solution" in cell.metadata.get("tags", []):
                assert nb.cells[i - 1].cell_type == "markdown" and "Solution" in nb.cells[i - 1].source


@pytest.mark.notebook
@pytest.mark.timeout(600)
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_in_fast_mode(path, tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_FAST", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    workdir = tmp_path / "nb"
    workdir.mkdir()
    shutil.copy(path, workdir / path.name)
    nb = nbformat.read(workdir / path.name, as_version=4)
    client = nbclient.NotebookClient(
        nb, kernel_name="python3", timeout=300, resources={"metadata": {"path": str(workdir)}}
    )
    start = time.monotonic()
    client.execute()  # raises CellExecutionError naming the cell and the traceback on any error
    seconds = time.monotonic() - start
    print(f"{path.name}: {seconds:.1f} s")
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
