"""From the values of the Plan and Train controls to a checked RunConfig and a privacy plan.

No gradio and no training logic: RunConfig validates the keys, the engine's data loader and
``make_plan`` check the data, the batch and delta, and the privacy package computes the curves.
Everything raises the engine's user errors (ConfigError, DataError, PrivacyError) with messages.
"""

from __future__ import annotations

import math
import os
import re
import threading
from collections import Counter, OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from workbench.app.controls import HAND_MADE, field_spec
from workbench.config import ConfigError, RunConfig
from workbench.planning.stages import (  # noqa: F401  (the Plan tab's names for them)
    PlanResult,
    UserLevel,
    compute_plan,
    plan_stages,
)

# The Plan and Train tabs' controls by name: the callbacks receive them by name (Gradio's inputs_kwargs), so the
# order means nothing. Each is a RunConfig field's control (controls.py, from the field's type, range and help)
# unless controls.HAND_MADE lists it.
PLAN_FIELDS = (
    "data_mode",
    "upload_path",
    "data_path",
    "columns",
    "validation_data",
    "batch_size",
    "max_grad_norm",
    "length_mode",
    "epochs",
    "max_steps",
    "privacy_mode",
    "target_epsilon",
    "noise_multiplier",
    "delta",
    "accountant",
    "max_examples_per_user",
    "neighboring",
    "privacy_unit",  # example, user:els or user:uls (PRIVACY_UNIT_CHOICES): privacy_unit and user_sampling
    "public_size",  # a checkbox: public_dataset_size = the chosen data's training count (add/remove neighbours)
    "labels",  # comma-separated class names (classification)
)
PRIVACY_UNIT_CHOICES = [
    ("one example", "example"),
    ("one user: ELS (examples sampled, k per user)", "user:els"),
    ("one user: ULS (users sampled)", "user:uls"),
]
# The Train tab's "LoRA and optimiser" rows: each name a field-backed control (controls.py). A new field shown
# there is one name here.
TRAIN_ROWS = (
    ("lora_r", "lora_alpha", "lora_dropout"),
    ("lora_target_modules",),
    ("optimizer", "learning_rate"),
    ("physical_batch_size", "eval_every", "seed"),
)
TRAIN_FIELDS = ("model", "name", *(name for row in TRAIN_ROWS for name in row), "nproc", "audit")
# Fields read only with the radio that says which of them counts (length_mode, privacy_mode).
_MODE_FIELDS = {"epochs", "max_steps", "target_epsilon", "noise_multiplier"}
BUILTIN_MODELS = ("default", "tiny", "minilm")  # every model the package ships (engine/models.py)


@dataclass(frozen=True)
class DataInfo:
    source: str
    n_total: int
    n_train: int
    n_users: int | None
    task: str
    description: dict | None = None  # engine.data.describe_dataset without a tokenizer: schema, columns, labels...
    validation_file: str | None = None  # the validation_data file, when one is given
    n_validation: int | None = None  # its examples
    user_counts: tuple[int, ...] = ()  # examples of each user in the training split

    def sizes(self, config: RunConfig | Mapping[str, Any]) -> tuple[int, int | None]:
        """(training examples after the per-user cap, users of the training split): the counts a run plans with
        (``engine.prepare.dataset_sizes`` computes the same from the run's own split)."""
        from workbench.planning.sizes import unit_sizes

        get = config.get if isinstance(config, Mapping) else lambda k, d=None: getattr(config, k, d)
        n, users = unit_sizes(
            examples=self.n_train,
            user_counts=self.user_counts,
            privacy_unit=get("privacy_unit"),
            k=get("max_examples_per_user", 8),
        )
        return n, users or self.n_users

    def describe(self, batch_size: int | None = None) -> str:
        if self.validation_file:
            text = (
                f"**N = {self.n_train:,}** training examples ({self.n_validation:,} for validation from "
                f"{Path(self.validation_file).name}"
            )
        else:
            text = f"**N = {self.n_train:,}** training examples ({self.n_total:,} loaded, {self.n_total - self.n_train:,} held out for validation"
        text += f"; {self.n_users:,} users)" if self.n_users else ")"
        if batch_size:
            text += f" · sampling rate q = {batch_size}/{self.n_train:,} = {min(1.0, batch_size / self.n_train):.4g}"
        return text


def ctx_base(ctx) -> RunConfig:
    """The app's base config: the defaults it was opened with (``AppContext.defaults``) over the run config's."""
    return RunConfig().with_overrides(ctx.defaults)


def resolve_data(mode: str, upload_path: str | None, data_path: str | None) -> str:
    """The data source the controls describe: 'demo', the stored upload, or the typed path."""
    if mode == "upload":
        if not upload_path:
            raise ConfigError(
                "no file uploaded yet: drop a .jsonl, .json, .csv, .tsv or .parquet file on the upload box."
            )
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


def whole_number(name: str, value: Any) -> int:
    """A control that must hold a whole number >= 1."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if isinstance(value, bool) or not (number.is_integer() and number >= 1):
        raise ConfigError(f"{name} must be a whole number ≥ 1. Found {value!r}.")
    return int(number)


def parse_group_size(value: Any) -> int:
    """The "max examples per user k" control: a whole number >= 1."""
    if value is None or (isinstance(value, str) and not value.strip()):
        raise ConfigError(
            "max examples per user k is empty: enter a whole number ≥ 1 such as 4 (1 = one example per user)."
        )
    try:
        k = float(value)
    except (TypeError, ValueError):
        k = math.nan
    if isinstance(value, bool) or not (k.is_integer() and k >= 1):
        raise ConfigError(
            f"max examples per user k must be a whole number ≥ 1 (each user's examples are capped at k). "
            f"Found {value!r}; enter e.g. 4."
        )
    return int(k)


def parse_columns(value: Any) -> dict[str, str]:
    """The Columns control: 'text=sentence, label=label' -> {"text": "sentence", "label": "label"} (empty: {})."""
    from workbench.engine.data import ROLES

    out: dict[str, str] = {}
    for part in str(value or "").split(","):
        if not part.strip():
            continue
        role, sep, column = (x.strip() for x in part.partition("="))
        if not sep or not role or not column:
            raise ConfigError(
                f"columns: {part.strip()!r} is not role=column. Write pairs separated by commas, e.g. "
                "text=sentence, label=label."
            )
        if role not in ROLES:
            raise ConfigError(f"columns: unknown role {role!r} (in {part.strip()!r}). Roles: {', '.join(ROLES)}.")
        out[role] = column
    return out


def data_options(values: Mapping[str, Any], base: RunConfig) -> dict[str, Any]:
    """``columns`` and ``validation_data`` from the Plan tab's controls (the base config's without them)."""
    columns = parse_columns(values["columns"]) if "columns" in values else dict(base.columns)
    if "validation_data" in values:
        validation = str(values["validation_data"] or "").strip() or None
    else:
        validation = base.validation_data
    return {"columns": columns, "validation_data": validation}


def info_for(source: str, config: RunConfig | Mapping[str, Any]) -> DataInfo:
    """``dataset_info`` of ``source`` read as ``config`` (a RunConfig or its keys) reads it."""
    get = config.get if isinstance(config, Mapping) else lambda k, d=None: getattr(config, k, d)
    return dataset_info(
        source,
        validation_fraction=get("validation_fraction", 0.1),
        seed=get("split_seed") if get("split_seed") is not None else get("seed", 0),
        columns=get("columns") or None,
        validation_data=get("validation_data"),
    )


def config_from_values(values: Mapping[str, Any], *, base: RunConfig | None = None) -> RunConfig:
    """A RunConfig from the controls' values by name (PLAN_FIELDS and TRAIN_FIELDS): the hand-made controls
    (controls.HAND_MADE) and the fields a mode radio chooses between are read here, every other field's
    control by its field's type (``field_value``)."""
    base = base or RunConfig()
    o: dict[str, Any] = {}
    if "data_mode" in values:
        o["data"] = resolve_data(values["data_mode"], values.get("upload_path"), values.get("data_path"))
    if "columns" in values or "validation_data" in values:
        o.update(data_options(values, base))
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
    if "max_examples_per_user" in values:
        o["max_examples_per_user"] = parse_group_size(values["max_examples_per_user"])
    if values.get("neighboring"):
        o["neighboring"] = values["neighboring"]
    if values.get("privacy_unit"):
        o["privacy_unit"], _, sampling = str(values["privacy_unit"]).partition(":")
        if sampling:
            o["user_sampling"] = sampling
    if "labels" in values:
        names = [x.strip() for x in str(values["labels"] or "").split(",") if x.strip()]
        o["labels"] = names or None
    if values.get("public_size"):  # the user declares the training count public: a constant in the config
        o["public_dataset_size"] = public_count(o.get("data", base.data), {**base.to_dict(), **o}, base=base)
    elif "public_size" in values:
        o["public_dataset_size"] = None
    if "audit" in values:  # a checkbox: the white-box one-run audit (privacy/audit.py)
        o["audit"] = "gradient_canaries" if values["audit"] else "none"
    if "nproc" in values:  # the Processes control: data-parallel ranks on this machine
        o["nproc"] = whole_number("processes (nproc)", values["nproc"])
    if "name" in values:
        o["name"] = (values["name"] or "").strip() or None
    if "model" in values:
        o["model"] = (values["model"] or "").strip() or None
    for key, value in values.items():  # every other field's control: its value as the field's type
        if key not in o and key not in _MODE_FIELDS and key not in HAND_MADE and is_field(key):
            parsed = field_value(key, value)
            if parsed is not None or field_spec(key).kind != "choice":  # an empty choice keeps the base's
                o[key] = parsed
    return base.with_overrides(o)


def is_field(name: str) -> bool:
    try:
        field_spec(name)
    except KeyError:
        return False
    return True


def field_value(name: str, value: Any) -> Any:
    """A field-backed control's value as the field's type: a whole number for an int field (2.0 -> 2), a number
    for a float field, text stripped; empty means None (the config says whether None is allowed)."""
    kind = field_spec(name).kind
    if kind in ("int", "float"):
        return _number(value, integer=kind == "int")
    if kind == "bool":
        return bool(value)
    if isinstance(value, str):
        return value.strip() or None
    return value


def public_count(source: str, settings: Mapping[str, Any], *, base: RunConfig) -> int:
    """What the Plan tab's "size is public" box declares: the number of training units of ``source`` that the
    sampling draws from (users under ULS, examples otherwise; under ELS the examples after the per-user cap)."""
    examples, users = info_for(source, settings).sizes(settings)
    uls = settings.get("privacy_unit") == "user" and settings.get("user_sampling") == "uls"
    return int(users if uls and users else examples)


def privacy_unit_value(config: RunConfig) -> str:
    """The privacy-unit control's value for ``config`` (PRIVACY_UNIT_CHOICES)."""
    return "example" if config.privacy_unit == "example" else f"user:{config.user_sampling}"


def check_model(model: str) -> None:
    """Built-in names and hub ids pass; a path (it has a slash and exists nowhere) must exist."""
    if model in BUILTIN_MODELS or os.path.exists(os.path.expanduser(model)):
        return
    looks_like_path = (
        model.startswith(("/", ".", "~")) or model.endswith(".gguf") or model.count("/") > 1 or "\\" in model
    )
    if looks_like_path or not re.fullmatch(r"[\w.\-]+(/[\w.\-]+)?", model):
        raise ConfigError(
            f"model {model!r}: no such file or folder. Use 'default', 'tiny', 'minilm' (classification), a Hugging "
            "Face hub id, or the path of a local model folder or .gguf file."
        )


_DATA_CACHE: OrderedDict[tuple, DataInfo] = OrderedDict()
_DATA_LOCK = threading.Lock()


def _stamp(source: str | None) -> tuple | None:
    path = Path(source or "").expanduser()
    return (path.stat().st_size, path.stat().st_mtime_ns) if source not in (None, "demo") and path.is_file() else None


def dataset_info(
    source: str,
    *,
    validation_fraction: float = 0.1,
    seed: int = 0,
    columns: Mapping[str, str] | None = None,
    validation_data: str | None = None,
) -> DataInfo:
    """Load ``source`` with the ``columns`` mapping (cached by path, size and modification time) and count its
    training split: all of it beside a ``validation_data`` file, else what the held-out fraction leaves. The
    description (schema, columns, labels, users, the first examples) is what `workbench data` shows."""
    mapping = tuple(sorted((columns or {}).items()))
    key = (source, _stamp(source), validation_fraction, seed, mapping, validation_data, _stamp(validation_data))
    with _DATA_LOCK:
        if key in _DATA_CACHE:
            return _DATA_CACHE[key]
    from workbench.engine import data as data_mod

    ds = data_mod.load_dataset(source, columns=dict(mapping) or None)
    n_val = None
    if validation_data:
        n_val, train = len(data_mod.load_dataset(validation_data, columns=dict(mapping) or None)), ds
    else:
        train, _ = data_mod.split_validation(ds, fraction=validation_fraction, seed=seed)
    info = DataInfo(
        source=source,
        n_total=len(ds),
        n_train=len(train),
        n_users=train.num_users or None,  # the training split's: validation holds out whole users
        task=ds.task,
        description=data_mod.describe_dataset(ds, examples=3),
        validation_file=validation_data,
        n_validation=n_val,
        user_counts=tuple(Counter(r.user_id for r in train.records).values()) if train.num_users else (),
    )
    with _DATA_LOCK:
        _DATA_CACHE[key] = info
        while len(_DATA_CACHE) > 8:
            _DATA_CACHE.popitem(last=False)
    return info


def check_start(config: RunConfig) -> PlanResult:
    """Everything that can be checked before a run starts; raises a user error with a message."""
    check_model(config.model)
    info = info_for(config.data, config)
    if info.task == "classification" or config.validation_data:  # the engine's label and validation checks
        from workbench.engine.prepare import labels_needed, load_splits

        if info.task == "classification" and config.labels is None and config.is_private:
            raise ConfigError(labels_needed(config.data))
        load_splits(config)
    examples, users = info.sizes(config)
    return compute_plan(config, dataset_size=examples, num_users=users, curves=False)
