"""Shared test set-up: every test gets its own WORKBENCH_HOME, and libraries stay offline and quiet."""

import os
import warnings

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
warnings.filterwarnings("ignore", category=FutureWarning)


@pytest.fixture(scope="session", autouse=True)
def _model_cache(tmp_path_factory):
    """One de-quantised copy of the default model for the whole session, outside the user's cache."""
    os.environ["WORKBENCH_CACHE"] = str(tmp_path_factory.mktemp("model-cache"))


@pytest.fixture(autouse=True)
def _workbench_home(tmp_path, monkeypatch):
    home = tmp_path / "wbhome"
    monkeypatch.setenv("WORKBENCH_HOME", str(home))
    return home


# -- shared factories -------------------------------------------------------------------------------
# The app's Plan and Train controls as the callbacks receive them (by forms.PLAN_FIELDS / TRAIN_FIELDS name).
PLAN_VALUES = dict(
    data_mode="demo",
    upload_path=None,
    data_path="",
    batch_size=16,
    length_mode="steps",
    epochs=1.0,
    max_steps=4,
    delta=None,
    privacy_mode="target",
    target_epsilon=8.0,
    noise_multiplier=1.0,
    max_grad_norm=1.0,
    accountant="pld",
)
TRAIN_VALUES = dict(
    model="tiny",
    name="",
    lora_r=8,
    lora_alpha=16.0,
    lora_dropout=0.0,
    lora_target_modules="auto",
    optimizer="adamw",
    learning_rate=2e-3,
    physical_batch_size=16,
    eval_every=0,
    seed=0,
)


def app_values(**changes):
    """Every control's value, the defaults above with ``changes`` on top."""
    return {**PLAN_VALUES, **TRAIN_VALUES, **changes}


@pytest.fixture
def ctx(_workbench_home):
    """The app's context over this test's own run store."""
    from workbench.app.state import AppContext
    from workbench.store.runs import RunStore

    return AppContext(RunStore(_workbench_home))


# -- the inner loop -----------------------------------------------------------------------------------
# Tests over about 8 s each on 2 CPU cores (measured with --durations in CI) are also `slow`, so that
# `make test-fast` stays under 2 minutes; `make test` (and CI) runs them all.
SLOW_TESTS = {
    "test_neighboring_resolution_and_published_size",
    "test_a_dead_or_hung_rank_fails_the_run_in_bounded_time_and_leaves_no_process",
    "test_two_processes_match_one_in_seeded_mode_with_the_same_epsilon_and_report",
    "test_plan_for_an_els_target_uses_the_engines_user_level_sigma",
    "test_input_canaries_catch_a_run_without_noise",
    "test_user_level_epsilon_and_calibrate_commands",
    "test_start_trains_stop_stops_and_export_zips",
    "test_plan_update_draws_three_accountants_and_the_noise_needed",
    "test_gpu_check_data_parallel_path_on_two_cpu_ranks",
    "test_parallel_sweep_trains_in_separate_processes",
    "test_engine_trains_without_gradio",
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.originalname in SLOW_TESTS:
            item.add_marker(pytest.mark.slow)
