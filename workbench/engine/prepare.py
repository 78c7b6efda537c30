"""Everything a run needs before its first step: data splits, model with LoRA, tokens, privacy plan.

Kept apart from the loop (trainer.py) and the report (report.py), which both read ``Prepared``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from workbench.config import RunConfig
from workbench.engine import data as data_mod
from workbench.engine.fingerprint import dataset_fingerprint, unit_identities
from workbench.engine.models import attach_lora, load_model, resolve_device
from workbench.planning.plan import PrivacyPlan, make_plan
from workbench.planning.sizes import unit_sizes


@dataclass
class Prepared:
    """Everything the loop needs, built once before the first step."""

    config: RunConfig
    train: data_mod.Dataset
    val: data_mod.Dataset
    train_tok: list
    val_tok: list
    model: torch.nn.Module
    tokenizer: object
    task: str
    device: torch.device
    plan: PrivacyPlan
    model_name: str
    dataset_fingerprint: str | None = None  # the whole loaded dataset and the unit (engine/fingerprint.py)
    dataset_name: str | None = None
    dataset_units: list | None = None  # per record: its content and user digests (fingerprint.unit_identities)


def prepare(config: RunConfig) -> Prepared:
    """Load data and model, tokenise, and fix the privacy plan. Raises user errors with messages."""
    source = load_source(config)
    fingerprint = dataset_fingerprint(source, privacy_unit=config.privacy_unit)  # before the split: see fingerprint.py
    train, val = load_splits(config, source=source)
    task = train.task if config.task == "auto" else config.task
    if task == "classification" and not train.label_names:
        raise data_mod.DataError(f"{train.name}: task=classification needs a label column. Found none.")
    if task == "classification" and config.labels is None and config.is_private:
        raise data_mod.DataError(labels_needed(config.data))
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)  # LoRA initialisation and dropout
    # the head's width: the config's labels when given (public), else the labels seen in the data
    # (a privacy pitfall the pre-flight check names: privacy/checks.py)
    model, tok, max_len = load_model(
        config.model, task=task, num_labels=len(train.label_names or ()) or 2, device=device, seed=config.seed
    )
    model = attach_lora(
        model,
        task=task,
        r=config.lora_r,
        alpha=config.lora_alpha,
        dropout=config.lora_dropout,
        target_modules=config.lora_target_modules,
        last_layers=config.lora_layers,
    )
    lengths = dict(
        max_seq_len=config.max_seq_len, model_max_length=max_len, response_max_tokens=config.response_max_tokens
    )
    train_tok = data_mod.tokenize_dataset(train, tok, **lengths)
    val_tok = data_mod.tokenize_dataset(val, tok, **lengths)
    if not train_tok:
        raise data_mod.DataError(f"{train.name}: no usable training examples after tokenisation.")
    num_users = None
    if config.privacy_unit == "user":
        train_tok = data_mod.cap_per_user(
            train_tok,
            k=config.max_examples_per_user,
            how=config.user_example_selection,
            seed=config.split_salt,
            name=train.name,
        )
        num_users = len({ex.user_id for ex in train_tok})
    plan = make_plan(config, dataset_size=len(train_tok), num_users=num_users)
    return Prepared(
        config,
        train,
        val,
        train_tok,
        val_tok,
        model,
        tok,
        task,
        device,
        plan,
        config.model,
        dataset_fingerprint=fingerprint,
        dataset_name=source.name,
        dataset_units=unit_identities(source),  # keyed by the ledger: which people this run trained on
    )


def labels_needed(data: str) -> str:
    """The one message for a private classification run without ``labels`` (REFERENCES.md section 7)."""
    return (
        f"{data}: a private classification run needs its labels listed in the config (labels: [negative, positive], "
        "--set 'labels=[0, 1]', or the Plan tab's Labels field), in the order you want. The head's width and label "
        "names go out with the adapter, so reading them from the private data would let one record with a rare label "
        f"change what is released, which no epsilon covers. `workbench data {data}` lists the labels the file holds."
    )


def dataset_sizes(config: RunConfig) -> tuple[int, int | None]:
    """(training examples after the per-user cap, users or None) of ``config``'s data, without the model: the
    counts a data owner may declare public (``public_dataset_size``: the users under ULS, the examples otherwise)."""
    from collections import Counter

    train, _ = load_splits(config)
    if config.privacy_unit != "user":
        return len(train), train.num_users or None  # (unit_sizes at the example level)
    per_user = Counter(r.user_id for r in train.records)
    if not train.num_users or None in per_user:
        raise data_mod.DataError(
            "privacy_unit is 'user' but some examples have no user_id: add a user_id column (or map one with "
            "columns: {user_id: your_column}), or set privacy_unit to 'example'."
        )
    return unit_sizes(
        examples=len(train), user_counts=per_user.values(), privacy_unit="user", k=config.max_examples_per_user
    )


def load_source(config: RunConfig) -> data_mod.Dataset:
    """The whole dataset ``config.data`` names (the training file, before any split)."""
    return data_mod.load_dataset(config.data, columns=dict(config.columns) or None)


def load_splits(
    config: RunConfig, *, source: data_mod.Dataset | None = None
) -> tuple[data_mod.Dataset, data_mod.Dataset]:
    """Train and validation sets. The split is neighbour-stable (a keyed hash of each unit's identity,
    data.split_validation); with ``labels`` in the config the label set and ids are public, not read
    from the private data, and a label the config does not list is refused."""
    columns = dict(config.columns) or None
    ds = source if source is not None else load_source(config)
    if config.validation_data:
        val = data_mod.load_dataset(config.validation_data, columns=columns)
        train = ds
    else:
        train, val = data_mod.split_validation(ds, fraction=config.validation_fraction, seed=config.split_salt)
    if config.labels is not None:
        train, _ = data_mod.apply_labels(train, config.labels)
        val, _ = data_mod.apply_labels(val, config.labels)
        return train, val
    val = data_mod.align_labels(train, val)  # same label ids; val labels absent from train -> DataError
    return train, val
