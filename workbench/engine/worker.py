"""A rank > 0 of a data-parallel run: it trains its shard with a bare ``Trainer`` (no store, no events, no
evaluation) and ends with an exit code. Rank 0 is an ordinary Session; distributed.py says why the mechanism is the
one-process one, workbench/running/launch.py starts and reaps the processes."""

from __future__ import annotations

import contextlib
import sys
import tempfile
import traceback
from pathlib import Path

from workbench.config import RunConfig
from workbench.engine.distributed import Distributed, DistributedError, WorkerRandomness, shutdown
from workbench.errors import UserError


def run_worker(config: RunConfig, ctx: Distributed) -> int:
    """Train as rank ``ctx.rank`` > 0: no store, no events, no evaluation; exit code 0, 1 (a bug) or 2."""
    from workbench.engine.prepare import prepare
    from workbench.engine.randomness import RunRandomness
    from workbench.engine.trainer import Trainer

    try:
        try:
            prepared = prepare(config)
        except Exception as err:  # noqa: BLE001 - told to rank 0, which fails the run with it (one message)
            with contextlib.suppress(DistributedError):
                ctx.agree(str(err) if isinstance(err, UserError) else f"{type(err).__name__}: {err}")
            return 2
        randomness = RunRandomness.seeded(config.noise_seed) if config.noise_seed is not None else WorkerRandomness()
        trainer = Trainer(
            prepared,
            run_id=f"rank-{ctx.rank}",
            emit=lambda event: None,
            run_dir=Path(tempfile.gettempdir()),
            randomness=randomness,
        )
        trainer.run()
        return 0
    except DistributedError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except UserError as err:
        print(f"error: rank {ctx.rank}: {err}", file=sys.stderr)
        return 2
    except Exception:  # noqa: BLE001 - a bug: the traceback, then exit 1
        traceback.print_exc()
        return 1
    finally:
        shutdown()
