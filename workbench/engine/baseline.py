"""The untuned model's validation metrics, the baseline a run's metric is read against: measured once per
(model, validation examples, evaluation settings) and cached, so the next run on the same model and data pays nothing.

It is the trainer's step-0 evaluation (``Trainer.baseline_evaluation``, config key ``baseline_eval``): the model with
its LoRA adapters just attached (LoRA's B starts at zero, so the adapters change nothing yet) on the held-out
validation examples the run's own evaluations use, never on training data. Loss and accuracy only, no generations.

The cache is one JSON file under the workbench home (``CACHE_FILE``, beside the run store), keyed by a SHA-256 over
what decides the numbers: the model (its name and a sample of its weights, so a tiny model of another seed or a
classification head initialised otherwise is another model; the LoRA weights, which do not change the output at
initialisation, are left out), the task, the exact token ids, labels and answer choices of the evaluated examples
(so another dataset, split, max_seq_len or eval_max_examples is another key), and the device type (bf16 on CUDA).
Like the dataset fingerprint (engine/fingerprint.py) the key is a hash of private data: it stays in the local file,
never in a run's summary or an export; the metrics themselves are telemetry from the validation data.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any, Callable

import torch

log = logging.getLogger(__name__)

CACHE_FILE = "baselines.json"
VERSION = "workbench-untuned-baseline-v1"
METRICS = ("val_loss", "perplexity", "accuracy")
WEIGHT_SAMPLE = 16  # values read from each weight tensor for the model's part of the key


def model_fingerprint(model: torch.nn.Module) -> str:
    """SHA-256 over each non-LoRA parameter's name, shape, dtype and ``WEIGHT_SAMPLE`` evenly spaced values."""
    h = hashlib.sha256()
    for name, p in model.named_parameters():
        if "lora_" in name:
            continue
        flat = p.detach().reshape(-1)
        sample = flat[:: max(1, flat.numel() // WEIGHT_SAMPLE)][:WEIGHT_SAMPLE].float().cpu().tolist()
        h.update(json.dumps([name, list(p.shape), str(p.dtype), sample]).encode())
    return h.hexdigest()


def baseline_key(
    *, model_name: str, model: torch.nn.Module, task: str, examples: list, gold: list, choices: Any, device: str
) -> str:
    """The cache key of the untuned metrics of ``model`` on ``examples`` (see the module docstring)."""
    h = hashlib.sha256(f"{VERSION}\nmodel:{model_name}\ntask:{task}\ndevice:{device}\n".encode())
    h.update(model_fingerprint(model).encode())
    h.update(json.dumps([None if choices is None else [choices.offset, list(choices.token_ids)], gold]).encode())
    for ex in examples:
        h.update(json.dumps([list(ex.input_ids), None if ex.labels is None else list(ex.labels), ex.label_id]).encode())
        h.update(b"\n")
    return h.hexdigest()


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as err:  # a cache: unreadable means measure again
        log.warning("the baseline cache %s could not be read (%s); measuring again", path, err)
        return {}
    return data if isinstance(data, dict) else {}


def _write(path: Path, key: str, entry: dict[str, Any]) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        data = _read(path)  # another run may have added its own entry meanwhile
        data[key] = entry
        tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
        # 0600: the entries name the data's path and come from the validation data
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as fh:
            fh.write(json.dumps(data, indent=1))
        os.chmod(tmp, 0o600)  # an old tmp file of the same name keeps its mode through O_CREAT
        os.replace(tmp, path)
    except OSError as err:  # never fail a run because of a cache
        log.warning("the baseline cache %s could not be written: %s", path, err)


def _clean(metrics: dict[str, Any]) -> dict[str, Any]:
    """The metrics with NaN as None (JSON has no NaN); perplexity is NaN for classification."""
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in metrics.items() if k in METRICS}


def untuned_metrics(key: str, measure: Callable[[], dict[str, Any]], *, cache: Path | None, about: dict[str, Any]):
    """(metrics, cached): the entry for ``key`` in ``cache`` when there is one, else ``measure()`` stored under it.
    ``about`` is kept beside the numbers for a person reading the file (model and data names, examples)."""
    if cache is not None:
        hit = _read(cache).get(key)
        if isinstance(hit, dict) and isinstance(hit.get("metrics"), dict):
            return {k: hit["metrics"].get(k) for k in METRICS}, True
    metrics = _clean(measure())
    if cache is not None:
        _write(cache, key, {"metrics": metrics, **about, "measured": time.time()})
    return metrics, False
