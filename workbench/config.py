"""One validated, frozen run configuration.

Every field carries its help text once (``Field(description=...)``); the command line, the app's
tooltips and the docs read it from here.  ``RunConfig.with_overrides`` turns ``key=value`` strings
(``workbench train --set ...``) into typed values with messages that name the bad key.

Users write and read the configuration in groups (``GROUPS``): YAML files nest them
(``privacy: {target_epsilon: 8}``), ``--set`` takes dotted keys (``--set privacy.target_epsilon=8``,
``--set lora.r=4``), ``to_yaml`` and ``--help-keys`` show them.  A field names its own dotted key
(````); a field without one is a top-level, what-to-train key.  The
code reads the fields flat (``cfg.lora_r``, or ``cfg.lora.r`` through a group's read-only view), and
``to_dict()`` stays flat: the run store, fingerprints and exports keep their keys.  The flat names stay
valid as aliases everywhere a key is accepted.
"""

from __future__ import annotations

import difflib
import json
import math
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from workbench.errors import UserError

ACCOUNTANT_CHOICES = ("pld", "rdp", "prv", "edgeworth")
NEIGHBORING_CHOICES = ("auto", "replace_one", "add_remove")


class ConfigError(UserError, ValueError):
    """A configuration a user wrote is not usable; the message says which key and what to do."""


# The groups of the configuration as users write it (YAML, --set, --help-keys), in the order to_yaml writes
# them after the top-level keys. Each grouped field has its dotted key ("group.name") in KEYS below.
GROUPS: dict[str, str] = {
    "privacy": "the guarantee: budget or noise, delta, accountant, neighbouring relation, privacy unit",
    "clipping": "the per-unit clipping norm, flat or per-layer clipping and the per-layer noise allocation",
    "audit": "the empirical privacy audit of one run",
    "lora": "the LoRA adapter: rank, scale, dropout, which layers and modules",
    "optimisation": "the optimizer, its learning-rate schedule, the batch size and the run's length",
    "evaluation": "validation during the run, sample generations and where the adapter goes",
    "performance": "where and in what pieces it runs: physical batch, device, processes",
}

KEYS: dict[str, str] = {  # field -> the dotted key users write; a field not here is a top-level key
    "max_steps": "optimisation.max_steps",
    "epochs": "optimisation.epochs",
    "batch_size": "optimisation.batch_size",
    "physical_batch_size": "performance.physical_batch_size",
    "target_epsilon": "privacy.target_epsilon",
    "noise_multiplier": "privacy.noise_multiplier",
    "delta": "privacy.delta",
    "max_grad_norm": "clipping.max_grad_norm",
    "accountant": "privacy.accountant",
    "neighboring": "privacy.neighboring",
    "public_dataset_size": "privacy.public_dataset_size",
    "privacy_unit": "privacy.unit",
    "user_sampling": "privacy.user_sampling",
    "max_examples_per_user": "privacy.max_examples_per_user",
    "user_example_selection": "privacy.user_example_selection",
    "clipping": "clipping.kind",
    "allocation": "clipping.allocation",
    "allocation_weights": "clipping.allocation_weights",
    "clip_allocation": "clipping.clip_allocation",
    "clip_quantile": "clipping.clip_quantile",
    "clip_quantile_share": "clipping.clip_quantile_share",
    "clip_quantile_lr": "clipping.clip_quantile_lr",
    "allocation_smoothing": "clipping.allocation_smoothing",
    "allocation_bound": "clipping.allocation_bound",
    "audit": "audit.kind",
    "audit_canaries": "audit.canaries",
    "optimizer": "optimisation.optimizer",
    "learning_rate": "optimisation.learning_rate",
    "weight_decay": "optimisation.weight_decay",
    "momentum": "optimisation.momentum",
    "warmup_steps": "optimisation.warmup_steps",
    "lr_schedule": "optimisation.lr_schedule",
    "lora_r": "lora.r",
    "lora_alpha": "lora.alpha",
    "lora_dropout": "lora.dropout",
    "lora_layers": "lora.layers",
    "lora_target_modules": "lora.target_modules",
    "eval_every": "evaluation.every",
    "eval_max_examples": "evaluation.max_examples",
    "generate_max_new_tokens": "evaluation.generate_max_new_tokens",
    "baseline_eval": "evaluation.baseline",
    "noise_seed": "privacy.noise_seed",
    "device": "performance.device",
    "noise_threads": "performance.noise_threads",
    "prefix_cache": "performance.prefix_cache",
    "prefix_cache_mb": "performance.prefix_cache_mb",
    "nproc": "performance.nproc",
    "output_dir": "evaluation.output_dir",
}


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
    epochs: float | None = Field(
        None,
        gt=0,
        description="Passes over the data in expectation (steps = epochs / q).",
    )
    batch_size: int = Field(
        32,
        ge=1,
        description="Expected logical batch size; the sampling rate is q = batch_size / N.",
    )
    physical_batch_size: int = Field(
        16,
        ge=1,
        description="Examples per forward/backward pass; bounds memory whatever the sampled batch is.",
    )

    # privacy
    target_epsilon: float | None = Field(
        8.0,
        gt=0,
        description="Privacy budget; the noise multiplier is calibrated to reach it at the last step.",
    )
    noise_multiplier: float | None = Field(
        None,
        ge=0,
        description="Noise std / clipping norm. Set it instead of target_epsilon; 0 = non-private.",
    )
    delta: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="Delta of (epsilon, delta)-DP; default: below 1/N.",
    )
    max_grad_norm: float | None = Field(
        1.0,
        gt=0,
        description="Per-example clipping norm C. Empty (None) means no clipping (non-private only).",
    )
    accountant: Literal[ACCOUNTANT_CHOICES] = Field(
        "pld",
        description="Privacy accountant: pld (tightest, default), rdp or prv (upper bounds). 'edgeworth' is an "
        "approximation: it is shown beside PLD, and PLD still sets the noise and the budget stop.",
    )
    neighboring: Literal[NEIGHBORING_CHOICES] = Field(
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
        "example",
        description="The unit the guarantee protects: one example, or one user (needs user_id).",
    )
    user_sampling: Literal["els", "uls"] = Field(
        "els",
        description="User-level DP: 'els' samples examples (user epsilon by the mixture-of-Gaussians PLD); "
        "'uls' samples users, each contributing the clipped mean of its examples.",
    )
    max_examples_per_user: int = Field(
        8,
        ge=1,
        description="k: each user's examples are capped at k (user-level DP).",
    )
    user_example_selection: Literal["random", "longest"] = Field(
        "random",
        description="Which k examples a user keeps: a seeded random choice, or the longest.",
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
        default_factory=dict,
        description="manual allocation: {module pattern: weight}; more weight, less noise.",
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
        0.5,
        description="quantile clipping: the target quantile gamma of each module's per-unit norms, in (0, 1).",
    )
    clip_quantile_share: float = Field(
        0.05,
        description="quantile clipping: the share of the privacy budget (noise precision) spent on the noised "
        "counts; the rest goes to the gradient.",
    )
    clip_quantile_lr: float = Field(
        0.2,
        description="quantile clipping: the geometric rate eta > 0 of C_l <- C_l exp(-eta (bbar_l - gamma)).",
    )
    allocation_smoothing: float = Field(
        0.9,
        ge=0,
        lt=1,
        description="adaptive: moving-average factor of the score.",
    )
    allocation_bound: float = Field(
        3.0,
        ge=1,
        description="Each sigma_l stays within [sigma sqrt(L)/b, sigma sqrt(L) b] (floor and ceiling).",
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
    optimizer: Literal["adamw", "sgd"] = Field(
        "adamw",
        description="Optimizer applied to the privatised gradient.",
    )
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
        None,
        ge=1,
        description="LoRA only in the last N transformer layers (the backward pass stops there: faster).",
    )
    lora_target_modules: str = Field(
        "auto",
        description="'auto' (attention query and value projections), 'all-linear', or comma-separated module names.",
    )

    # evaluation and output
    eval_every: int = Field(
        0,
        ge=0,
        description="Evaluate every N steps; 0 = about five times per run.",
    )
    eval_max_examples: int = Field(
        64,
        ge=1,
        description="Validation examples used per evaluation.",
    )
    generate_max_new_tokens: int = Field(
        32,
        ge=0,
        description="Tokens generated per sample prompt (0 = none).",
    )
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
    noise_threads: int | None = Field(
        None,
        ge=1,
        description="Threads that make the secret noise of the next step while this one computes (noise source 2); "
        "default: half the cores, at most 4. The noise's values never depend on it (one keystream per step and chunk).",
    )
    prefix_cache: Literal["auto", "on", "off"] = Field(
        "auto",
        description="Keep the hidden states that enter the first LoRA layer (with lora.layers, the frozen layers "
        "before it give the same output for an example every step), so a step runs only the adapted layers and the "
        "head: 'auto' where it applies (Llama decoders such as the default model, BERT encoders such as MiniLM), 'on' refuses a run where it cannot, "
        "'off' recomputes every step. The DP mechanism is the same either way.",
    )
    prefix_cache_mb: int = Field(
        1024,
        ge=0,
        description="Memory (MiB) the cached prefix may hold; beyond it the states go to a private spill file in the "
        "run's folder (mode 0600, deleted at once, gone when the run ends), and what does not fit on disk is "
        "recomputed.",
    )
    nproc: int = Field(
        1,
        ge=1,
        description="Processes of one data-parallel DP-SGD run (one GPU each on CUDA; gloo on the CPU). Each samples "
        "its own shard at rate q, the clipped sums are added up and the noise is added once: the same privacy as "
        "one process. `workbench train --nproc N` (or torchrun, whose world size it then records) starts the ranks; the "
        "app, a notebook or a Session host them, as rank 0 with ranks 1..N-1 as child processes.",
    )
    output_dir: str | None = Field(
        None,
        description="Where the adapter goes; default: the run's folder.",
    )

    @model_validator(mode="before")
    @classmethod
    def _grouped_keys(cls, data: Any) -> Any:
        """Nested groups, dotted keys and flat names (aliases) to the flat fields; ConfigError names a bad key."""
        return flatten(data) if isinstance(data, Mapping) else data

    @field_validator("labels", mode="before")
    @classmethod
    def _labels_as_text(cls, v: Any) -> Any:
        """Labels as the data files hold them: `labels: [0, 1]` means the classes "0" and "1"."""
        if isinstance(v, (list, tuple)):
            return [str(x).lower() if isinstance(x, bool) else str(x) if isinstance(x, (int, float)) else x for x in v]
        return v

    @field_validator("prefix_cache", mode="before")
    @classmethod
    def _switch_words(cls, v: Any) -> Any:
        """YAML reads `prefix_cache: off` (and on) as a boolean: the words meant."""
        return {False: "off", True: "on"}.get(v, v) if isinstance(v, bool) else v

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

    # -- groups: read-only views, cfg.privacy.target_epsilon == cfg.target_epsilon ------------------
    def group(self, name: str) -> Group:
        """One group's settings by their dotted names' last part: ``cfg.group("lora").r == cfg.lora_r``.

        ``clipping`` and ``audit`` are reached this way only: ``cfg.clipping`` and ``cfg.audit`` stay the
        fields they always were (the clipping kind and the audit kind)."""
        if name not in GROUPS:
            raise ConfigError(f"unknown config group {name!r}. The groups: {', '.join(GROUPS)}.")
        return Group(name, {short: getattr(self, field) for short, field in _MEMBERS[name].items()})

    # the groups as read-only views (clipping and audit are fields of their own: ``group("clipping")``)
    privacy = property(lambda self: self.group("privacy"), doc="The privacy group (a read-only view).")
    lora = property(lambda self: self.group("lora"), doc="The LoRA group (a read-only view).")
    optimisation = property(lambda self: self.group("optimisation"), doc="The optimisation group (a read-only view).")
    evaluation = property(lambda self: self.group("evaluation"), doc="The evaluation group (a read-only view).")
    performance = property(lambda self: self.group("performance"), doc="The performance group (a read-only view).")

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
        """The flat form (field names), as the run store, fingerprints and exports keep it."""
        return self.model_dump(mode="json")

    def to_grouped(self) -> dict[str, Any]:
        """The form users write: the top-level keys, then one mapping per group (``{"lora": {"r": 8, ...}}``)."""
        flat = self.to_dict()
        out: dict[str, Any] = {name: flat[name] for name, key in _KEYS.items() if key == name}
        for group, members in _MEMBERS.items():
            out[group] = {short: flat[field] for short, field in members.items()}
        return out

    def to_yaml(self) -> str:
        """The grouped form as YAML, what a user saves and edits; ``from_file`` reads it back."""
        return yaml.safe_dump(self.to_grouped(), sort_keys=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RunConfig":
        """A config from a mapping: nested groups, dotted keys or flat names (the form ``to_dict`` writes)."""
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

    def with_overrides(self, overrides: list[str] | Mapping[str, Any]) -> "RunConfig":
        """Apply ``key=value`` strings (values parsed as YAML) or a mapping on top of this config.

        Keys are dotted (``privacy.target_epsilon``), flat (``target_epsilon``) or a group with a mapping
        (``{"lora": {"r": 4}}``); a key repeated in the same spelling takes its last value, a flat key and its
        dotted twin with different values are a ConfigError."""
        if isinstance(overrides, Mapping):
            items = list(overrides.items())
        else:
            items = [_split_override(item) for item in overrides]
        return RunConfig.from_dict({**self.to_dict(), **_merge(items)})

    @staticmethod
    def field_name(key: str) -> str | None:
        """The field a key a user wrote sets (``"lora.r"`` and ``"lora_r"`` -> ``"lora_r"``); None if none."""
        return _FIELDS.get(key.replace("-", "_"))

    @staticmethod
    def dotted_key(field: str) -> str:
        """The key users write for a field: ``"lora_r"`` -> ``"lora.r"``; a top-level field is its own name."""
        return _KEYS[field]

    @staticmethod
    def help_table(*, flat: bool = True) -> list[tuple[str, str, str]]:
        """(key, default, help) for every field, for CLI and UI help.

        ``flat=False``: the dotted keys users write, top-level keys first, then group by group (``workbench
        train --help-keys``); ``flat=True``: the field names in declaration order (the app's tooltips)."""
        fields = RunConfig.model_fields
        order = list(fields) if flat else [*(n for n, k in _KEYS.items() if k == n), *_grouped_fields()]
        return [
            (
                name if flat else _KEYS[name],
                json.dumps(fields[name].get_default(call_default_factory=True)),
                fields[name].description or "",
            )
            for name in order
        ]


class Group(Mapping):
    """A read-only view of one configuration group: ``cfg.lora.r``, ``cfg.lora["r"]``, ``dict(cfg.lora)``."""

    __slots__ = ("_name", "_values")

    def __init__(self, name: str, values: dict[str, Any]) -> None:
        object.__setattr__(self, "_name", name)
        object.__setattr__(self, "_values", values)

    def __getattr__(self, short: str) -> Any:
        if short.startswith("_"):  # copy and pickle probe the instance before its slots are set
            raise AttributeError(short)
        try:
            return self._values[short]
        except KeyError:
            raise AttributeError(
                f"config group {self._name!r} has no key {short!r}; it holds {', '.join(self._values)}"
            ) from None

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(
            f"a run configuration is frozen: use cfg.with_overrides({{'{self._name}.{name}': ...}}) for a changed copy"
        )

    def __reduce__(self) -> tuple[Any, ...]:  # copy and pickle rebuild it through __init__
        return (Group, (self._name, dict(self._values)))

    def __getitem__(self, short: str) -> Any:
        return self._values[short]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"{self._name}({', '.join(f'{k}={v!r}' for k, v in self._values.items())})"


# -- the keys users write --------------------------------------------------------------------------
def _declared_keys() -> dict[str, str]:
    keys = {}
    unknown = set(KEYS) - set(RunConfig.model_fields)
    if unknown:
        raise RuntimeError(f"KEYS names no RunConfig field: {sorted(unknown)}")
    for name in RunConfig.model_fields:
        key = KEYS.get(name, name)
        group, _, short = key.rpartition(".")
        if key != name and (group not in GROUPS or not short or "." in group):
            raise RuntimeError(f"RunConfig.{name}: key {key!r} must be 'group.name' with a group of {list(GROUPS)}")
        keys[name] = key
    if len(set(keys.values())) != len(keys):
        raise RuntimeError("RunConfig: two fields declare the same key")
    return keys


_KEYS: dict[str, str] = _declared_keys()  # field -> the key users write ("lora_r" -> "lora.r", "seed" -> "seed")
_FIELDS: dict[str, str] = {**{key: name for name, key in _KEYS.items()}, **{name: name for name in _KEYS}}
_MEMBERS: dict[str, dict[str, str]] = {  # group -> {short name: field}, groups in GROUPS' order
    group: {key.partition(".")[2]: name for name, key in _KEYS.items() if key.partition(".")[0] == group and "." in key}
    for group in GROUPS
}


_NONE_CHOICE = {name for name, f in RunConfig.model_fields.items() if "none" in get_args(f.annotation)}


def _grouped_fields() -> list[str]:
    return [field for members in _MEMBERS.values() for field in members.values()]


def flatten(data: Mapping[str, Any]) -> dict[str, Any]:
    """The flat fields of a configuration a user wrote with nested groups, dotted keys or flat names (any mix).

    Only the keys given come back (no defaults). ConfigError names each unknown key with the closest one and
    each key given twice with different values (a flat name and its dotted twin).

    >>> flatten({"privacy": {"target_epsilon": 4}, "lora.r": 2, "seed": 1})
    {'target_epsilon': 4, 'lora_r': 2, 'seed': 1}
    """
    if all(isinstance(k, str) and k in RunConfig.model_fields and not _is_group(k, v) for k, v in data.items()):
        return dict(data)  # already flat: what to_dict writes and the store keeps
    return _merge(list(data.items()))


def _is_group(key: str, value: Any) -> bool:
    """A group's nested settings: ``clipping`` and ``audit`` are fields too, a group only with a mapping."""
    return key in GROUPS and (isinstance(value, Mapping) or (value is None and key not in RunConfig.model_fields))


def _merge(items: Iterable[tuple[Any, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    spelled: dict[str, str] = {}  # field -> how it was written: "target_epsilon={}", "privacy: {{r: {}}}", ...
    problems: list[str] = []
    for field, written, value in _entries(items, problems):
        if field in out and spelled[field] != written and out[field] != value:
            problems.append(
                f"{_KEYS[field]} is given twice with different values: {spelled[field].format(repr(out[field]))} "
                f"and {written.format(repr(value))} ({field} is the flat name of {_KEYS[field]}). Keep one."
            )
            continue
        out[field], spelled[field] = value, written
    if problems:
        raise ConfigError("; ".join(problems))
    return out


def _entries(items: Iterable[tuple[Any, Any]], problems: list[str]) -> Iterator[tuple[str, str, Any]]:
    """(field, how it was written as a format string, value) for each setting; unknown keys go to ``problems``."""
    for key, value in items:
        if not isinstance(key, str):
            problems.append(f"config key {key!r} is not text. Keys are names such as lora.r.")
        elif _is_group(key, value):
            for short, v in (value or {}).items():
                field = _MEMBERS[key].get(str(short))
                if field is None and _KEYS.get(str(short), "").startswith(f"{key}."):
                    field = str(short)  # the flat name inside its group: lora: {lora_r: 4}
                if field is None:
                    problems.append(_unknown(f"{key}.{short}"))
                else:
                    yield field, f"{key}: {{{{{short}: {{}}}}}}", v
        elif key in _FIELDS:
            yield _FIELDS[key], f"{key}={{}}", value
        elif key in GROUPS:
            problems.append(
                f"{key} is a group of settings: write them nested ({key}: {{{next(iter(_MEMBERS[key]))}: ...}}) "
                f"or dotted ({_KEYS[next(iter(_MEMBERS[key].values()))]}=...). Found {value!r}."
            )
        else:
            problems.append(_unknown(key))


def _unknown(key: str) -> str:
    close = _closest(key)
    hint = f" Did you mean {close}?" if close else " Run `workbench train --help-keys` for the list."
    return f"unknown config key {key!r}.{hint}"


def _closest(key: str) -> str | None:
    """The dotted key a user most likely meant: the same name in another group, else the nearest spelling."""
    k = key.replace("-", "_")
    if k in _FIELDS:
        return _KEYS[_FIELDS[k]]
    tail = k.rpartition(".")[2]
    if "." in k:
        owners = {_KEYS[_FIELDS[tail]]} if tail in _FIELDS else set()
        owners |= {f"{group}.{tail}" for group, members in _MEMBERS.items() if tail in members}
        if len(owners) == 1:
            return owners.pop()
    match = difflib.get_close_matches(k, list(_FIELDS), n=1, cutoff=0.6)
    return _KEYS[_FIELDS[match[0]]] if match else None


def _split_override(item: str) -> tuple[str, Any]:
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not key=value, e.g. --set optimisation.batch_size=64.")
    key, raw = item.split("=", 1)
    key = key.strip().replace("-", "_")
    if raw.strip().lower() in ("none", "null", ""):
        # audit=none is the choice "none", not empty (which the audit field refuses)
        return key, "none" if raw.strip().lower() == "none" and RunConfig.field_name(key) in _NONE_CHOICE else None
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        value = raw
    return key, value


def _explain(err: ValidationError) -> str:
    parts = []
    for e in err.errors():
        loc = ".".join([_KEYS.get(str(x), str(x)) if i == 0 else str(x) for i, x in enumerate(e["loc"])]) or "config"
        found = e.get("input")
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            parts.append(f"unknown config key {loc!r}")
        elif e["loc"]:
            parts.append(f"{loc}: {msg}. Found {found!r}.")
        else:
            parts.append(msg)
    return "; ".join(parts)
