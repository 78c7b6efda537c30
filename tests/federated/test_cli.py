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
