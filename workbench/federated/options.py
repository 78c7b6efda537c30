"""A federated run's options as one value (torch-free): what ``workbench federate``, the app's Federated tab, the
Flower run config and Python pass beside the workbench config (``RunConfig``), validated when made.

    FederatedOptions(clients=10, rounds=24, clients_per_round=5, partition="by-user", privacy_level="client")

The chain ``federate`` -> ``FederatedRun`` -> ``federated_privacy`` carries this one value instead of seven
keywords; every check is a FederatedError whose message names the option as the CLI spells it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from workbench.federated.partition import FederatedError, parse_partition

LEVELS = ("client", "record", "subject")


@dataclass(frozen=True)
class FederatedOptions:
    """K clients, R rounds, M clients expected each round (each Poisson-sampled at M/K), the data layout, the
    privacy level, the engine's steps a client takes per round, and FFA-LoRA. Public: the store shows them."""

    clients: int
    rounds: int
    clients_per_round: int
    partition: str = "by-user"
    privacy_level: str = "client"
    local_steps: int = 1
    ffa: bool = False

    def __post_init__(self) -> None:
        """One message for each bad option, before any data is read."""
        if self.clients < 1:
            raise FederatedError(f"--clients must be at least 1. Found {self.clients}.")
        if self.rounds < 1:
            raise FederatedError(f"--rounds must be at least 1. Found {self.rounds}.")
        if not 1 <= self.clients_per_round <= self.clients:
            raise FederatedError(
                f"--clients-per-round {self.clients_per_round} must be between 1 and --clients ({self.clients}): "
                "it is the expected number of clients sampled each round (each client Poisson-sampled at rate M/K)."
            )
        if self.local_steps < 1:
            raise FederatedError(f"--local-steps must be at least 1. Found {self.local_steps}.")
        if self.privacy_level not in LEVELS:
            raise FederatedError(
                f"--privacy-level {self.privacy_level!r} is not a level: use one of {', '.join(LEVELS)}."
            )
        parse_partition(self.partition)

    @property
    def sample_rate(self) -> float:
        """q = M/K: each client's chance of being sampled in a round."""
        return self.clients_per_round / self.clients

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
