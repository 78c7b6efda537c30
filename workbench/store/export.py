"""Export a stored run: its adapter (PEFT format) with the privacy report and config, and, only when
asked for, the training telemetry.

What the DP guarantee covers is the adapter (and what is computed from it, or from the public
settings: the privacy report).  The telemetry is computed from the raw private data and is NOT
covered: every step event carries per-example gradient-norm histograms, the norm of the clipped
sum before noise, batch losses and the realised Poisson batch sizes; the summary's validation
metrics come from held-out private examples.  It is what the data owner watches to tune a run,
not something to publish with the adapter, so an export leaves it out unless ``telemetry=True``,
and then puts it in its own folder with a warning beside it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from workbench.events import jsonable
from workbench.store.runs import RunStore

# Summary keys computed from the raw data (exported only with the telemetry), and the local path.
DATA_DEPENDENT_KEYS = ("val_loss", "perplexity", "accuracy", "wall_time", "reason", "adapter_dir")
PATH_KEYS = ("model", "data", "validation_data", "output_dir")  # exported by their last part only
TELEMETRY_WARNING = """# Telemetry: not covered by the differential-privacy guarantee

These files were computed from the raw training and validation data: per-example gradient-norm
histograms, norms of clipped gradient sums before noise, batch losses, the realised batch sizes
and validation metrics. The (epsilon, delta) of the privacy report covers the adapter, not these.
Keep them with the data they came from; do not publish them with the adapter.
"""


class ExportError(ValueError):
    """The run cannot be exported; the message says why."""


def _portable(values: dict) -> dict:
    """Path-valued settings by their last part: nothing exported names a path of the training machine."""
    out = dict(values)
    for key in PATH_KEYS:
        value = out.get(key)
        if isinstance(value, str) and ("/" in value or "\\" in value):
            out[key] = Path(value).name
    return out


def export_run(
    store: RunStore, run_id: str, directory: str | Path, *, telemetry: bool = False, force: bool = False
) -> Path:
    """Copy run ``run_id`` to ``directory/<run_id>/`` and return that folder.

    Always: ``adapter/`` (PEFT format, privacy_report.json, model card), ``config.json`` and a
    ``summary.json`` without the data-dependent metrics.  With ``telemetry``: ``telemetry/`` with
    every event, the full summary and a README saying they are not covered by the guarantee.
    A run with seeded randomness (``noise_seed``) has no DP guarantee and is refused unless
    ``force``; its card and report keep the warning. The run's secret key is never copied.
    """
    rec = store.get(run_id)
    summary = rec.summary or {}
    if (summary.get("seeded_randomness") or rec.config.get("noise_seed") is not None) and not force:
        raise ExportError(
            f"run {rec.id} used seeded randomness (noise_seed={rec.config.get('noise_seed')}): anyone with the seed can "
            "replay its sampling and noise, so it has no differential-privacy guarantee. Retrain without noise_seed, or "
            "export with --force (the model card keeps the warning)."
        )
    adapter = summary.get("adapter_dir")
    if not adapter or not Path(adapter).exists():
        raise ExportError(f"run {rec.id} has no saved adapter (status: {rec.status}). Only runs that trained have one.")
    target = Path(directory) / rec.id
    if target.exists():
        raise ExportError(f"{target} already exists. Choose another directory or remove it.")
    shutil.copytree(adapter, target / "adapter")
    (target / "config.json").write_text(json.dumps(_portable(rec.config), indent=2))
    released = _portable({k: v for k, v in summary.items() if k not in DATA_DEPENDENT_KEYS})
    (target / "summary.json").write_text(json.dumps(jsonable(released), indent=2))
    if telemetry:
        folder = target / "telemetry"
        folder.mkdir()
        (folder / "README.md").write_text(TELEMETRY_WARNING)
        (folder / "summary.json").write_text(json.dumps(jsonable(summary), indent=2))
        with open(folder / "events.jsonl", "w") as fh:
            for _, e in store.events(rec.id):
                fh.write(json.dumps(e.to_dict()) + "\n")
    return target
