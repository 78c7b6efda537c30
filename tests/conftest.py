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
