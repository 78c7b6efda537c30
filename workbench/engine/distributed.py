"""Data-parallel DP-SGD on torch.distributed: one run over several processes (and GPUs, and machines).

One logical step over R ranks (read top to bottom; trainer.py runs it, dp_step.py does the sums):

    stop = all_reduce(stop_flag, MAX)                   # a stop request reaches every rank within one step
    mine = poisson(shard_r, q)                          # rank r samples its own shard with its own stream
    S_r  = sum_{i in mine} clip(g_i, C)                 # per-example clipping, as in one process
    S    = all_reduce(S_r, SUM)                         # every rank now holds the global clipped sum
    rank 0: S + N(0, sigma^2 C^2)                       # the noise, once, from the secret generator
    broadcast(S + noise, src=0)                         # every rank gets rank 0's noisy sum, bit for bit
    grad = (S + noise) / (q N)                          # the expected *global* batch, as the accountant assumes
    optimizer.step()                                    # the same update on every rank

Why this is exactly the mechanism the accountant analyses:
- Every unit (example, or user under ULS) is in exactly one shard, chosen by a keyed BLAKE2b hash of its
  identity (``shard_of``), as the validation split is (data/units.py): removing one unit moves no other
  one, so the shards of neighbouring datasets differ in that unit only (REFERENCES.md section 7).
- Rank r includes each unit of its shard independently with probability q. Every unit is in one shard, so
  the union over ranks includes every unit independently with probability q: a Poisson sample of rate q
  of the whole dataset, whatever the shards' sizes.
- The clipped sums add up to the one-process clipped sum (sensitivity C), and the noise N(0, sigma^2 C^2)
  is added ONCE, on rank 0, to the *sum* (not to an average). It is neither multiplied by the number of
  ranks R (which happens when every rank adds its own full noise: std sqrt(R) sigma C, more noise than
  planned and worse utility) nor divided by it (which happens when each rank adds sigma C / sqrt(R) and
  the sum is then averaged, or when a scheme meant for "every rank adds" is used while only one rank adds:
  std sigma C / sqrt(R), LESS noise than the accountant assumed, so the epsilon reported is false).
  Opacus' DistributedDPOptimizer also adds the noise on rank 0 only before its all-reduce; fastDP's
  schemes differ, and a wrong flag there silently divides the noise by sqrt(R). Dividing by the expected
  global batch q N afterwards is post-processing of one released value, identical on every rank.
- Rank 0 alone holds the run's key (256 bits from the OS, randomness.py). Each rank's sampling stream
  is ChaCha20 keyed by HMAC(key, "poisson-sampling/rank-r-of-R"); rank 0 sends rank r only rank r's
  derived key (``scatter``), so no two ranks share a stream and the run key never leaves rank 0. Over
  several machines those 32 bytes cross the network like the gradients do (gloo and NCCL do not
  encrypt): run multi-node jobs on a network you trust with the data itself.
- Seeded mode (noise_seed, labelled "no DP guarantee"): every rank draws the one-process run's coins
  (one public stream, all N coins) and keeps those of its shard, so the union sample and the noise are
  exactly the one-process run's: the adapter matches a 1-process run within float tolerance (the test
  oracle, tests/engine/test_distributed.py).

Failures: every collective has the timeout given to ``init_process_group`` (WORKBENCH_DIST_TIMEOUT
seconds, default 300), so a rank that dies (its sockets close: the others fail at once) or hangs (the
others fail after the timeout) fails the run with a ``DistributedError`` naming what failed; the run is
stored as ``failed`` by rank 0's Session.

Here: the shards, the process group (joining it, ``current``), ``Distributed`` (the collective of a rank: the same
interface as collective.LocalCollective) and the randomness of a rank without the key. A rank > 0 trains in
worker.py; starting, supervising and reaping the processes (``workbench train --nproc N``, a group a Session
hosts) is the launcher's, workbench/running/launch.py.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from dataclasses import replace
from datetime import timedelta
from typing import Sequence

# c10d's C++ warnings (stack traces while a rendezvous retries) would bury the one-line message; they are read
# when torch is first imported, which the command line does after this module.
os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "FATAL")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from workbench.config import ConfigError, RunConfig  # noqa: E402
from workbench.engine.collective import LocalCollective  # noqa: E402
from workbench.errors import UserError

DEFAULT_TIMEOUT_S = 300.0  # collectives and the rendezvous; rank 0's evaluations between steps must fit in it
HOSTED_ENV = "WORKBENCH_HOSTED"  # "1" in the environment of the ranks a Session hosts (running/launch.py)
READY_KEY = "workbench/ready"  # each hosted rank adds 1 to it in rank 0's store before joining the group


class DistributedSetupError(ConfigError):
    """A multi-process run cannot start (bad --nproc, no backend, no GPUs, rendezvous unreachable)."""


class DistributedError(UserError, RuntimeError):
    """A rank died, hung, or could not prepare: the run fails with this message."""


def timeout_s() -> float:
    raw = os.environ.get("WORKBENCH_DIST_TIMEOUT")
    if raw is None:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        raise DistributedSetupError(f"WORKBENCH_DIST_TIMEOUT must be a number of seconds. Found {raw!r}.") from None
    if value <= 0:
        raise DistributedSetupError(f"WORKBENCH_DIST_TIMEOUT must be positive. Found {raw!r}.")
    return value


# -- shards --------------------------------------------------------------------------------------------


def _shard_salt(seed: int) -> bytes:
    return hashlib.blake2b(f"workbench-rank-shard:{seed}".encode(), digest_size=32).digest()


def shard_of(identity: str, world_size: int, *, seed: int) -> int:
    """The rank whose shard holds the unit ``identity``: a keyed BLAKE2b hash of that identity alone
    (key from the public ``seed``, as the validation split's), so no other unit's presence moves it."""
    digest = hashlib.blake2b(identity.encode("utf-8"), key=_shard_salt(seed), digest_size=16).digest()
    return int.from_bytes(digest[:8], "little") % world_size


def unit_identities(train_tok: Sequence, *, by_user: bool) -> list[str]:
    """Each sampled unit's identity, in the trainer's unit order: sorted user ids under ULS (as
    ``Trainer._users``), else each example's content (its tokens, labels and user), never its position."""
    if by_user:
        return ["user:" + u for u in sorted({ex.user_id for ex in train_tok})]
    return [
        "example:" + json.dumps([list(ex.input_ids), list(ex.labels or ()), ex.label_id, ex.user_id])
        for ex in train_tok
    ]


class ShardSampler:
    """Poisson sampling of this rank's shard at rate q; ``draw()`` gives global unit indices (sorted)."""

    def __init__(
        self, mine: np.ndarray, *, population: int, sample_rate: float, rng: np.random.Generator, shared: bool
    ) -> None:
        if not 0 < sample_rate <= 1:
            raise ValueError(f"sample_rate must be in (0, 1]. Found {sample_rate}.")
        self.mine, self.population, self.q, self.rng, self.shared = mine, population, sample_rate, rng, shared

    def draw(self) -> np.ndarray:
        if self.shared:  # seeded mode: the one-process run's coins for all N units, this shard's kept
            coins = self.rng.random(self.population) < self.q
            return self.mine[coins[self.mine]]
        return self.mine[self.rng.random(len(self.mine)) < self.q]  # one independent coin per unit of the shard


# -- the process group ---------------------------------------------------------------------------------


def from_env() -> tuple[int, int, int] | None:
    """(rank, world size, local rank) when launched as one rank of several (``--nproc`` or torchrun)."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1 or "RANK" not in os.environ:
            return None
        rank = int(os.environ["RANK"])
        local = int(os.environ.get("LOCAL_RANK", rank))
    except ValueError as err:
        raise DistributedSetupError(f"the RANK / WORLD_SIZE / LOCAL_RANK environment is not numeric: {err}") from None
    return rank, world, local


def _wants_cuda(config: RunConfig) -> bool:
    return config.device == "cuda" or (config.device == "auto" and torch.cuda.is_available())


def check_launch(config: RunConfig, nproc: int) -> str:
    """The backend for ``nproc`` local processes, or DistributedSetupError saying what is wrong."""
    if nproc < 1:
        raise DistributedSetupError(f"--nproc must be at least 1 (the number of processes). Found {nproc}.")
    import torch.distributed as tdist

    if not tdist.is_available():
        raise DistributedSetupError("this PyTorch build has no torch.distributed; --nproc needs it. Use --nproc 1.")
    if _wants_cuda(config):
        if not torch.cuda.is_available():
            raise DistributedSetupError("device=cuda was asked for but no CUDA GPU is available. Use device=cpu.")
        gpus = torch.cuda.device_count()
        if nproc > gpus:
            raise DistributedSetupError(
                f"--nproc {nproc} needs {nproc} GPUs (one per process) but this machine has {gpus}. "
                f"Use --nproc {gpus} or fewer, or --set device=cpu."
            )
        if not tdist.is_nccl_available():
            raise DistributedSetupError("the NCCL backend is not available in this PyTorch build; GPU ranks need it.")
        return "nccl"
    if not tdist.is_gloo_available():
        raise DistributedSetupError("the gloo backend is not available in this PyTorch build; CPU ranks need it.")
    return "gloo"


_CURRENT: "Distributed | None" = None


def current(config: RunConfig) -> "Distributed | LocalCollective":
    """The process group this process belongs to, or the one-process ``LocalCollective``."""
    if _CURRENT is not None:
        return _CURRENT
    if config.nproc > 1:
        raise ConfigError(
            f"nproc={config.nproc} needs one process per rank: start it with `workbench train --nproc "
            f"{config.nproc}` (or torchrun), or train it through a Session, which hosts the ranks itself. This "
            "process is no rank: set nproc=1 here."
        )
    return LocalCollective()


def joined() -> bool:
    """Whether this process is a rank of a group it joined with ``init`` (``workbench train --nproc`` or torchrun)."""
    return _CURRENT is not None


def init(config: RunConfig, rank: int, world_size: int, local_rank: int) -> "Distributed":
    """Join the process group the environment describes (MASTER_ADDR/MASTER_PORT, env:// as torchrun's)."""
    global _CURRENT
    _CURRENT = join(config, rank, world_size, local_rank, announce=rank > 0 and os.environ.get(HOSTED_ENV) == "1")
    return _CURRENT


def join(
    config: RunConfig, rank: int, world_size: int, local_rank: int, *, store=None, announce: bool = False
) -> "Distributed":
    """Join a process group: through ``store`` (a hosted group's rank 0 holds its TCPStore) or env://; with
    ``announce``, first tell the hosting rank 0 that this rank is up (running.launch.hosted waits for it)."""
    import torch.distributed as tdist

    backend = check_launch(config, 1)
    device = torch.device("cpu")
    if backend == "nccl":
        if local_rank >= torch.cuda.device_count():
            raise DistributedSetupError(
                f"local rank {local_rank} has no GPU: this machine has {torch.cuda.device_count()}. "
                "Start at most that many processes per machine."
            )
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
        # A timeout raises here instead of killing the process. NCCL reads it from the environment only, so a
        # hosted rank 0 sets it in the app's own environment too (it concerns NCCL groups alone).
        os.environ.setdefault("TORCH_NCCL_BLOCKING_WAIT", "1")
    limit = timeout_s()
    if store is not None:
        where = f"127.0.0.1:{store.port}"
    else:
        where = f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}"
    try:
        if announce:  # a rank a Session hosts: its own client of rank 0's store, the same keys as env:// uses
            store = tcp_store(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world_size, limit=limit)
            store.add(READY_KEY, 1)
        if store is None:
            tdist.init_process_group(
                backend, init_method="env://", rank=rank, world_size=world_size, timeout=timedelta(seconds=limit)
            )
        else:  # env:// wraps its store in this prefix: the ranks of one group must agree on the keys
            tdist.init_process_group(
                backend,
                store=tdist.PrefixStore("default_pg", store),
                rank=rank,
                world_size=world_size,
                timeout=timedelta(seconds=limit),
            )
    except Exception as err:  # noqa: BLE001 - the rendezvous' errors vary by backend and version
        raise DistributedSetupError(
            f"rank {rank} of {world_size} could not join the process group at {where} within {limit:g} s "
            f"({_first_line(err)}). Check MASTER_ADDR / MASTER_PORT and that every rank was started."
        ) from None
    return Distributed(rank, world_size, local_rank, backend, device, limit)


def tcp_store(host: str, port: int, world_size: int, *, limit: float, master: bool = False):
    """A c10d TCPStore (``master``: its server, on ``port``, 0 for a free one); it waits for no one here."""
    from torch.distributed import TCPStore

    return TCPStore(host, port, world_size, is_master=master, timeout=timedelta(seconds=limit), wait_for_workers=False)


def shutdown() -> None:
    global _CURRENT
    if _CURRENT is None:
        return
    _CURRENT = None
    with contextlib.suppress(Exception):
        import torch.distributed as tdist

        tdist.destroy_process_group()


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return (text[0] if text else type(err).__name__)[:300]


class Distributed:
    """This process's rank in the group, and the few collectives a DP-SGD step needs (see the docstring): the
    interface of collective.LocalCollective, so the trainer and the DP step never ask how many processes run."""

    stops_within_step = False  # a rank leaving mid-step would leave the others waiting in the all-reduce

    def __init__(
        self, rank: int, world_size: int, local_rank: int, backend: str, device: torch.device, timeout: float
    ) -> None:
        self.rank, self.world_size, self.local_rank = rank, world_size, local_rank
        self.backend, self.device, self.timeout = backend, device, timeout
        self.step = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @contextlib.contextmanager
    def _collective(self, what: str):
        import torch.distributed as tdist

        try:
            yield tdist
        except DistributedError:
            raise
        except Exception as err:  # noqa: BLE001 - gloo/NCCL raise RuntimeError, DistBackendError, ...
            raise DistributedError(
                f"rank {self.rank} of {self.world_size} lost the other processes during {what} at step "
                f"{self.step + 1}: a rank died or did not answer within {self.timeout:g} s ({_first_line(err)})"
            ) from None

    # -- start ----------------------------------------------------------------------------------------
    def agree(self, error: str | None) -> None:
        """Every rank says whether it prepared; if one could not, every rank raises its message."""
        out: list = [None] * self.world_size
        with self._collective("the start-up check") as tdist:
            tdist.all_gather_object(out, error)
        failed = [(r, e) for r, e in enumerate(out) if e]
        if failed:
            r, e = failed[0]
            raise DistributedError(f"rank {r} of {self.world_size} could not start: {e}")

    def sampler(self, randomness, *, units: Sequence, by_user: bool, sample_rate: float, seed: int) -> ShardSampler:
        """This rank's shard of ``units`` (the examples; their users under ULS) and its sampling stream. Secret mode:
        rank 0 derives one key per rank from the run key and sends each rank its own (scatter); seeded mode: every
        rank recomputes the public stream."""
        identities = unit_identities(units, by_user=by_user)
        owners = np.array([shard_of(x, self.world_size, seed=seed) for x in identities], dtype=np.int64)
        mine = np.flatnonzero(owners == self.rank)
        if randomness.is_seeded:
            rng, shared = randomness.sampling_rng(), True
        else:
            keys = [torch.zeros(32, dtype=torch.uint8, device=self.device) for _ in range(self.world_size)]
            if self.is_main:
                keys = [
                    torch.tensor(list(randomness.rank_sampling_key(r, self.world_size)), dtype=torch.uint8).to(
                        self.device
                    )
                    for r in range(self.world_size)
                ]
            own = torch.zeros(32, dtype=torch.uint8, device=self.device)
            with self._collective("sending each rank its sampling key") as tdist:
                tdist.scatter(own, keys if self.is_main else None, src=0)
            from workbench.engine.randomness import stream

            rng, shared = stream(bytes(own.cpu().tolist())), False
            del keys, own
        return ShardSampler(mine, population=len(identities), sample_rate=sample_rate, rng=rng, shared=shared)

    # -- every step -----------------------------------------------------------------------------------
    def stop_requested(self, local: bool) -> bool:
        """True on every rank when any rank was asked to stop (rank 0's Session, in practice)."""
        flag = torch.tensor([1.0 if local else 0.0], device=self.device)
        with self._collective("the stop check") as tdist:
            tdist.all_reduce(flag, op=tdist.ReduceOp.MAX)
        return bool(flag.item() > 0)

    def sum_(self, tensors: list[torch.Tensor]) -> None:
        """All-reduce (sum) the tensors in place, packed into one buffer."""
        self._packed(tensors, "the all-reduce of the clipped sums", lambda t, d: d.all_reduce(t))

    def from_main_(self, tensors: list[torch.Tensor], *, what: str = "the broadcast of the noisy sum") -> None:
        """Overwrite the tensors with rank 0's values (the noisy sum; the initial weights), packed."""
        self._packed(tensors, what, lambda t, d: d.broadcast(t, src=0))

    def sum_grads_(self, params: list[torch.nn.Parameter]) -> None:
        """The non-private baseline: sum the ranks' gradients (each already / q N); a missing one counts as zero."""
        for prm in params:
            if prm.grad is None:
                prm.grad = torch.zeros_like(prm)
        self.sum_([prm.grad for prm in params])

    def _packed(self, tensors: list[torch.Tensor], what: str, op) -> None:
        if not tensors:
            return
        flat = torch.cat([t.detach().reshape(-1).to(self.device) for t in tensors])
        with self._collective(what) as tdist:
            op(flat, tdist)
        offset = 0
        for t in tensors:
            n = t.numel()
            t.copy_(flat[offset : offset + n].view(t.shape))
            offset += n

    def gather_step(self, stats, losses: list[torch.Tensor], tokens: int):
        """(stats, losses, tokens) of the whole step on rank 0: every rank's per-unit norms, clipped and
        non-finite counts, losses and tokens (telemetry for the data owner; the released sum is already global)."""
        n = len(stats.norms)
        mine = (
            stats.norms.numpy(),
            round(stats.clipped_fraction * n),
            stats.nonfinite,
            [x.numpy() for x in losses],
            tokens,
        )
        out: list = [None] * self.world_size
        with self._collective("gathering the step's telemetry") as tdist:
            tdist.all_gather_object(out, mine)
        self.step += 1
        norms = torch.from_numpy(np.concatenate([o[0] for o in out])) if out else stats.norms
        total = len(norms)
        merged = replace(
            stats,
            batch_size=total,
            norms=norms,
            clipped_fraction=sum(o[1] for o in out) / total if total else 0.0,
            nonfinite=sum(o[2] for o in out),
        )
        return merged, [torch.from_numpy(x) for o in out for x in o[3]], sum(o[4] for o in out)


# -- a rank without the key -----------------------------------------------------------------------------


class WorkerRandomness:
    """A rank other than 0 in secret mode: it holds no key. Its sampling stream arrives from rank 0
    (``Distributed.sampler``) and it never draws noise (rank 0 adds it once)."""

    noise_seed = None
    is_seeded = False

    def sampling_rng(self):
        return None

    def noise(self, *, threads: int | None = None):  # the trainer passes noise_threads; a worker makes no noise
        return _NoNoise()

    def __repr__(self) -> str:
        return "WorkerRandomness(no key)"


class _NoNoise:
    def sample(self, *args, **kwargs):
        raise RuntimeError("only rank 0 adds the noise; a worker rank must never draw it")

    draw_step = standard = sample

    def close(self) -> None:
        """Nothing to end: a worker rank has no noise source."""
