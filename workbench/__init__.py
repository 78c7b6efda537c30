"""DP Workbench: differentially private LoRA fine-tuning with live privacy telemetry.

Public API (imported lazily, so `import workbench` stays light and works without gradio):

    from workbench import RunConfig, Session, train, privacy
    workbench.sweep("run.yaml", grid={"target_epsilon": [2, 4, 8]}, seeds=3)   # a stored sweep (workbench/sweeps.py)
    workbench.demo_config(model="tiny")   # the settings of `make demo` (assets/demo.yaml), overrides on top
    workbench.make_private(model, optimizer, ...)   # DP-SGD in your own loop (workbench/private.py); Trainer: workbench.hf
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the public names are imported lazily (see __getattr__)
    from workbench.config import RunConfig

__version__ = "0.1.0"
__all__ = [
    "RunConfig",
    "Session",
    "train",
    "sweep",
    "privacy",
    "RunStore",
    "demo_config",
    "make_private",
    "__version__",
]

DEMO_CONFIG = Path(__file__).resolve().parents[1] / "assets" / "demo.yaml"  # what `make demo` trains


def demo_config(**overrides: Any) -> "RunConfig":
    """The demo's settings (assets/demo.yaml, the file `make demo` trains with) with ``overrides`` on top: the
    notebooks and benchmarks read them here, so no copy of them can drift.

    >>> demo_config(model="tiny").max_grad_norm == demo_config().max_grad_norm   # doctest: +SKIP
    True
    """
    from workbench.config import RunConfig

    config = RunConfig.from_file(DEMO_CONFIG)  # a ConfigError naming the path where the checkout has no assets/
    return config.with_overrides(overrides) if overrides else config


def train(config: "RunConfig | dict | None" = None, **overrides: Any) -> dict:
    """Run one DP-LoRA fine-tuning job in this thread and return its summary.

    >>> summary = train(model="tiny", max_steps=2)   # doctest: +SKIP
    """
    from workbench.config import RunConfig
    from workbench.session import Session

    if config is None:
        config = RunConfig()
    elif isinstance(config, dict):
        config = RunConfig.from_dict(config)
    if overrides:
        config = config.with_overrides(overrides)
    return Session(config).run()


def __getattr__(name: str) -> Any:
    if name == "RunConfig":
        from workbench.config import RunConfig

        return RunConfig
    if name == "Session":
        from workbench.session import Session

        return Session
    if name == "RunStore":
        from workbench.store.runs import RunStore

        return RunStore
    if name == "sweep":  # workbench.sweep(config, grid={...}, seeds=3): workbench/sweeps.py
        from workbench.api import run_sweep

        return run_sweep
    if name == "make_private":  # DP-SGD in a hand-written loop on the same engine (workbench/private.py)
        from workbench.private import make_private

        return make_private
    if name == "privacy":
        import importlib

        return importlib.import_module("workbench.privacy")
    raise AttributeError(f"module 'workbench' has no attribute {name!r}")
