"""The Train tab's Processes control (nproc): mapped to the config, checked before a run starts."""

from __future__ import annotations

import pytest
import torch

gr = pytest.importorskip("gradio")

from conftest import app_values as values  # noqa: E402  (shared factories)

from workbench.app import forms  # noqa: E402
from workbench.app import train as train_tab  # noqa: E402
from workbench.app.state import Selection  # noqa: E402


def test_processes_control_maps_to_nproc():
    assert "nproc" in forms.TRAIN_FIELDS
    assert forms.config_from_values(values()).nproc == 1
    cfg = forms.config_from_values(values(nproc=2.0))
    assert cfg.nproc == 2 and isinstance(cfg.nproc, int)


@pytest.mark.parametrize("bad", [0, -1, 1.5, None, ""])
def test_bad_processes_value_gives_a_message(bad):
    with pytest.raises(forms.ConfigError, match=r"processes \(nproc\) must be a whole number ≥ 1"):
        forms.config_from_values(values(nproc=bad))


@pytest.mark.parametrize("nproc, message", [(0, "processes (nproc) must be a whole number ≥ 1"), (4, "needs 4 GPUs")])
def test_bad_processes_give_a_message_beside_start_and_start_nothing(ctx, monkeypatch, nproc, message):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # the app on a machine with one GPU
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    sel, text = train_tab.start_run(ctx, Selection(), values(nproc=nproc))
    assert message in text and "Traceback" not in text, text
    assert sel == Selection() and ctx.store.list() == [] and ctx.sessions == {}
