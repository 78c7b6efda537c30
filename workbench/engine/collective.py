"""The collective a DP step runs on: what one process asks of the others, and the one-process null object.

``DPGradient`` (dp_step.py) and ``Trainer`` (trainer.py) are given a collective at construction and ask it every
question that differs between one process and several; neither branches on the number of processes:

    agree(error)            every rank prepared, or every rank raises the failing rank's message
    from_main_(tensors)     overwrite with rank 0's values (the starting weights; the noisy sums)
    sampler(...)            this process's Poisson sampler: all units, or (data-parallel) its shard
    stop_requested(local)   a stop asked for on any rank, seen on every rank
    stops_within_step       whether a stop may end a step half-way (one process) or waits for the next step
    sum_(tensors)           the clipped sums (and counts) over every rank, in place
    sum_grads_(params)      the non-private baseline's gradients over every rank, in place
    is_main                 whether this process adds the noise (once, on rank 0) and reports
    gather_step(...)        the whole step's telemetry (every rank's norms, losses and tokens)

``LocalCollective`` is one process: every operation is the identity. ``distributed.Distributed`` is a rank of a
torch.distributed group (distributed.py says why the mechanism is then exactly the one-process one).
"""

from __future__ import annotations

from typing import Protocol, Sequence

import numpy as np
import torch

from workbench.engine.sampling import poisson_sample


class Sampler(Protocol):
    def draw(self) -> np.ndarray:
        """This step's Poisson-sampled unit indices (sorted)."""


class Collective(Protocol):
    """What ``DPGradient.finish`` asks of the other processes (the trainer asks the rest of LocalCollective's)."""

    is_main: bool

    def sum_(self, tensors: list[torch.Tensor]) -> None: ...

    def from_main_(self, tensors: list[torch.Tensor], *, what: str = ...) -> None: ...


class PoissonSampler:
    """Poisson sampling of all ``population`` units at rate q from one stream: ``draw()`` as ``poisson_sample``."""

    def __init__(self, population: int, *, sample_rate: float, rng: np.random.Generator) -> None:
        self.population, self.q, self.rng = population, sample_rate, rng

    def draw(self) -> np.ndarray:
        return poisson_sample(self.population, self.q, self.rng)


class LocalCollective:
    """One process: every collective is the identity, the sampler draws from all units."""

    rank, world_size, is_main = 0, 1, True
    stops_within_step = True  # nobody waits in an all-reduce: a stop may discard the step half-way

    def agree(self, error: str | None) -> None:
        """Nothing to agree on with no other rank (an error is raised where it happened)."""

    def sampler(self, randomness, *, units: Sequence, by_user: bool, sample_rate: float, seed: int) -> PoissonSampler:
        """Poisson sampling of every unit (every example, or every user under ULS) from the run's sampling stream;
        ``seed`` (the shards' public key) is not needed with one process."""
        population = len({ex.user_id for ex in units}) if by_user else len(units)
        return PoissonSampler(population, sample_rate=sample_rate, rng=randomness.sampling_rng())

    def stop_requested(self, local: bool) -> bool:
        return local

    def sum_(self, tensors: list[torch.Tensor]) -> None:
        """The sum over one rank is this rank's: nothing to do."""

    def from_main_(self, tensors: list[torch.Tensor], *, what: str = "") -> None:
        """This process is rank 0: its values are already rank 0's."""

    def sum_grads_(self, params: list[torch.nn.Parameter]) -> None:
        """The non-private baseline's gradients are already the whole step's (a parameter without one keeps None)."""

    def gather_step(self, stats, losses: list[torch.Tensor], tokens: int):
        """The step's telemetry is all here: (stats, losses, tokens) unchanged."""
        return stats, losses, tokens
