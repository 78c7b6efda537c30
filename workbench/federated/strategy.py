"""The server's aggregation as a Flower strategy: FedAvg of the LoRA adapter's updates, and DP-FedAvg at client level.

Flower's ``Strategy.start`` runs the rounds (configure_train -> the grid sends and receives -> aggregate_train);
``DPFedAvg`` overrides the two steps whose mechanism the accounting describes:

- ``configure_train``: every connected client is sampled independently with probability q = M/K from the server's
  secret stream (``RunRandomness.sampling_rng``), the Poisson sampling ``PoissonSampledDpEvent`` assumes (FedAvg's
  own sampling draws exactly M with Python's ``random``: fixed-size sampling without replacement, not Poisson, from
  a public generator). A round may sample no client: it is still a release (noise only).
- ``aggregate_train``: each reply's update (its adapter minus the round's global adapter) is clipped to C in L2 over
  every array it sends, the clipped updates are summed, N(0, sigma^2 C^2) is added once to the sum from the
  workbench's secret noise (``engine/noise.py``: a ChaCha20 keystream, one step per round), and the sum is divided by
  the public qK (the expected number of sampled clients), never by the realised number.

Why not Flower's ``DifferentialPrivacyServerSideFixedClipping``: it draws its noise with ``np.random.normal`` (the
global, seedable generator), divides by the number of sampled clients, and relies on FedAvg's fixed-size sampling,
which its accountant treats without amplification; the mechanism accounted here (Poisson sampling, secret noise)
is another one. Without noise (record and subject levels, where each client's DP-SGD is the mechanism) the update
is the plain mean of the replies' updates, with equal weights (a client's example count is not public).

A client that fails (its reply an error message) contributes nothing: the round completes with the others (under
DP: its update is zero, a data-independent value, so the sensitivity is unchanged); a round whose every sampled
client failed ends the run with the first failure's reason (``AllClientsFailed``).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg
from flwr.serverapp.strategy.strategy_utils import sample_nodes

log = logging.getLogger(__name__)


class AllClientsFailed(RuntimeError):
    """Every client sampled in a round failed; the message carries the first failure's reason."""


@dataclass
class RoundResult:
    """What one round released, for the round's event: the sampled clients, their updates' norms, the noise."""

    round: int
    sampled: list[int]  # node ids
    norms: list[float] = field(default_factory=list)  # each reply's update norm, before clipping
    clients: list[dict] = field(default_factory=list)  # each reply's metrics (name, loss, examples, ...)
    failures: list[str] = field(default_factory=list)
    failed_nodes: list[int] = field(default_factory=list)  # the node ids of the failures
    nodes: list[int] = field(default_factory=list)  # the node id of each reply in ``clients``
    noise_std: float = 0.0  # of the noise added to the sum of clipped updates
    clipped_sum_norm: float = 0.0
    update_norm: float = 0.0  # of the released update (after noise and the division)
    bytes_sent: int = 0  # the adapter arrays sent to the sampled clients (one way)


def _arrays(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in record.items()}


class DPFedAvg(FedAvg):
    """FedAvg of adapter updates with Poisson client sampling, clipping and the secret noise (module docstring).
    ``noise``: the server's noise source (None or sigma 0: no noise, and the replies' mean)."""

    def __init__(
        self,
        *,
        sample_rate: float,
        clients: int,
        clip: float | None,
        noise_multiplier: float,
        sampling_rng: np.random.Generator,
        noise=None,
        on_round: Callable[[RoundResult], None] = lambda result: None,
    ) -> None:
        super().__init__(fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=0, min_available_nodes=clients)
        self.sample_rate, self.clients = sample_rate, clients
        self.clip, self.noise_multiplier = clip, float(noise_multiplier or 0.0)
        if self.noise_multiplier > 0 and (clip is None or noise is None):
            raise ValueError("client-level DP needs a clipping norm and the server's secret noise source")
        self.sampling_rng, self.noise, self.on_round = sampling_rng, noise, on_round
        self.current: dict[str, np.ndarray] = {}
        self.result: RoundResult | None = None

    @property
    def private(self) -> bool:
        return self.noise_multiplier > 0

    # -- sampling ---------------------------------------------------------------------------------
    def sample(self, node_ids: Iterable[int]) -> list[int]:
        """Each node independently with probability q (the server's secret stream), in a fixed order."""
        nodes = sorted(node_ids)
        return [n for n, draw in zip(nodes, self.sampling_rng.random(len(nodes))) if draw < self.sample_rate]

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        # Flower's own wait for the nodes to connect (in a simulation they register while the ServerApp starts):
        # all K, since each is sampled at q = M/K; nothing is drawn from its public generator (a sample of size 0)
        _, nodes = sample_nodes(grid, self.clients, 0)
        self.current = _arrays(arrays)
        sampled = self.sample(nodes)
        size = sum(a.nbytes for a in self.current.values())
        self.result = RoundResult(server_round, sampled, bytes_sent=size * len(sampled))
        config["server-round"] = server_round
        record = RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: config})
        return self._construct_messages(record, sampled, MessageType.TRAIN)

    # -- aggregation --------------------------------------------------------------------------------
    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        result = self.result if self.result is not None else RoundResult(server_round, [])
        good = [m for m in replies if not m.has_error()]
        result.failures = [f"node {m.metadata.src_node_id}: {m.error.reason}" for m in replies if m.has_error()]
        result.failed_nodes = [int(m.metadata.src_node_id) for m in replies if m.has_error()]
        if result.sampled and not good:
            raise AllClientsFailed(
                f"round {server_round}: every sampled client failed ({len(result.failures)}); the first: "
                f"{result.failures[0] if result.failures else 'no reply before the timeout'}"
            )
        updates = []
        for m in good:
            sent = _arrays(next(iter(m.content.array_records.values())))
            updates.append({k: sent[k].astype(np.float64) - self.current[k] for k in self.current})
            result.clients.append(dict(next(iter(m.content.metric_records.values()))))
            result.nodes.append(int(m.metadata.src_node_id))
        released = self.release(updates, result)
        self.on_round(result)
        new = {k: (self.current[k] + released[k]).astype(self.current[k].dtype) for k in self.current}
        metrics = MetricRecord({"clients": float(len(good)), "failures": float(len(result.failures))})
        return ArrayRecord({k: Array(v) for k, v in new.items()}), metrics

    def release(self, updates: list[dict[str, np.ndarray]], result: RoundResult) -> dict[str, np.ndarray]:
        """The round's released update from the replies' updates: DP (clip, sum, noise once, / qK) or the mean."""
        keys = list(self.current)
        result.norms = [math.sqrt(sum(float(np.sum(u[k] ** 2)) for k in keys)) for u in updates]
        if not self.private:
            if not updates:
                return {k: np.zeros_like(self.current[k], dtype=np.float64) for k in keys}
            mean = {k: sum(u[k] for u in updates) / len(updates) for k in keys}
            result.update_norm = result.clipped_sum_norm = _norm(mean)
            return mean
        total = {k: np.zeros(self.current[k].shape, dtype=np.float64) for k in keys}
        for u, norm in zip(updates, result.norms):
            factor = min(1.0, self.clip / norm) if norm > 0 else 1.0
            for k in keys:
                total[k] += u[k] * factor
        result.clipped_sum_norm = _norm(total)
        std = self.noise_multiplier * self.clip
        draws = self.noise.draw_step([total[k].size for k in keys])  # float64 N(0, 1), one step per round
        offset = 0
        for k in keys:
            n = total[k].size
            total[k] += std * draws[offset : offset + n].reshape(total[k].shape)
            offset += n
        result.noise_std = std
        expected = self.sample_rate * self.clients  # the public divisor qK
        released = {k: v / expected for k, v in total.items()}
        result.update_norm = _norm(released)
        return released


def _norm(arrays: dict[str, np.ndarray]) -> float:
    return math.sqrt(sum(float(np.sum(a**2)) for a in arrays.values()))
