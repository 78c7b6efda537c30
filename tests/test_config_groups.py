"""The grouped configuration: users write and read nested groups and dotted keys (YAML files, --set,
--help-keys), the code and the run store keep the flat fields, and the old flat keys stay valid."""

from __future__ import annotations

import copy
import pickle
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from workbench.config import GROUPS, ConfigError, RunConfig, flatten
from workbench.sweeps import grid_from_file, parse_grid

ROOT = Path(__file__).resolve().parents[1]
ASSETS = sorted((ROOT / "assets").glob("*.yaml")) + sorted((ROOT / "examples").glob("*.yaml"))

# what to train stays at the top level; everything else is in a group
TOP_LEVEL = {
    "name",
    "model",
    "task",
    "data",
    "validation_data",
    "validation_fraction",
    "columns",
    "labels",
    "max_seq_len",
    "response_max_tokens",
    "seed",
    "split_seed",
}

NESTED = """
model: tiny
seed: 3
privacy: {target_epsilon: 4, accountant: rdp, unit: user, max_examples_per_user: 2, public_dataset_size: 100}
clipping: {max_grad_norm: 0.5, kind: per_layer, allocation: adaptive, allocation_bound: 2.0}
audit: {kind: none, canaries: 10}
lora: {r: 2, alpha: 4, layers: 1, target_modules: all-linear}
optimisation: {batch_size: 16, max_steps: 5, learning_rate: 0.01, lr_schedule: constant}
evaluation: {every: 2, max_examples: 8, generate_max_new_tokens: 0, baseline: false}
performance: {physical_batch_size: 4, device: cpu}
"""
FLAT = dict(
    model="tiny",
    seed=3,
    target_epsilon=4,
    accountant="rdp",
    privacy_unit="user",
    max_examples_per_user=2,
    public_dataset_size=100,
    max_grad_norm=0.5,
    clipping="per_layer",
    allocation="adaptive",
    allocation_bound=2.0,
    audit="none",
    audit_canaries=10,
    lora_r=2,
    lora_alpha=4,
    lora_layers=1,
    lora_target_modules="all-linear",
    batch_size=16,
    max_steps=5,
    learning_rate=0.01,
    lr_schedule="constant",
    eval_every=2,
    eval_max_examples=8,
    generate_max_new_tokens=0,
    baseline_eval=False,
    physical_batch_size=4,
    device="cpu",
)


def _dotted(data: dict) -> list[str]:
    """The nested form as --set items: privacy.target_epsilon=4, ..."""
    out = []
    for key, value in data.items():
        if key in GROUPS and isinstance(value, dict):
            out += [f"{key}.{short}={yaml.safe_dump(v, default_flow_style=True).strip()}" for short, v in value.items()]
        else:
            out.append(f"{key}={yaml.safe_dump(value, default_flow_style=True).strip()}")
    return [item.removesuffix("\n...") for item in out]


def test_every_field_is_in_exactly_one_place():
    groups_of = {name: RunConfig.dotted_key(name).partition(".")[0] for name in RunConfig.model_fields}
    top = {name for name, key in groups_of.items() if RunConfig.dotted_key(name) == name}
    assert top == TOP_LEVEL, "a new setting belongs in a group: its dotted key in config.KEYS"
    grouped = {name: g for name, g in groups_of.items() if name not in top}
    assert set(grouped.values()) == set(GROUPS), "every group holds a setting"
    keys = [RunConfig.dotted_key(name) for name in RunConfig.model_fields]
    assert len(keys) == len(set(keys)), "two fields share a dotted key"
    grouped_view = RunConfig().to_grouped()
    placed = [k for k in grouped_view if k not in GROUPS] + [f"{g}.{s}" for g in GROUPS for s in grouped_view[g]]
    assert sorted(placed) == sorted(keys)  # each field once in the nested form too


def test_dotted_names_drop_a_redundant_prefix():
    key = RunConfig.dotted_key
    assert (key("lora_r"), key("lora_target_modules"), key("audit_canaries"), key("audit")) == (
        "lora.r",
        "lora.target_modules",
        "audit.canaries",
        "audit.kind",
    )
    assert (key("target_epsilon"), key("max_grad_norm"), key("privacy_unit"), key("eval_every")) == (
        "privacy.target_epsilon",
        "clipping.max_grad_norm",
        "privacy.unit",
        "evaluation.every",
    )
    for name in RunConfig.model_fields:
        group, _, short = key(name).rpartition(".")
        if group:  # the short name is the field's, less its group's prefix (or 'kind' for the group's own field)
            assert name.endswith(short) or short == "kind" or (name, short) == ("baseline_eval", "baseline")
            assert RunConfig.field_name(key(name)) == name and RunConfig.field_name(name) == name


def test_nested_yaml_flat_dict_and_dotted_overrides_give_the_same_config(tmp_path):
    nested = yaml.safe_load(NESTED)
    from_nested = RunConfig.from_dict(nested)
    path = tmp_path / "run.yaml"
    path.write_text(NESTED)
    assert from_nested == RunConfig.from_file(path) == RunConfig.from_dict(FLAT) == RunConfig(**FLAT)
    assert RunConfig().with_overrides(_dotted(nested)) == from_nested
    assert RunConfig().with_overrides(nested) == from_nested  # a mapping of groups as overrides
    assert flatten(nested) == FLAT
    assert from_nested.to_dict() == RunConfig(**FLAT).to_dict()  # the stored form stays flat
    assert "lora_r" in from_nested.to_dict() and "lora" not in from_nested.to_dict()


def test_old_flat_keys_still_work_everywhere(tmp_path):
    path = tmp_path / "old.yaml"
    path.write_text(yaml.safe_dump(FLAT))
    assert RunConfig.from_file(path) == RunConfig.from_dict(FLAT)
    cfg = RunConfig().with_overrides(["lora_r=3", "target_epsilon=2", "audit=none", "clipping=flat"])
    assert (cfg.lora_r, cfg.target_epsilon, cfg.clipping) == (3, 2.0, "flat")
    # mixing spellings of different keys, and a flat name inside its group, are fine
    mixed = RunConfig.from_dict({"lora": {"lora_r": 3, "alpha": 8}, "target_epsilon": 2, "lora.dropout": 0.0})
    assert (mixed.lora_r, mixed.lora_alpha, mixed.target_epsilon) == (3, 8.0, 2.0)
    # the same key twice with the same value, or repeated in one spelling (the last wins), is no conflict
    assert RunConfig().with_overrides(["target_epsilon=2", "privacy.target_epsilon=2"]).target_epsilon == 2.0
    assert RunConfig().with_overrides(["lora.r=2", "lora.r=5"]).lora_r == 5


def test_group_views_read_the_flat_fields():
    cfg = RunConfig.from_dict(FLAT)
    assert cfg.privacy.target_epsilon == cfg.target_epsilon == 4.0
    assert cfg.privacy.unit == "user" and cfg.lora.r == 2 and cfg.lora["alpha"] == 4.0
    assert cfg.optimisation.batch_size == 16 and cfg.evaluation.baseline is False and cfg.performance.device == "cpu"
    # clipping and audit are fields too: their groups through group()
    assert cfg.clipping == "per_layer" and cfg.group("clipping").kind == "per_layer"
    assert cfg.audit == "none" and cfg.group("audit").canaries == 10
    assert dict(cfg.lora) == cfg.to_grouped()["lora"]
    assert copy.deepcopy(cfg.lora) == pickle.loads(pickle.dumps(cfg.lora)) == cfg.lora
    with pytest.raises(AttributeError, match="frozen"):
        cfg.lora.r = 4
    with pytest.raises(AttributeError, match="no key 'rank'"):
        cfg.lora.rank
    with pytest.raises(ConfigError, match="unknown config group 'loras'"):
        cfg.group("loras")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["lora.rank=3"], "unknown config key 'lora.rank'. Did you mean lora.r?"),
        (["batchsize=3"], "unknown config key 'batchsize'. Did you mean optimisation.batch_size?"),
        (
            ["privacy.max_grad_norm=2"],
            "unknown config key 'privacy.max_grad_norm'. Did you mean clipping.max_grad_norm?",
        ),
        (["privacy.target_epsilom=2"], "Did you mean privacy.target_epsilon?"),
        (["bogus=1"], "unknown config key 'bogus'. Run `workbench train --help-keys` for the list."),
        (["privacy=3"], "privacy is a group of settings"),
        (["privacy.delta=2"], "privacy.delta: Input should be less than 1. Found 2."),
    ],
)
def test_unknown_and_bad_keys_name_the_dotted_key(overrides, message):
    with pytest.raises(ConfigError) as err:
        RunConfig().with_overrides(overrides)
    assert message in str(err.value)
    with pytest.raises(ConfigError) as err:  # the same message from a file's mapping
        RunConfig.from_dict(dict(item.split("=", 1) for item in overrides) | {"model": "tiny"})
    assert message.split(" Found")[0].split(":")[0] in str(err.value)


def test_a_flat_key_and_its_dotted_twin_with_different_values_is_one_clear_error():
    with pytest.raises(ConfigError) as err:
        RunConfig().with_overrides(["target_epsilon=4", "privacy.target_epsilon=8"])
    assert str(err.value) == (
        "privacy.target_epsilon is given twice with different values: target_epsilon=4 and "
        "privacy.target_epsilon=8 (target_epsilon is the flat name of privacy.target_epsilon). Keep one."
    )
    with pytest.raises(ConfigError, match=r"lora.r is given twice .*lora: \{r: 4\} and lora_r=8"):
        RunConfig.from_dict({"lora": {"r": 4}, "lora_r": 8})


@pytest.mark.parametrize("path", ASSETS, ids=lambda p: p.name)
def test_the_shipped_yaml_files_are_grouped_and_round_trip(path):
    data = yaml.safe_load(path.read_text())
    flat_names = {k for k in data if k in RunConfig.model_fields and k not in TOP_LEVEL and k not in GROUPS}
    assert not flat_names, f"{path.name} uses flat keys {sorted(flat_names)}: write them in their groups"
    cfg = RunConfig.from_file(path)
    assert RunConfig.from_dict(yaml.safe_load(cfg.to_yaml())) == cfg


def test_to_yaml_writes_the_grouped_form_and_reads_back():
    cfg = RunConfig.from_dict(FLAT).with_overrides({"allocation_weights": {"q_proj": 2.0}, "columns": {"text": "t"}})
    text = cfg.to_yaml()
    data = yaml.safe_load(text)
    assert list(data)[: len(TOP_LEVEL)] == [k for k in RunConfig.model_fields if k in TOP_LEVEL]
    assert list(data)[len(TOP_LEVEL) :] == list(GROUPS)
    assert data["lora"]["r"] == 2 and data["clipping"]["allocation_weights"] == {"q_proj": 2.0}
    assert "lora_r" not in text and "target_epsilon: 4.0" in text
    assert RunConfig.from_dict(data) == cfg
    assert cfg.to_grouped() == data


def test_help_table_lists_dotted_keys_and_keeps_the_flat_names_for_the_app():
    dotted = RunConfig.help_table(flat=False)
    flat = RunConfig.help_table(flat=True)
    assert len(dotted) == len(flat) == len(RunConfig.model_fields)
    assert all(len(row) == 3 for row in dotted)
    keys = [k for k, _, _ in dotted]
    assert "privacy.target_epsilon" in keys and "lora.r" in keys and "lora_r" not in keys
    assert keys.index("seed") < keys.index("privacy.target_epsilon") < keys.index("lora.r")
    by_key = {k: (d, h) for k, d, h in dotted}
    assert {RunConfig.field_name(k): v for k, v in by_key.items()} == {k: (d, h) for k, d, h in flat}
    assert dict((k, h) for k, _, h in RunConfig.help_table())["max_examples_per_user"]  # the app's lookups


def test_train_help_keys_shows_the_dotted_keys():
    from workbench.cli import app

    r = CliRunner().invoke(app, ["train", "--help-keys"])
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert any(line.startswith("privacy.target_epsilon ") and "8.0" in line for line in lines)
    assert any(line.startswith("lora.r ") for line in lines) and any(line.startswith("audit.kind ") for line in lines)
    assert not any(line.startswith("lora_r ") for line in lines)
    assert all(f"# {group}:" in r.output for group in GROUPS)


def test_sweep_grids_take_dotted_keys_and_store_the_field_names(tmp_path):
    assert parse_grid(["privacy.target_epsilon=2,4", "lora_r=4,8"]) == [("target_epsilon", [2, 4]), ("lora_r", [4, 8])]
    assert parse_grid({"lora": {"r": [4, 8]}, "clipping.max_grad_norm": [0.1]}) == [
        ("lora_r", [4, 8]),
        ("max_grad_norm", [0.1]),
    ]
    sweep_file = tmp_path / "grid.yaml"
    sweep_file.write_text("privacy: {target_epsilon: [2, 4]}\nlora.r: [4]\n")
    assert parse_grid(grid_from_file(sweep_file)) == [("target_epsilon", [2, 4]), ("lora_r", [4])]
