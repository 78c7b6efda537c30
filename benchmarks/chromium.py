"""Debian's headless Chromium (never a downloaded Playwright browser), launched one way by the benchmarks that drive
a browser and by the browser tests (tests/app/test_*_browser.py, tests/widgets/test_lab_browser.py import it)."""

from __future__ import annotations

import shutil

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def launch_chromium(playwright, executable: str | None = None):
    """A headless Chromium browser from ``playwright`` (Playwright's sync API): Debian's ``chromium`` on the PATH,
    or ``executable`` (e.g. a wrapper that starts it under another scheduling policy), without the background
    networking, updates and sync that would cost CPU during a measurement."""
    return playwright.chromium.launch(executable_path=executable or shutil.which("chromium"), args=CHROMIUM_ARGS)
