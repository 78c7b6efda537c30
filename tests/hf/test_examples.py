"""The README's example commands run as written, on the tiny model (CI runs them here)."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Your own script", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^python (examples/\S+\.py.*)$", section, re.M)


def test_the_examples_run_from_the_readme_on_the_tiny_model(tmp_path):
    pytest.importorskip("trl")
    commands = readme_commands()
    assert {c.split()[0] for c in commands} == {str(p.relative_to(ROOT)) for p in (ROOT / "examples").glob("*.py")}
    for command in commands:
        script, *args = shlex.split(command)
        done = subprocess.run(
            [sys.executable, str(ROOT / script), *args], cwd=tmp_path, capture_output=True, text=True, timeout=600
        )
        assert done.returncode == 0, f"{command}\n{done.stderr[-3000:]}"
        assert "epsilon = " in done.stdout and "--model tiny" in command
    for out in ("out/cls", "out/sft"):
        assert (tmp_path / out / "privacy_report.json").exists() and (
            tmp_path / out / "adapter_model.safetensors"
        ).exists()
