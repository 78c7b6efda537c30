"""One validated, frozen run configuration.

Every field carries its help text once (``Field(description=...)``); the command line, the app's
tooltips and the docs read it from here.  ``RunConfig.from_overrides`` turns ``key=value`` strings
(``workbench train --set ...``) into typed values with messages that name the bad key.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from workbench.errors import UserError

ACCOUNTANT_CHOICES = ("pld", "rdp", "prv", "edgeworth")
NEIGHBORING_CHOICES = ("auto", "replace_one", "add_remove")


class ConfigError(UserError, ValueError):
    """A configuration a user wrote is not usable; the message says which key and what to do."""


# Quantile clip norms (engine/allocation.py): each key's valid range and the message when it is outside.
_QUANTILE_RULES = {
    "clip_quantile": (
        lambda v: 0 < v < 1,
        "must be strictly between 0 and 1 (the target fraction of units whose module norm is under C_l; "
        "0 or 1 would drive C_l to 0 or to infinity), e.g. 0.5",
    ),
    "clip_quantile_share": (
        lambda v: 0 < v < 1,
        "must be strictly between 0 and 1: it splits one noise budget between the counts (share) and the "
        "gradient (1 - share), and 0 would leave nothing for the counts, 1 nothing for the gradient; e.g. 0.05",
    ),
    "clip_quantile_lr": (
        lambda v: v > 0 and math.isfinite(v),
        "must be a finite number above 0 (the geometric update rate eta), e.g. 0.2",
    ),
}


class RunConfig(BaseModel):
    """Everything that defines a DP-LoRA fine-tuning run."""

    model_config = ConfigDict(frozen=True, extra="forbid", protected_namespaces=())

    # what to train
    name: str | None = Field(None, description="A label for the run, shown in lists.")
    model: str = Field(
        "default",
        description="'default' (SmolLM2-135M-Instruct, offline GGUF), 'tiny' (a small random Llama for "
        "tests), 'minilm' (the all-MiniLM-L6-v2 encoder, offline, for classification), a Hugging Face hub id, a "
        "local model directory, or a path to a .gguf file.",
    )
    task: Literal["auto", "causal_lm", "classification"] = Field(
        "auto", description="'auto' picks classification for text+label data, causal LM otherwise."
    )
    data: str = Field("demo", description="'demo', a .jsonl/.json/.csv/.tsv/.parquet file, or a hub dataset.")
    validation_data: str | None = Field(None, description="A validation file; default: hold out a fraction.")
    validation_fraction: float = Field(
        0.1, gt=0, lt=1, description="Held-out fraction (split by user when user_id exists)."
    )
    columns: dict[str, str] = Field(
        default_factory=dict, description="Map schema roles to your column names, e.g. {text: sentence}."
    )
    labels: list[str] | None = Field(
        None,
        description="Classification labels, in order (e.g. [negative, positive] or [0, 1]). The head's width and "
        "label ids come from here, never from the private data (a label only one record uses would reveal it), so a "
        "private classification run needs them; data with a label not listed is refused. `workbench data FILE` "
        "lists the labels a file holds.",
    )
    max_seq_len: int = Field(256, ge=8, description="Longer sequences are truncated (prompt first).")
    response_max_tokens: int | None = Field(
        None,
        ge=1,
        description="Train and validate on the first N tokens of each response only, the rest cut (e.g. the "
        "answer line of a routing prompt): shorter sequences, and the loss on the decision. Empty: the whole response.",
    )

    # how long
    max_steps: int | None = Field(None, ge=1, description="Number of logical DP-SGD steps.")
    epochs: float | None = Field(None, gt=0, description="Passes over the data in expectation (steps = epochs / q).")
    batch_size: int = Field(
        32, ge=1, description="Expected logical batch size; the sampling rate is q = batch_size / N."
    )
    physical_batch_size: int = Field(
        16, ge=1, description="Examples per forward/backward pass; bounds memory whatever the sampled batch is."
    )

    # privacy
    target_epsilon: float | None = Field(
        8.0, gt=0, description="Privacy budget; the noise multiplier is calibrated to reach it at the last step."
    )
    noise_multiplier: float | None = Field(
        None, ge=0, description="Noise std / clipping norm. Set it instead of target_epsilon; 0 = non-private."
    )
    delta: float | None = Field(None, gt=0, lt=1, description="Delta of (epsilon, delta)-DP; default: below 1/N.")
    max_grad_norm: float | None = Field(
        1.0, gt=0, description="Per-example clipping norm C. Empty (None) means no clipping (non-private only)."
    )
    accountant: Literal["pld", "rdp", "prv", "edgeworth"] = Field(
        "pld",
        description="Privacy accountant: pld (tightest, default), rdp or prv (upper bounds). 'edgeworth' is an "
        "approximation: it is shown beside PLD, and PLD still sets the noise and the budget stop.",
    )
    neighboring: Literal["auto", "replace_one", "add_remove"] = Field(
        "auto",
        description="Neighbouring datasets the epsilon is for. replace_one: one unit replaced (neighbours have the same "
        "size, so the exact size is public and published). add_remove: one unit added or removed (the exact size would "
        "reveal membership, so q, delta, steps and the published size all come from public_dataset_size, which it "
        "needs). auto: add_remove when public_dataset_size is given, else replace_one where the accountant has it (PLD "
        "over examples or ULS users); rdp, prv, edgeworth and ELS analyse add_remove only, so they need "
        "public_dataset_size.",
    )
    public_dataset_size: int | None = Field(
        None,
        ge=1,
        description="The number of training units you declare public (examples; users under ULS; examples after the "
        "per-user cap under ELS), e.g. what a paper or data sheet states. Given, the epsilon is for add/remove "
        "neighbours (the relation most papers report; less noise than replace_one for the same epsilon) and every "
        "published number (q = batch_size / this, the steps, the default delta, the size) comes from it, never from "
        "the data. `workbench check` shows the data's count to copy.",
    )
    privacy_unit: Literal["example", "user"] = Field(
        "example", description="The unit the guarantee protects: one example, or one user (needs user_id)."
    )
    user_sampling: Literal["els", "uls"] = Field(
        "els",
        description="User-level DP: 'els' samples examples (user epsilon by the mixture-of-Gaussians PLD); "
        "'uls' samples users, each contributing the clipped mean of its examples.",
    )
    max_examples_per_user: int = Field(8, ge=1, description="k: each user's examples are capped at k (user-level DP).")
    user_example_selection: Literal["random", "longest"] = Field(
        "random", description="Which k examples a user keeps: a seeded random choice, or the longest."
    )
    clipping: Literal["auto", "flat", "per_layer"] = Field(
        "auto",
        description="'flat': one norm C over all LoRA modules; 'per_layer': module l clipped to C_l "
        "(||(C_l)|| = C). 'auto': flat for uniform allocation with fixed clip norms, per_layer otherwise.",
    )
    allocation: Literal["uniform", "manual", "adaptive"] = Field(
        "uniform",
        description="Per-layer noise allocation keeping sum sigma_l^-2 = sigma^-2: uniform, manual (weights), "
        "or adaptive (importance from released noisy gradients: post-processing, no extra privacy cost).",
    )
    allocation_weights: dict[str, float] = Field(
        default_factory=dict, description="manual allocation: {module pattern: weight}; more weight, less noise."
    )
    clip_allocation: Literal["fixed", "importance", "quantile"] = Field(
        "fixed",
        description="Per-layer clip norms: 'fixed' equal shares C/sqrt(L); 'importance' shares by importance; "
        "'quantile' (Andrew et al. 2021) each module's C_l starts at C/sqrt(L) and follows the clip_quantile of its "
        "per-unit gradient norms, learnt from a noised count of the units under C_l each step. The count spends "
        "clip_quantile_share of the noise budget inside the same plan (the epsilon is unchanged; the gradient noise "
        "grows by 1/sqrt(1 - share)). Needs per-layer clipping (auto chooses it) and a private run.",
    )
    clip_quantile: float = Field(
        0.5, description="quantile clipping: the target quantile gamma of each module's per-unit norms, in (0, 1)."
    )
    clip_quantile_share: float = Field(
        0.05,
        description="quantile clipping: the share of the privacy budget (noise precision) spent on the noised "
        "counts; the rest goes to the gradient.",
    )
    clip_quantile_lr: float = Field(
        0.2, description="quantile clipping: the geometric rate eta > 0 of C_l <- C_l exp(-eta (bbar_l - gamma))."
    )
    allocation_smoothing: float = Field(0.9, ge=0, lt=1, description="adaptive: moving-average factor of the score.")
    allocation_bound: float = Field(
        3.0, ge=1, description="Each sigma_l stays within [sigma sqrt(L)/b, sigma sqrt(L) b] (floor and ceiling)."
    )

    # empirical privacy audit (privacy/audit.py, engine/canaries.py)
    audit: Literal["none", "gradient_canaries", "input_canaries"] = Field(
        "none",
        description="An empirical privacy audit in one run (Steinke, Nasr, Jagielski 2023). 'gradient_canaries' "
        "(white-box): audit_canaries secret canary gradients (each included with probability 1/2, a unit of norm C "
        "along a random direction) go through the same clipping and noise; needs flat clipping. 'input_canaries' "
        "(black-box): audit_canaries secret random training examples in the data's format (each included with "
        "probability 1/2) are trained like any example, and each is scored by how much training lowered the "
        "adapter's loss on it. Either way the run reports an epsilon lower bound beside the claimed epsilon, and on "
        "the demo data the exposure of its planted secrets. The real data's guarantee is unchanged, but the canaries "
        "are trained into the adapter: an audit run is for checking the implementation, not for release. Needs "
        "max_grad_norm.",
    )
    audit_canaries: int | None = Field(
        None,
        ge=2,
        description="m: the number of canaries of the audit, each included with probability 1/2. Empty: 1000 gradient "
        "canaries, or min(1000, N // 2) input canaries for N training units; more input canaries than N are refused.",
    )

    # optimisation
    optimizer: Literal["adamw", "sgd"] = Field("adamw", description="Optimizer applied to the privatised gradient.")
    learning_rate: float = Field(2e-3, gt=0, description="Peak learning rate.")
    weight_decay: float = Field(0.0, ge=0, description="Decoupled weight decay (AdamW).")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum.")
    warmup_steps: int = Field(0, ge=0, description="Linear warm-up steps.")
    lr_schedule: Literal["constant", "linear", "cosine"] = Field("linear", description="Decay after warm-up.")

    # LoRA
    lora_r: int = Field(8, ge=1, description="LoRA rank.")
    lora_alpha: float = Field(16.0, gt=0, description="LoRA scaling alpha.")
    lora_dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the LoRA input.")
    lora_layers: int | None = Field(
        None, ge=1, description="LoRA only in the last N transformer layers (the backward pass stops there: faster)."
    )
    lora_target_modules: str = Field(
        "auto",
        description="'auto' (attention query and value projections), 'all-linear', or comma-separated module names.",
    )

    # evaluation and output
    eval_every: int = Field(0, ge=0, description="Evaluate every N steps; 0 = about five times per run.")
    eval_max_examples: int = Field(64, ge=1, description="Validation examples used per evaluation.")
    generate_max_new_tokens: int = Field(32, ge=0, description="Tokens generated per sample prompt (0 = none).")
    baseline_eval: bool = Field(
        True,
        description="Evaluate the untuned model first (step 0, validation loss and accuracy, no generations), shown "
        "beside the run's metric; cached per model, data and evaluation settings under the workbench home.",
    )
    seed: int = Field(
        0,
        description="Seeds only what may be public: LoRA and head initialisation, dropout, the demo data, the "
        "validation split's salt. Poisson sampling and noise come from a fresh secret key from the OS every run.",
    )
    split_seed: int | None = Field(
        None,
        description="Salt of which units the validation split holds out and which examples each user keeps (public, "
        "like seed); default: seed. Tuning mode holds it fixed, so every run it draws trains on the same data.",
    )
    noise_seed: int | None = Field(
        None,
        description="Seed the Poisson sampling and the noise instead of a secret key: reproducible for teaching and "
        "debugging, but with NO differential-privacy guarantee (anyone with the seed can replay the noise). Such runs "
        "are labelled 'seeded randomness' everywhere and export refuses them unless forced.",
    )
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="'auto' uses CUDA when present.")
    nproc: int = Field(
        1,
        ge=1,
        description="Processes of one data-parallel DP-SGD run (one GPU each on CUDA; gloo on the CPU). Each samples "
        "its own shard at rate q, the clipped sums are added up and the noise is added once: the same privacy as "
        "one process. `workbench train --nproc N` (or torchrun, whose world size it then records) starts the ranks; the "
        "app, a notebook or a Session host them, as rank 0 with ranks 1..N-1 as child processes.",
    )
    output_dir: str | None = Field(None, description="Where the adapter goes; default: the run's folder.")

    @field_validator("labels", mode="before")
    @classmethod
    def _labels_as_text(cls, v: Any) -> Any:
        """Labels as the data files hold them: `labels: [0, 1]` means the classes "0" and "1"."""
        if isinstance(v, (list, tuple)):
            return [str(x).lower() if isinstance(x, bool) else str(x) if isinstance(x, (int, float)) else x for x in v]
        return v

    @field_validator("clip_quantile", "clip_quantile_share", "clip_quantile_lr")
    @classmethod
    def _quantile_settings(cls, v: float, info) -> float:
        inside, message = _QUANTILE_RULES[info.field_name]
        if not inside(v):
            raise ValueError(message)
        return v

    @model_validator(mode="after")
    def _check(self) -> "RunConfig":
        if self.max_steps is not None and self.epochs is not None:
            raise ValueError("set max_steps or epochs, not both")
        if self.noise_multiplier is not None and self.noise_multiplier > 0 and self.max_grad_norm is None:
            raise ValueError("noise needs a clipping norm: set max_grad_norm (e.g. 1.0)")
        if self.noise_multiplier is None and self.target_epsilon is None:
            raise ValueError("set target_epsilon or noise_multiplier (noise_multiplier=0 is the non-private baseline)")
        if self.allocation != "uniform" and self.clipping == "flat":
            raise ValueError(
                "non-uniform noise with one flat clipping norm is only as private as its least noisy module; "
                "use clipping=per_layer (or auto)"
            )
        if self.clip_allocation == "quantile":
            self._check_quantile()
        if self.audit != "none" and self.max_grad_norm is None:
            raise ValueError(
                f"audit={self.audit} needs a clipping norm: without max_grad_norm nothing bounds a unit's influence, "
                "so there is no privacy claim to audit. Set max_grad_norm (e.g. 1.0), or audit=none"
            )
        if self.audit == "gradient_canaries" and self.resolved_clipping == "per_layer":
            raise ValueError(
                "audit=gradient_canaries needs flat clipping: a canary is one unit of norm C along a direction over all "
                "LoRA modules, which per-layer clip norms would cut differently per module. Use clipping=flat and "
                "allocation=uniform for the audit run"
            )
        if self.labels is not None and len(set(self.labels)) != len(self.labels):
            raise ValueError(f"labels must be distinct. Found {self.labels}")
        if self.labels is not None and len(self.labels) < 2:
            raise ValueError(f"labels needs at least two classes. Found {self.labels}")
        if self.physical_batch_size > 4096:
            raise ValueError("physical_batch_size above 4096 is not supported")
        if self.lora_dropout > 0 and self.is_private:
            raise ValueError(
                f"lora_dropout={self.lora_dropout:g} is refused for a private run: dropout masks come from a public, "
                "seeded generator in batch order, so one unit's clipped gradient would depend on which other units "
                "were sampled and the clipping bound would not hold. Set lora_dropout=0 (noise_multiplier=0, the "
                "non-private baseline, may keep it)"
            )
        return self

    def _check_quantile(self) -> None:
        if self.clipping == "flat":
            raise ValueError(
                "clip_allocation=quantile learns one clip norm C_l per module, so it needs per-layer clipping: "
                "set clipping=per_layer (or auto), or clip_allocation=fixed for flat clipping"
            )
        if self.noise_multiplier == 0 or self.max_grad_norm is None:
            raise ValueError(
                "clip_allocation=quantile needs a private run: its thresholds are learnt from noised counts whose "
                "noise is a share of the gradient's (noise_multiplier > 0 or target_epsilon, and max_grad_norm). "
                "Use clip_allocation=fixed for a non-private run"
            )

    @property
    def resolved_clipping(self) -> str:
        if self.clipping != "auto":
            return self.clipping
        return "flat" if self.allocation == "uniform" and self.clip_allocation != "quantile" else "per_layer"

    # -- derived ---------------------------------------------------------------------------------
    @property
    def is_private(self) -> bool:
        return not (self.noise_multiplier == 0)

    @property
    def split_salt(self) -> int:
        """The salt of the validation split and the per-user cap: split_seed, else seed."""
        return self.seed if self.split_seed is None else self.split_seed

    def default_delta(self, *, dataset_size: int) -> float:
        """A delta comfortably below 1/N: the largest power of ten not above 1/(10 N), at most 1e-5."""
        return min(1e-5, 10.0 ** math.floor(math.log10(1.0 / (10 * dataset_size))))

    # -- round trips -----------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RunConfig":
        try:
            return cls.model_validate(data)
        except ValidationError as err:
            raise ConfigError(_explain(err)) from None

    @classmethod
    def from_file(cls, path: str | Path) -> "RunConfig":
        path = Path(path)
        if not path.exists():
            raise ConfigError(f"config file {path} does not exist. Check the path.")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as err:
            raise ConfigError(f"config file {path} is not valid YAML/JSON: {err}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file {path} must hold a mapping of keys to values. Found {type(data).__name__}.")
        return cls.from_dict(data)

    def with_overrides(self, overrides: list[str] | dict[str, Any]) -> "RunConfig":
        """Apply ``key=value`` strings (values parsed as YAML) or a dict on top of this config."""
        data = self.to_dict()
        if isinstance(overrides, dict):
            items = overrides.items()
        else:
            items = [_split_override(item) for item in overrides]
        for key, value in items:
            if key not in RunConfig.model_fields:
                close = [k for k in RunConfig.model_fields if key.replace("-", "_") == k]
                hint = f" Did you mean {close[0]}?" if close else " Run `workbench train --help-keys` for the list."
                raise ConfigError(f"unknown config key {key!r}.{hint}")
            data[key] = value
        return RunConfig.from_dict(data)

    @staticmethod
    def help_table() -> list[tuple[str, str, str]]:
        """(key, default, help) for every field, for CLI and UI help."""
        return [
            (name, json.dumps(f.get_default(call_default_factory=True)), f.description or "")
            for name, f in RunConfig.model_fields.items()
        ]


def _split_override(item: str) -> tuple[str, Any]:
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not key=value, e.g. --set batch_size=64.")
    key, raw = item.split("=", 1)
    key = key.strip().replace("-", "_")
    if raw.strip().lower() in ("none", "null", ""):
        return key, None
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        value = raw
    return key, value


def _explain(err: ValidationError) -> str:
    parts = []
    for e in err.errors():
        loc = ".".join(str(x) for x in e["loc"]) or "config"
        found = e.get("input")
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            parts.append(f"unknown config key {loc!r}")
        elif e["loc"]:
            parts.append(f"{loc}: {msg}. Found {found!r}.")
        else:
            parts.append(msg)
    return "; ".join(parts)
