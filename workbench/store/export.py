"""Export a stored run: its adapter (PEFT format) with the privacy report, config, summary and events."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from workbench.events import jsonable
from workbench.store.runs import RunStore


class ExportError(ValueError):
    """The run cannot be exported; the message says why."""



def export_run(store: RunStore, run_id: str, directory: str | Path) -> Path:
    """Copy run ``run_id`` to ``directory/<run_id>/`` and return that folder."""
    rec = store.get(run_id)
    adapter = (rec.summary or {}).get("adapter_dir")
    if not adapter or not Path(adapter).exists():
        raise ExportError(f"run {rec.id} has no saved adapter (status: {rec.status}). Only runs that trained have one.")
    target = Path(directory) / rec.id
    if target.exists():
        raise ExportError(f"{target} already exists. Choose another directory or remove it.")
    shutil.copytree(adapter, target / "adapter")
    (target / "config.json").write_text(json.dumps(rec.config, indent=2))
    (target / "summary.json").write_text(json.dumps(jsonable(rec.summary), indent=2))
    with open(target / "events.jsonl", "w") as fh:
        for _, e in store.events(rec.id):
            fh.write(json.dumps(e.to_dict()) + "\n")
    return target
