"""Layers the code keeps (issue 28): one base class for the errors a user's input causes (every surface catches
``UserError`` and shows its message; anything else is a bug and keeps its traceback), and planning (the mechanism,
the plan, its wording) loads no torch."""

from __future__ import annotations

import pytest

from workbench.errors import UserError


def user_error_classes():
    from workbench.config import ConfigError
    from workbench.engine.data import DataError
    from workbench.engine.distributed import DistributedError, DistributedSetupError
    from workbench.engine.grad_sample import UnsupportedModelError
    from workbench.engine.models import ModelError
    from workbench.engine.randomness import ReplayError
    from workbench.exercises import ExerciseError
    from workbench.planning.recommend import RecommendError
    from workbench.present.compare import CompareError
    from workbench.privacy import PrivacyError
    from workbench.store.export import ExportError
    from workbench.store.ledger import LedgerError
    from workbench.store.ledger_units import UnitKeyError
    from workbench.store.runs import RunNotFound
    from workbench.sweeps import SweepError

    return [
        ConfigError, DataError, DistributedError, DistributedSetupError, UnsupportedModelError, ModelError,
        ReplayError, RecommendError, CompareError, PrivacyError, ExportError, LedgerError, UnitKeyError,
        RunNotFound, SweepError, ExerciseError,
    ]  # fmt: skip


@pytest.mark.parametrize("cls", user_error_classes(), ids=lambda c: c.__name__)
def test_every_user_error_is_one_kind(cls):
    assert issubclass(cls, UserError)


def test_the_app_shows_a_user_error_as_its_message_and_anything_else_as_internal():
    pytest.importorskip("gradio")
    from workbench.app.common import error_text
    from workbench.config import ConfigError

    assert error_text(ConfigError("batch_size: must be at least 1")) == "⚠️ batch_size: must be at least 1"
    assert "internal error (ZeroDivisionError" in error_text(ZeroDivisionError("x"))


def test_catching_user_errors_loads_no_torch():
    import subprocess
    import sys

    code = "import sys, workbench.errors, workbench.config; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"


def test_the_plan_tab_and_the_planner_words_load_no_torch():
    """Planning and its wording are torch-free (issue 28): the Plan tab's sentences need no engine."""
    import subprocess
    import sys

    code = (
        "import sys, workbench.planning.stages, workbench.planning.wording, workbench.planning.recommend; "
        "print(sorted(m for m in ('torch', 'transformers', 'peft') if m in sys.modules))"
    )
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "[]"
