"""Federated DP-LoRA on Flower: several data holders train one adapter; privacy per client, per record or per
subject (docs/federated.md). ``federate`` runs it through Flower's simulation engine and stores it as a run.

The torch-free parts (``partition``, ``accounting``) import without Flower; ``federate`` needs the ``federated``
extra (``pip install 'dp-workbench[federated]'``: flwr with Ray, its simulation engine)."""

from workbench.federated.options import FederatedOptions
from workbench.federated.partition import FederatedError, parse_partition, partition

__all__ = ["FederatedError", "FederatedOptions", "federate", "parse_partition", "partition"]


def federate(config, options: FederatedOptions | None = None, **kw) -> dict:
    """``workbench.federated.run.federate`` (loaded on first use: it imports torch and Flower)."""
    from workbench.federated.run import federate as run

    return run(config, options, **kw)
