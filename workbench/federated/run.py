"""A federated run: Flower's ServerApp and ClientApp, run by Flower's simulation engine, stored as one run.

    federate(config, clients=10, rounds=20, clients_per_round=4, partition="by-user", privacy_level="client")

The ClientApp trains the adapter on its partition with the engine's ``Trainer`` (non-private at client level; the
engine's DP-SGD with its own secret key at record and subject level) for ``local_steps`` steps a round and replies
with its adapter; the ServerApp runs Flower's ``Strategy.start`` with ``DPFedAvg`` (strategy.py) and turns each
round into the engine's events (a round is a step on the dashboard: the loss, the clients' update norms against
the clip, the noise, epsilon against the plan; an evaluation every ``eval_every`` rounds and at the end), written
to the run store as they happen. ``flwr.simulation.run_simulation`` runs both: the ServerApp on a thread of this
process, the K ClientApps as virtual SuperNodes in Ray actors (``flwr[simulation]``). Flower's deployment engine
(a SuperLink and K SuperNodes on other machines) runs the same two apps through deploy.py (``flwr run``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from workbench.config import RunConfig
from workbench.errors import UserError
from workbench.events import ClientMetrics, EvalMetrics, Event, RunEnded, RunStarted, StepMetrics
from workbench.federated.accounting import FederatedPrivacy, federated_privacy, local_config
from workbench.federated.data import Federation
from workbench.federated.ledger import record_ledger
from workbench.federated.options import FederatedOptions
from workbench.federated.partition import parse_partition
from workbench.federated.table import client_rows, telemetry_keys
from workbench.store.runs import RunStore, new_run_id

log = logging.getLogger(__name__)

_FEDERATIONS: dict[str, Federation] = {}  # one per process and run settings: the model is loaded once


def _spec(config: RunConfig, options: FederatedOptions) -> dict:
    return {"config": config.to_dict(), "options": options.to_dict()}


def federation(spec: dict) -> Federation:
    """This process's Federation for ``spec`` (built once: the model, the splits, the layout)."""
    key = json.dumps(spec, sort_keys=True)
    if key not in _FEDERATIONS:
        config, options = RunConfig.from_dict(spec["config"]), FederatedOptions(**spec["options"])
        local = local_config(
            config, rounds=options.rounds, local_steps=options.local_steps, level=options.privacy_level
        )
        _FEDERATIONS.clear()  # one run's model at a time
        _FEDERATIONS[key] = Federation(config, options, parse_partition(options.partition), local)
    return _FEDERATIONS[key]


# -- the client -------------------------------------------------------------------------------------
def client_randomness(config: RunConfig, client: int, round_: int):
    """A fresh secret key for one client's round (its sampling and noise; never leaves the client's process), or
    under the labelled seeded mode one derived from the public seed, the client and the round."""
    from workbench.engine.randomness import RunRandomness

    if config.noise_seed is None:
        return RunRandomness.secret()
    digest = hashlib.sha256(f"workbench-federated:{config.noise_seed}:{client}:{round_}".encode()).digest()
    return RunRandomness(digest, noise_seed=int(config.noise_seed))


def train_client(fed: Federation, client: int, arrays: dict, round_: int) -> tuple[dict, dict]:
    """One client's round: the global adapter in, ``local_steps`` steps of the engine on its partition, its adapter
    and its metrics out."""
    from workbench.engine.collective import LocalCollective
    from workbench.engine.trainer import Trainer

    fed.load(arrays)
    prepared = fed.prepared(client)
    scratch = Path(tempfile.mkdtemp(prefix="workbench-client-"))  # mode 0700; removed with the round
    trainer = Trainer(
        prepared,
        run_id=f"client-{client}",
        emit=lambda event: None,
        run_dir=scratch,
        randomness=client_randomness(fed.config, client, round_),
        collective=LocalCollective(),
    )
    losses, examples = [], 0
    try:
        trainer.set_training_mode()
        for step in range(1, fed.options.local_steps + 1):
            event = trainer.train_step(step)
            examples += event.batch_size
            if not math.isnan(event.loss):
                losses.append(event.loss)
    finally:
        trainer.close()
        shutil.rmtree(scratch, ignore_errors=True)
    plan = prepared.plan
    metrics = {
        "num-examples": 1,  # equal weights: a client's size is not public (strategy.py)
        "client": client,
        "loss": float(np.mean(losses)) if losses else math.nan,
        "examples": examples,
        "epsilon": plan.epsilon_at(round_ * fed.options.local_steps) if plan.private else math.inf,
    }
    return fed.arrays(), metrics


def client_app(spec: dict, mods: Sequence[Callable] = ()):
    """The ClientApp: ``train`` messages carry the global adapter and the round; the node's ``partition-id`` is the
    client's index in the layout. ``mods``: Flower client mods (the tests' crashing client)."""
    from flwr.app import Context, Message
    from flwr.clientapp import ClientApp

    app = ClientApp(mods=list(mods))

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        return reply(spec, msg, context)

    return app


def reply(spec: dict, msg, context):
    """A ``train`` message answered: the global adapter and the round in, ``local_steps`` steps on the node's
    partition (``partition-id`` of its node config), its adapter and metrics out."""
    from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict

    fed = federation(spec)
    client = int(context.node_config["partition-id"])
    arrays = {k: v.numpy() for k, v in msg.content["arrays"].items()}
    out, metrics = train_client(fed, client, arrays, int(msg.content["config"]["server-round"]))
    content = RecordDict(
        {"arrays": ArrayRecord({k: Array(v) for k, v in out.items()}), "metrics": MetricRecord(metrics)}
    )
    return Message(content=content, reply_to=msg)


# -- the server ----------------------------------------------------------------------------------------
class FederatedRun:
    """The server side of one run: the store's record, the strategy, the events (module docstring)."""

    def __init__(
        self,
        config: RunConfig,
        options: FederatedOptions,
        *,
        store: RunStore,
        name: str | None,
        subscribers: Sequence[Callable[[Event], None]] = (),
    ) -> None:
        from workbench.engine.randomness import RunRandomness

        self.config, self.options, self.store = config, options, store
        self.spec = _spec(config, options)
        self.fed = federation(self.spec)  # bad data or layout: a FederatedError before anything is stored
        # each client's local plan (its batch size against its data), made once by the Federation before any round
        plans = self.fed.plans()
        self.privacy: FederatedPrivacy = federated_privacy(
            config,
            options,
            plans=plans,
            subjects=self.fed.subjects() if options.privacy_level == "subject" else (),
        )
        self.randomness = RunRandomness.for_config(config)  # the server's key: client sampling and the noise
        self.run_id, self.name = new_run_id(), name or f"federated-{options.clients}x{options.rounds}"
        self.subscribers = list(subscribers)
        self.events: list[Event] = []
        self.client_rows: dict[int, dict] = {}
        self.client_rounds: dict[int, int] = {}  # the rounds each client was sampled in so far
        self.node_client: dict[int, int] = {}  # a node's client index, from its replies (the server sees node ids)
        self.error: BaseException | None = None
        self.round, self.started = 0, time.time()
        self.bytes_per_round: list[int] = []
        self.last_eval: EvalMetrics | None = None

    # -- events ------------------------------------------------------------------------------------
    def emit(self, event: Event) -> None:
        self.events.append(event)
        self.store.append(event)
        for fn in self.subscribers:
            try:
                fn(event)
            except Exception:  # a subscriber never stops the run
                log.exception("subscriber %r raised on %s", fn, event.kind)

    def started_event(self) -> RunStarted:
        p, s = self.privacy, self.options
        sizes = self.fed.sizes()
        client = p.client
        return RunStarted(
            run_id=self.run_id,
            config=self.config.to_dict(),
            dataset_size=sum(n for n, _ in sizes),
            sample_rate=s.sample_rate,
            noise_multiplier=client.noise_multiplier if client is not None else 0.0,
            delta=p.delta,
            planned_steps=s.rounds,
            accountant=self.config.accountant,
            planned_epsilon=p.curve(),
            target_epsilon=self.config.target_epsilon if p.private else None,
            modules=["adapter"],
            trainable_parameters=sum(int(a.size) for a in self.fed.arrays().values()),
            device=str(self.fed.base.device),
            model_name=self.fed.base.model_name,
            privacy_unit={"client": "client", "record": self.config.privacy_unit, "subject": "subject"}[
                s.privacy_level
            ],
            num_users=self.fed.base.train.num_users,
            neighboring=p.client.neighboring if client is not None else p.plans[0].neighboring,
            seeded_randomness=self.randomness.is_seeded,
        )

    def round_event(self, result) -> StepMetrics:
        import torch

        from workbench.engine.trainer import norm_telemetry

        clip = self.config.max_grad_norm if self.privacy.level == "client" else None
        norms = torch.tensor(result.norms, dtype=torch.float64)
        losses = [c["loss"] for c in result.clients if not math.isnan(c["loss"])]
        for c in result.clients:
            row = self.client_rows.setdefault(int(c["client"]), {"rounds": 0, "trained_examples": 0})
            row.update(
                rounds=row["rounds"] + 1, trained_examples=row["trained_examples"] + int(c["examples"]), loss=c["loss"]
            )
            if math.isfinite(c["epsilon"]):
                row["epsilon"] = c["epsilon"]
        for c, norm in zip(result.clients, result.norms):
            self.client_rows[int(c["client"])]["update_norm"] = norm
        self.bytes_per_round.append(result.bytes_sent)
        notices = [
            {
                "code": "client_failed",
                "severity": "warning",
                "message": f"a client failed this round and contributed nothing: {f}",
                "advice": "the round completed with the others; the run's error log of that client says why",
            }
            for f in result.failures
        ]
        return StepMetrics(
            run_id=self.run_id,
            step=result.round,
            loss=float(np.mean(losses)) if losses else math.nan,
            learning_rate=self.config.learning_rate,
            batch_size=len(result.clients),
            epsilon=self.privacy.epsilon(result.round),
            clipped_fraction=float(np.mean([n > clip for n in result.norms])) if clip and result.norms else 0.0,
            module_grad_norm={"adapter": result.clipped_sum_norm},
            module_noise_std={"adapter": result.noise_std},
            step_time=time.time() - self._round_started,
            tokens_per_second=0.0,
            tokens=0,
            notices=notices,
            **norm_telemetry(norms, clip),
        )

    def clients_event(self, result) -> ClientMetrics:
        """The round's per-client table (table.py): a row per client, and one for each failed node whose client
        the server has not heard from (it knows node ids; a client names its index in its replies)."""
        level = self.privacy.level
        clip = self.config.max_grad_norm if level == "client" else None
        self.node_client.update((n, int(c["client"])) for n, c in zip(result.nodes, result.clients))
        failed = [self.node_client[n] for n in result.failed_nodes if n in self.node_client]
        rows = client_rows(
            names=self.fed.names,
            sizes=[n for n, _ in self.fed.sizes()],
            replies=result.clients,
            norms=result.norms,
            failed=failed,
            rounds=self.client_rounds,
            clip=clip,
            level=level,
        )
        rows += [
            {"client": f"node {n} (no reply yet)", "index": None, "sampled": True, "failed": True}
            for n in result.failed_nodes
            if n not in self.node_client
        ]
        return ClientMetrics(
            run_id=self.run_id, step=result.round, level=level, rows=rows, telemetry=telemetry_keys(level), clip=clip
        )

    def on_round(self, result) -> None:
        self.round = result.round
        self.emit(self.round_event(result))
        self.emit(self.clients_event(result))  # the dashboards' per-client table, stored with the run
        self._round_started = time.time()

    def evaluate(self, round_: int, arrays) -> Any:
        """Flower's evaluate_fn: the global adapter on the validation split every eval_every rounds and at the end
        (no privacy cost: the held-out users, which no client trains on; engine/validation.py)."""
        every = self.config.eval_every or max(1, self.options.rounds // 5)
        if round_ == 0 or (round_ % every and round_ != self.options.rounds):
            return None
        from flwr.app import MetricRecord

        from workbench.engine.validation import Validation

        self.fed.load({k: v.numpy() for k, v in arrays.items()})
        self.fed.base.model.eval()
        evaluation = Validation(self.fed.base, autocast=_nullcontext).evaluation(
            run_id=self.run_id, step=round_, generate=self.config.generate_max_new_tokens > 0
        )
        self.emit(evaluation)
        self.last_eval = evaluation
        return MetricRecord({"val_loss": float(evaluation.val_loss)})

    # -- the ServerApp ----------------------------------------------------------------------------------
    def server_app(self):
        from flwr.app import Context
        from flwr.serverapp import Grid, ServerApp

        app = ServerApp()

        @app.main()
        def main(grid: Grid, context: Context) -> None:
            self.serve(grid)

        return app

    def serve(self, grid) -> None:
        """The ServerApp's main on ``grid`` (Flower's simulation or deployment engine): DPFedAvg's rounds; an
        error is kept for the run's end (``self.error``), never raised into Flower."""
        from flwr.app import Array, ArrayRecord

        from workbench.federated.strategy import DPFedAvg

        strategy = None
        try:
            client = self.privacy.client
            strategy = DPFedAvg(
                sample_rate=self.options.sample_rate,
                clients=self.options.clients,
                clip=self.config.max_grad_norm,
                noise_multiplier=client.noise_multiplier if client is not None and client.private else 0.0,
                sampling_rng=self.randomness.sampling_rng(),
                noise=self.randomness.noise(threads=1),
                on_round=self.on_round,
            )
            self._round_started = time.time()
            result = strategy.start(
                grid=grid,
                initial_arrays=ArrayRecord({k: Array(v) for k, v in self.fed.arrays().items()}),
                num_rounds=self.options.rounds,
                evaluate_fn=self.evaluate,
            )
            self.fed.load({k: v.numpy() for k, v in result.arrays.items()})
        except BaseException as err:  # noqa: BLE001 - reported as the run's end, never lost
            self.error = err
            self.traceback = traceback.format_exc()
        finally:
            if strategy is not None and strategy.noise is not None:
                strategy.noise.close()

    # -- the whole run ----------------------------------------------------------------------------------
    def run(self, *, client_mods: Sequence[Callable] = (), backend: dict | None = None) -> dict:
        """Store the run, run the simulation, store its end. Returns the summary."""
        return self.stored(
            lambda: simulate(self.server_app(), client_app(self.spec, client_mods), self.options.clients, backend)
        )

    def stored(self, body: Callable[[], None]) -> dict:
        """Store the run, run ``body`` (the simulation, or ``serve`` on a deployment's grid), store its end."""
        self.store.create_run(self.run_id, config=self.config.to_dict(), name=self.name, status="running")
        self.randomness.save(self.store.run_dir(self.run_id))
        self.emit(self.started_event())
        status, reason = "finished", f"completed {self.options.rounds} rounds"
        try:
            body()
        except KeyboardInterrupt:
            self.error = self.error or KeyboardInterrupt()
        except BaseException as err:  # noqa: BLE001
            self.error, self.traceback = err, traceback.format_exc()
        if self.error is not None:
            status, reason = self._failure()
        elif self.round < self.options.rounds:
            status, reason = "failed", f"the simulation ended after round {self.round} of {self.options.rounds}"
        adapter = self._save() if self.round and status != "failed" else None
        summary = self.summary(status, reason, adapter)
        record_ledger(self, status)  # before RunEnded: whoever sees the run end finds its ledger row
        self.emit(RunEnded(run_id=self.run_id, status=status, reason=reason, summary=summary))
        return summary

    def _failure(self) -> tuple[str, str]:
        err = self.error
        if isinstance(err, KeyboardInterrupt):
            return "stopped", f"stopped by request after round {self.round}"
        if isinstance(err, UserError) or type(err).__name__ == "AllClientsFailed":
            return "failed", str(err)
        path = self.store.run_dir(self.run_id)
        path.mkdir(parents=True, exist_ok=True)
        (path / "error.log").write_text(getattr(self, "traceback", "") or repr(err))
        return "failed", f"internal error {type(err).__name__}: {err} (traceback in {path / 'error.log'})"

    def _save(self) -> str:
        out = self.store.run_dir(self.run_id) / "adapter"
        self.fed.base.model.save_pretrained(str(out))
        return str(out)

    def summary(self, status: str, reason: str, adapter: str | None) -> dict:
        sizes = self.fed.sizes()
        clients = [
            {"client": name, "examples": sizes[c][0], "users": sizes[c][1], **self.client_rows.get(c, {"rounds": 0})}
            for c, name in enumerate(self.fed.names)
        ]
        out = {
            "run_id": self.run_id,
            "status": status,
            "reason": reason,
            "federated": {**self.options.to_dict(), "engine": "flower-simulation (ray)"},
            "adapter_dir": adapter,
            "steps": self.round,
            "seeded_randomness": self.randomness.is_seeded,
            "max_grad_norm": self.config.max_grad_norm,
            "model": self.config.model,
            "data": self.config.data,
            "wall_time": time.time() - self.started,
            "bytes_per_round": float(np.mean(self.bytes_per_round)) if self.bytes_per_round else 0.0,
            "clients": clients,
            **self.privacy.report(),
        }
        if self.round < self.options.rounds and self.privacy.private:
            out["steps_done_epsilon"] = self.privacy.epsilon(self.round)
        if self.last_eval is not None and self.last_eval.step == self.round:
            out.update(val_loss=self.last_eval.val_loss, accuracy=self.last_eval.accuracy)
        return out


class _nullcontext:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def simulate(server, client, clients: int, backend: dict | None = None) -> None:
    """Flower's simulation engine: the ServerApp here, ``clients`` virtual SuperNodes in Ray actors (one CPU each,
    at most as many actors as CPUs; a GPU shared when there is one)."""
    import torch
    from flwr.simulation import run_simulation

    cpus = max(1, min(clients, os.cpu_count() or 1))
    gpu = 1.0 / min(clients, 4) if torch.cuda.is_available() else 0.0
    config = backend or {
        "client_resources": {"num_cpus": 1, "num_gpus": gpu},
        "init_args": {"num_cpus": cpus, "include_dashboard": False, "log_to_driver": True},
    }
    run_simulation(server_app=server, client_app=client, num_supernodes=clients, backend_config=config)


def federate(
    config: RunConfig,
    options: FederatedOptions | None = None,
    *,
    name: str | None = None,
    store: RunStore | None = None,
    subscribers: Sequence[Callable[[Event], None]] = (),
    client_mods: Sequence[Callable] = (),
    backend: dict | None = None,
    **settings: Any,
) -> dict:
    """Run federated DP-LoRA through Flower's simulation engine and store it as a run; returns its summary
    (``summary["run_id"]``, ``["status"]``, ``["epsilon"]``, ...). ``options``: the federated options, or their
    fields as keywords (``clients=10, rounds=20, clients_per_round=4, ...``: FederatedOptions). FederatedError (a
    message) for bad options, before anything is stored."""
    if options is None:
        options = FederatedOptions(**settings)
    elif settings:
        raise TypeError(f"federate: pass the options as FederatedOptions or as keywords, not both ({sorted(settings)})")
    run = FederatedRun(config, options, store=store or RunStore(), name=name, subscribers=subscribers)
    return run.run(client_mods=client_mods, backend=backend)
