"""`workbench federate`: bad input is one line on stderr and exit 2, before anything trains or is stored."""

import pytest
from typer.testing import CliRunner

from workbench.cli.main import app
from workbench.store.runs import RunStore


@pytest.mark.parametrize(
    "args, message",
    [
        (["--clients", "3", "--rounds", "2", "--clients-per-round", "4"], "--clients-per-round 4 must be between 1"),
        (["--clients", "3", "--rounds", "2", "--clients-per-round", "2", "--partition", "by-clinic"], "not a layout"),
        (
            ["--clients", "3", "--rounds", "2", "--clients-per-round", "2", "--partition", "by-column:clinic"],
            "needs a data file with that column",
        ),
        (["--clients", "3000", "--rounds", "2", "--clients-per-round", "2"], "--clients 3000 is more than the"),
    ],
)
def test_bad_settings_are_one_message(args, message):
    result = CliRunner().invoke(app, ["federate", "--set", "model=tiny", *args])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]
    assert "Traceback" not in result.output
    assert RunStore().list() == []


def test_a_federated_run_is_not_replayed(tmp_path, monkeypatch):
    """`runs replay` retrains one data holder's run; on a federated run it would train the federation's data
    centrally (another mechanism): refused in one message, the stored run untouched."""
    from typer.testing import CliRunner

    from workbench.cli import app
    from workbench.store.runs import RunStore

    monkeypatch.setenv("WORKBENCH_HOME", str(tmp_path))
    store = RunStore(tmp_path)
    run_id = "fed0000000001"
    store.create_run(run_id, config={"model": "tiny"}, name="federated-3x2")
    store.set_status(run_id, "finished", summary={"federated": {"clients": 3, "rounds": 2}})
    result = CliRunner().invoke(app, ["runs", "replay", run_id])
    assert result.exit_code != 0
    assert "federated run" in result.output and "Traceback" not in result.output
    assert store.get(run_id).status == "finished"
