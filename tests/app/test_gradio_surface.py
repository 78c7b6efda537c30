"""The app keeps to Gradio's public surface (issue 28): no private attribute of a Gradio object, none of the
internals the app once reached for (the login check's token store and cookie name, the queue's idle polls), no
import from a Gradio submodule, and only names that ``gradio`` itself exports.  The live stream is mounted through
``launch(app_kwargs=...)`` and its login goes through Gradio's API (workbench/app/live.py)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import workbench.app

gradio = pytest.importorskip("gradio")

APP = Path(workbench.app.__file__).parent
# Gradio internals the app once read or set: its login check's token store, cookie name and auth hook (a copy of
# routes.login_check), the Blocks' queue and that queue's idle polling intervals.
INTERNALS = {"tokens", "cookie_id", "auth_dependency", "_queue", "sleep_when_free", "progress_update_sleep_when_free"}


def _private(name: str) -> bool:
    return name in INTERNALS or (name.startswith("_") and not (name.startswith("__") and name.endswith("__")))


def offences(source: str, where: str = "<source>") -> list[str]:
    """Each place in ``source`` that reaches past Gradio's public surface, as 'where:line: what'."""
    out = []
    for node in ast.walk(ast.parse(source)):
        what = None
        if isinstance(node, ast.Attribute):
            own = isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")  # the app's own classes
            if _private(node.attr) and not own:
                what = f".{node.attr}"
            elif isinstance(node.value, ast.Name) and node.value.id in ("gr", "gradio"):
                if node.attr not in gradio.__all__ and not hasattr(gradio, node.attr):
                    what = f"gr.{node.attr} (not exported by gradio)"
        elif isinstance(node, ast.Call) and getattr(node.func, "id", None) in ("getattr", "setattr", "hasattr"):
            name = node.args[1] if len(node.args) > 1 else None
            if isinstance(name, ast.Constant) and isinstance(name.value, str) and _private(name.value):
                what = f"{node.func.id}(..., {name.value!r})"
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("gradio."):
            what = f"from {node.module} import ... (a Gradio submodule)"
        elif isinstance(node, ast.Import):
            what = next((f"import {a.name}" for a in node.names if a.name.startswith("gradio.")), None)
        if what:
            out.append(f"{where}:{node.lineno}: {what}")
    return out


def test_the_check_finds_what_the_app_used_to_do():
    before = """
app = scope.get("app")
token = request.cookies.get(f"access-token-{app.cookie_id}")
ok = app.tokens.get(token) is not None
queue = getattr(app, "_queue", None)
setattr(queue, "sleep_when_free", 0.05)
from gradio.routes import App
"""
    found = offences(before)
    assert len(found) == 5 and any("cookie_id" in f for f in found) and any("tokens" in f for f in found)
    assert offences("self._lock = lock\nx = gr.HTML()\ngr.api(fn)\n") == []


def test_app_code_touches_no_private_gradio_attribute():
    found = [f for path in sorted(APP.glob("*.py")) for f in offences(path.read_text(encoding="utf-8"), path.name)]
    assert found == [], "the app reaches past Gradio's public surface:\n" + "\n".join(found)
