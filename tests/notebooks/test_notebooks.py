"""Every workshop notebook runs end to end in fast mode (WORKBENCH_FAST=1), as CI runs it.

Executed with nbclient on the 'python3' kernel; jupyter_client starts that kernel with the Python
running the tests (the venv's), so a clean checkout after `make install` needs no kernel setup.
Each notebook gets its own WORKBENCH_HOME (the conftest fixture) and runs in a copy of notebooks/
so nothing is written next to the stored notebooks.  Select with `-m notebook`.

The executed notebook is saved as JupyterLab saves one (no widget state: its default) and must stay under
5 MB; nbclient's default would store each plotly widget's 5 MB plotly.js bundle (benchmarks/notebooks.py
measures both).  A notebook's statements about its runs are checked against the run store (CHECKS).
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest
import yaml

from workbench.config import flatten

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
MAX_BYTES = 5_000_000  # an executed notebook, saved without widget state


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
        "08_your_own_script",
        "09_workshop",
        "10_federated",
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
        nb,
        kernel_name="python3",
        timeout=300,
        store_widget_state=False,  # as JupyterLab saves a notebook
        resources={"metadata": {"path": str(workdir)}},
    )
    start = time.monotonic()
    client.execute()  # raises CellExecutionError naming the cell and the traceback on any error
    seconds = time.monotonic() - start
    executed = workdir / f"executed_{path.name}"
    nbformat.write(nb, executed)
    print(f"{path.name}: {seconds:.1f} s, {executed.stat().st_size:,} bytes executed")
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
    assert executed.stat().st_size < MAX_BYTES, f"{path.name} executed is {executed.stat().st_size:,} bytes"
    if path.stem in CHECKS:
        CHECKS[path.stem](nb)


def outputs_text(nb, mime: str) -> list[str]:
    """Every output of ``mime`` (or stream text for 'stream') in cell order."""
    found = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if mime == "stream" and out.output_type == "stream":
                found.append(out.text)
            elif mime in out.get("data", {}):
                found.append(out.data[mime])
    return found


def check_04(nb) -> None:
    """Notebook 04 trained the demo's settings (assets/demo.yaml; fast mode overrides only the model and the run's
    size), and its result sentence states what the run store recorded: the untuned model's accuracy (the step-0
    evaluation), the adapter's (the last evaluation), and whether the adapter beat the untuned model."""
    from workbench.store.runs import RunStore

    store = RunStore(os.environ["WORKBENCH_HOME"])
    (run,) = [r for r in store.list() if r.name == "dp-lora-demo"]
    demo = flatten(yaml.safe_load((ROOT / "assets" / "demo.yaml").read_text()))  # its groups as flat keys
    fast_only = {
        "name",
        "model",
        "max_steps",
        "batch_size",
        "eval_every",
        "eval_max_examples",
        "generate_max_new_tokens",
    }
    drifted = {k: (run.config[k], v) for k, v in demo.items() if k not in fast_only and run.config[k] != v}
    assert not drifted, f"notebook 04 did not train the demo's settings (ran, demo.yaml): {drifted}"
    evals = [e for _, e in store.events(run.id, kinds=("eval",))]
    untuned, final = evals[0], evals[-1]
    assert untuned.step == 0 and final.step == run.config["max_steps"]
    (sentence,) = [t for t in outputs_text(nb, "text/markdown") if t.startswith("**Routing accuracy")]
    assert f"{final.accuracy:.3f} after DP fine-tuning" in sentence, sentence
    assert f"against {untuned.accuracy:.3f} for the untuned model" in sentence, sentence
    verdict = "the DP adapter beats" if final.accuracy > untuned.accuracy else "the DP adapter does not beat"
    assert verdict in sentence, sentence


def check_08(nb) -> None:
    """Notebook 08's three runs (make_private, DPTrainer, `workbench train` on the same file) are in the run store,
    finished within the target, and counted in one ledger group whose total composes all three."""
    from workbench.store.ledger import Ledger
    from workbench.store.runs import RunStore

    store = RunStore(os.environ["WORKBENCH_HOME"])
    runs = {r.name: r for r in store.list() if r.name in ("nb08-loop", "nb08-trainer", "nb08-workbench-train")}
    assert len(runs) == 3 and all(r.status == "finished" for r in runs.values()), runs
    assert runs["nb08-loop"].summary["integration"] == "script" == runs["nb08-trainer"].summary["integration"]
    assert all(r.final_epsilon <= r.config["target_epsilon"] + 1e-9 for r in runs.values())
    ids = {r.id for r in runs.values()}
    (group,) = [d for d in Ledger(store).datasets() if ids & {e.run_id for e in d.entries}]
    assert ids <= {e.run_id for e in group.entries}
    assert group.total.epsilon > max(r.final_epsilon for r in runs.values())


def check_09(nb) -> None:
    """Notebook 09's check cells (tagged 'check') each showed a right answer (its committed solutions), and its two
    runs are in one ledger group whose total the ledger check judged."""
    from workbench.store.ledger import Ledger
    from workbench.store.runs import RunStore

    checks = [c for c in nb.cells if "check" in c.metadata.get("tags", [])]
    assert len(checks) >= 5
    for cell in checks:
        shown = [o.data["text/markdown"] for o in cell.outputs if "text/markdown" in o.get("data", {})]
        assert len(shown) == 1 and shown[0].startswith("**✅ Right"), (cell.source, shown)
    store = RunStore(os.environ["WORKBENCH_HOME"])
    ids = {r.id for r in store.list() if r.name in ("workshop-first", "workshop-second")}
    assert len(ids) == 2
    (group,) = [d for d in Ledger(store).datasets() if ids <= {e.run_id for e in d.entries}]
    assert group.total.epsilon > max(e.epsilon for e in group.entries)


CHECKS = {"04_dp_lora_fine_tune": check_04, "08_your_own_script": check_08, "09_workshop": check_09}
