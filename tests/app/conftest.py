"""The browser tests' Chromium (Debian's, headless: benchmarks/chromium.py launches it as the benchmarks do)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest


@pytest.fixture
def browser():
    from playwright import sync_api

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    from chromium import launch_chromium

    with sync_api.sync_playwright() as p:
        b = launch_chromium(p)
        yield b
        b.close()
