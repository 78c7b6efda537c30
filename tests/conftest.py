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
