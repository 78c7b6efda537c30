"""From the values of the Plan and Train controls to a checked RunConfig and a privacy plan.

No gradio and no training logic: RunConfig validates the keys, the engine's data loader and
``make_plan`` check the data, the batch and delta, and the privacy package computes the curves.
Everything raises the engine's user errors (ConfigError, DataError, PrivacyError) with messages.
"""

from __future__ import annotations

import os
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np

from workbench.config import ConfigError, RunConfig

# Names of the Plan tab's controls, in the order the app passes them to callbacks.
PLAN_FIELDS = (
    "data_mode", "upload_path", "data_path", "batch_size", "length_mode", "epochs", "max_steps",
    "delta", "privacy_mode", "target_epsilon", "noise_multiplier", "max_grad_norm", "accountant",
)
# Names of the Train tab's controls (each a RunConfig key).
TRAIN_FIELDS = (
    "model", "name", "lora_r", "lora_alpha", "lora_dropout", "lora_target_modules",
    "optimizer", "learning_rate", "physical_batch_size", "eval_every", "seed",
)
BUILTIN_MODELS = ("default", "tiny")
PLAN_ACCOUNTANTS = ("rdp", "prv", "pld")  # always drawn; the selected one is added when it is another
# Points per curve while the knobs move: RDP and Edgeworth cost well under a millisecond a point,
# PLD about 50 ms and PRV 0.3-1 s (measured on 2 busy CPU cores), so the slow ones get fewer.
CURVE_POINTS = {"rdp": 50, "edgeworth": 50, "pld": 25, "prv": 10}
SLOW_ACCOUNTANTS = ("pld", "prv")


@dataclass(frozen=True)
class DataInfo:
    source: str
    n_total: int
    n_train: int
    n_users: int | None
    task: str

    def describe(self, batch_size: int | None = None) -> str:
        text = f"**N = {self.n_train:,}** training examples ({self.n_total:,} loaded, {self.n_total - self.n_train:,} held out for validation"
        text += f"; {self.n_users:,} users)" if self.n_users else ")"
        if batch_size:
            text += f" · sampling rate q = {batch_size}/{self.n_train:,} = {min(1.0, batch_size / self.n_train):.4g}"
        return text


@dataclass(frozen=True)
class PlanResult:
    """A privacy plan as the Plan tab shows it; ``pending`` accountants are still being computed."""

    noise_multiplier: float
    sample_rate: float
    steps: int
    delta: float
    accountant: str
    target_epsilon: float | None
    curves: dict[str, list[tuple[int, float]]]  # accountant -> (step, epsilon)
    pending: tuple[str, ...] = ()
    provisional: bool = False  # noise_multiplier is RDP's while the chosen accountant calibrates

    def final_epsilon(self, accountant: str) -> float | None:
        curve = self.curves.get(accountant)
        return curve[-1][1] if curve else None


def resolve_data(mode: str, upload_path: str | None, data_path: str | None) -> str:
    """The data source the controls describe: 'demo', the stored upload, or the typed path."""
    if mode == "upload":
        if not upload_path:
            raise ConfigError("no file uploaded yet: drop a .jsonl, .json, .csv, .tsv or .parquet file on the upload box.")
        return upload_path
    if mode == "path":
        path = (data_path or "").strip()
        if not path:
            raise ConfigError("type the path of a data file on this machine (or choose the demo dataset).")
        return path
    return "demo"


def _number(value: Any, *, integer: bool = False) -> Any:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if integer and isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _parse_float(name: str, value: Any) -> float | None:
    """A number typed as text ('1e-5'); empty or 'auto' means None (the default)."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "auto")):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a number such as 1e-5. Found {value!r}.") from None


def config_from_values(values: Mapping[str, Any], *, base: RunConfig | None = None) -> RunConfig:
    """A RunConfig from the controls' values (PLAN_FIELDS and TRAIN_FIELDS by name)."""
    base = base or RunConfig()
    o: dict[str, Any] = {}
    if "data_mode" in values:
        o["data"] = resolve_data(values["data_mode"], values.get("upload_path"), values.get("data_path"))
    if "batch_size" in values:
        o["batch_size"] = _number(values["batch_size"], integer=True)
    if "length_mode" in values:
        steps_mode = values["length_mode"] == "steps"
        o["max_steps"] = _number(values.get("max_steps"), integer=True) if steps_mode else None
        o["epochs"] = None if steps_mode else _number(values.get("epochs"))
        if steps_mode and o["max_steps"] is None:
            raise ConfigError("steps is empty: enter the number of training steps (or switch to epochs).")
    if "delta" in values:
        o["delta"] = _parse_float("delta", values["delta"])
    if "privacy_mode" in values:
        if values["privacy_mode"] == "sigma":
            o["noise_multiplier"], o["target_epsilon"] = _number(values.get("noise_multiplier")), None
            if o["noise_multiplier"] is None:
                raise ConfigError("noise multiplier is empty: enter one (0 = non-private) or switch to target ε.")
        else:
            o["noise_multiplier"], o["target_epsilon"] = None, _number(values.get("target_epsilon"))
            if o["target_epsilon"] is None:
                raise ConfigError("target ε is empty: enter a privacy budget such as 8, or set a noise multiplier.")
    for key in ("max_grad_norm", "accountant", *TRAIN_FIELDS):
        if key in values and key != "name":
            o[key] = _number(values[key], integer=key in ("lora_r", "physical_batch_size", "eval_every", "seed"))
    if "name" in values:
        o["name"] = (values["name"] or "").strip() or None
    if isinstance(o.get("model"), str):
        o["model"] = o["model"].strip()
    return base.with_overrides(o)


def check_model(model: str) -> None:
    """Built-in names and hub ids pass; a path (it has a slash and exists nowhere) must exist."""
    if model in BUILTIN_MODELS or os.path.exists(os.path.expanduser(model)):
        return
    looks_like_path = model.startswith(("/", ".", "~")) or model.endswith(".gguf") or model.count("/") > 1 or "\\" in model
    if looks_like_path or not re.fullmatch(r"[\w.\-]+(/[\w.\-]+)?", model):
        raise ConfigError(
            f"model {model!r}: no such file or folder. Use 'default', 'tiny', a Hugging Face hub id, "
            "or the path of a local model folder or .gguf file."
        )


_DATA_CACHE: OrderedDict[tuple, DataInfo] = OrderedDict()
_DATA_LOCK = threading.Lock()


def dataset_info(source: str, *, validation_fraction: float = 0.1, seed: int = 0) -> DataInfo:
    """Load ``source`` (cached by path, size and modification time) and count its training split."""
    path = Path(source).expanduser()
    stamp = (path.stat().st_size, path.stat().st_mtime_ns) if source != "demo" and path.is_file() else None
    key = (source, stamp, validation_fraction, seed)
    with _DATA_LOCK:
        if key in _DATA_CACHE:
            return _DATA_CACHE[key]
    from workbench.engine import data as data_mod

    ds = data_mod.load_dataset(source)
    train, _ = data_mod.split_validation(ds, fraction=validation_fraction, seed=seed)
    info = DataInfo(source=source, n_total=len(ds), n_train=len(train), n_users=ds.num_users, task=ds.task)
    with _DATA_LOCK:
        _DATA_CACHE[key] = info
        while len(_DATA_CACHE) > 8:
            _DATA_CACHE.popitem(last=False)
    return info


def curve_steps(steps: int, points: int) -> list[int]:
    """About ``points`` steps from 0 to ``steps`` at which to evaluate a curve: half evenly spaced,
    half geometrically spaced, because epsilon rises fastest over the first steps."""
    even = np.linspace(0, steps, max(2, points - points // 2))
    early = np.geomspace(1, max(1, steps), max(1, points // 2)) if steps >= 1 else []
    return sorted({int(round(x)) for x in (*even, *early)})


def plan_stages(config: RunConfig, *, dataset_size: int) -> Iterator[PlanResult | None]:
    """The plan for ``config`` on N examples, progressively: each PlanResult adds a curve.

    Fast things come first (RDP's calibration and curve take well under a second); PLD and PRV
    follow.  ``None`` is yielded between points of the slow accountants, as a place to stop
    when the knobs moved on (the caller simply stops iterating).
    """
    from workbench import privacy
    from workbench.engine.plan import make_plan

    fixed = config.noise_multiplier is not None
    probe = make_plan(config.with_overrides({"noise_multiplier": config.noise_multiplier if fixed else 0.0}),
                      dataset_size=dataset_size)  # the engine's checks: batch <= N, delta < 1/N
    q, steps, delta, chosen = probe.sample_rate, probe.steps, probe.delta, config.accountant
    target = None if fixed else config.target_epsilon
    order = [a for a in dict.fromkeys(("rdp", chosen, *PLAN_ACCOUNTANTS))]

    def result(sigma: float, curves: dict, done: int, provisional: bool = False) -> PlanResult:
        return PlanResult(noise_multiplier=sigma, sample_rate=q, steps=steps, delta=delta, accountant=chosen,
                          target_epsilon=target if sigma > 0 else None, curves=dict(curves),
                          pending=tuple(order[done:]), provisional=provisional)

    def curve(name: str, sigma: float) -> Iterator[tuple[int, float] | None]:
        for t in curve_steps(steps, CURVE_POINTS.get(name, 25)):
            yield (t, privacy.epsilon_curve(noise_multiplier=sigma, sample_rate=q, steps=t, delta=delta,
                                            accountant=name, max_points=1)[-1][1] if t else 0.0)
            if name in SLOW_ACCOUNTANTS:
                yield None

    if fixed:
        sigma = float(config.noise_multiplier)
    else:
        if chosen in SLOW_ACCOUNTANTS:  # show RDP's answer while the chosen accountant calibrates
            sigma_rdp = privacy.calibrate(target_epsilon=target, sample_rate=q, steps=steps, delta=delta, accountant="rdp")
            yield result(sigma_rdp, {"rdp": [p for p in curve("rdp", sigma_rdp) if p]}, 0, provisional=True)
        sigma = privacy.calibrate(target_epsilon=target, sample_rate=q, steps=steps, delta=delta, accountant=chosen)
    if sigma == 0:
        yield PlanResult(0.0, q, steps, delta, chosen, None, {})
        return
    curves: dict[str, list[tuple[int, float]]] = {}
    for i, name in enumerate(order):
        points = []
        for point in curve(name, sigma):
            if point is None:
                yield None
            else:
                points.append(point)
        curves[name] = points
        yield result(sigma, curves, i + 1)


def compute_plan(config: RunConfig, *, dataset_size: int, curves: bool = True) -> PlanResult:
    """The complete plan (every curve), or with ``curves=False`` just the engine's plan (sigma)."""
    if curves:
        *_, last = (stage for stage in plan_stages(config, dataset_size=dataset_size) if stage is not None)
        return last
    from workbench.engine.plan import make_plan

    plan = make_plan(config, dataset_size=dataset_size)  # checks batch <= N and delta < 1/N; calibrates sigma
    return PlanResult(noise_multiplier=float(plan.noise_multiplier), sample_rate=plan.sample_rate, steps=plan.steps,
                      delta=plan.delta, accountant=plan.accountant, target_epsilon=plan.target_epsilon, curves={})


def check_start(config: RunConfig) -> PlanResult:
    """Everything that can be checked before a run starts; raises a user error with a message."""
    check_model(config.model)
    if config.validation_data:
        dataset_info(config.validation_data)
    info = dataset_info(config.data, validation_fraction=config.validation_fraction, seed=config.seed)
    return compute_plan(config, dataset_size=info.n_train, curves=False)
