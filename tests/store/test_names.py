"""Readable run names (workbench/store/names.py): the default name of a run started without one, unique in the
store, in the notation of sweep runs."""

from __future__ import annotations

from workbench.config import RunConfig
from workbench.store.names import default_run_name, run_label, unique_name
from workbench.store.runs import RunStore


def test_a_default_name_shows_the_privacy_level_and_what_differs_from_the_preset():
    preset = RunConfig(model="tiny")
    cfg = preset.with_overrides({"batch_size": 64, "max_steps": 100, "learning_rate": 5e-3})
    assert default_run_name(cfg, preset) == "eps8-B64-T100-lr0.005"
    # the privacy level always comes first, even when it is the preset's; the noise when it is set
    assert default_run_name(preset, preset) == "eps8"
    sigma = preset.with_overrides({"target_epsilon": None, "noise_multiplier": 1.2, "max_grad_norm": 0.1, "seed": 3})
    assert default_run_name(sigma, preset) == "sigma1.2-C0.1-s3"
    # text settings stand for themselves; settings the name does not show (the model, the data) leave it alone
    other = preset.with_overrides({"privacy_unit": "user", "model": "default", "data": "x.jsonl"})
    assert default_run_name(other, preset) == "eps8-user"
    # the notation of sweep runs and comparison groups: one function
    assert default_run_name(cfg, preset) == run_label(
        cfg.to_dict(), ["target_epsilon", "batch_size", "max_steps", "learning_rate"]
    )


def test_the_same_settings_give_the_same_name_and_a_dict_is_as_good_as_a_config():
    preset = RunConfig()
    cfg = preset.with_overrides({"lora_r": 4, "epochs": 2.0})
    names = {
        default_run_name(cfg, preset),
        default_run_name(cfg.to_dict(), preset.to_dict()),
        default_run_name(cfg, preset),
    }
    assert names == {"eps8-ep2-r4"}


def test_a_name_a_stored_run_has_gets_a_suffix(_workbench_home):
    store = RunStore(_workbench_home)
    assert unique_name("eps8", [r.name for r in store.list()]) == "eps8"
    for i, name in enumerate(["eps8", "eps8 (2)", None, "eps4"]):
        store.create_run(f"20250101-00000{i}-aaaaaa", config={}, name=name, status="finished")
    taken = [r.name for r in store.list()]
    assert unique_name("eps8", taken) == "eps8 (3)"
    assert unique_name("eps4", taken) == "eps4 (2)"
    assert unique_name("sigma1", taken) == "sigma1"
