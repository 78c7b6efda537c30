"""The errors a run ends with as a message, never a traceback: caused by the user's input (configuration, data,
model, privacy settings, a replay's key, the processes of a data-parallel run)."""

from __future__ import annotations


def user_errors() -> tuple[type[BaseException], ...]:
    """Errors caused by the user's input: reported as a message, never a traceback. Imported lazily, so that a
    command line that only catches them loads no torch."""
    from workbench.config import ConfigError
    from workbench.engine.data import DataError
    from workbench.engine.distributed import DistributedError
    from workbench.engine.grad_sample import UnsupportedModelError
    from workbench.engine.models import ModelError
    from workbench.engine.randomness import ReplayError
    from workbench.privacy import PrivacyError

    return (ConfigError, DataError, DistributedError, ModelError, PrivacyError, ReplayError, UnsupportedModelError)
