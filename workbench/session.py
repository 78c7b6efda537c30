"""A training session: one run on a background thread, its events fanned out to subscribers.

This is the only object a UI touches: ``start()``, ``stop()``, ``status``, ``wait()``, and
``subscribe(fn)``.  The run store is always subscribed, so every event is persisted; a
subscriber that raises is logged and never stops training.

A Stop lands in seconds: the forward pass under way ends at its next layer and the partial step is discarded
(data-parallel: at the next step), an evaluation under way is abandoned, and a run stopped by hand skips its last
evaluation; its adapter and privacy report are saved and the run is stored 'stopped'. ``evaluate_run`` evaluates a stored run's adapter afterwards, on request
(`workbench runs evaluate`, the Runs tab's Evaluate).
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Callable

from workbench.config import RunConfig
from workbench.errors import UserError
from workbench.events import EvalMetrics, Event, RunEnded
from workbench.store.runs import ACTIVE, RunStore, new_run_id

__all__ = ["Session", "evaluate_run", "EvaluateError"]

log = logging.getLogger(__name__)
Subscriber = Callable[[Event], None]

# One training job at a time per device: a second session waits ("queued") for the first.
_DEVICE_LOCKS: dict[str, threading.Lock] = {}
_LOCKS_GUARD = threading.Lock()


def _device_lock(device: str) -> threading.Lock:
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    with _LOCKS_GUARD:
        return _DEVICE_LOCKS.setdefault(device, threading.Lock())


class Session:
    """Runs one DP fine-tuning job; see the module docstring."""

    def __init__(
        self,
        config: RunConfig,
        *,
        store: RunStore | None = None,
        subscribers: tuple[Subscriber, ...] = (),
        randomness=None,
        stop_after: int | None = None,
        name: str | None = None,
        replay_of: str | None = None,
        owner: str | None = None,
        device_lock: threading.Lock | None = None,
        run_id: str | None = None,
    ) -> None:
        """``randomness``: the run's key (default: a fresh secret one, or the labelled seeded mode when the
        config sets noise_seed); ``replay`` passes a stored run's key. ``stop_after``: stop after that many
        steps (a replay of a stopped run). ``replay_of``: the run whose key this replays; its data must be the
        data that run trained on (else ReplayError), and the ledger links the two as one release. ``owner``: the
        workshop participant who started it (stored with the run). ``device_lock``: the lock the run holds while it
        trains (default: one per device); the workshop queue (running/queue.py) passes a gate of its own.
        ``run_id``: a run another process registered (the workshop's training workers, training_pool.py): this
        session trains it, reading its key from the run's folder, and does not register it again."""
        from workbench.engine.randomness import RunRandomness

        self.config = config
        self.store = store or RunStore()
        self._registered = run_id is not None
        if randomness is None and run_id is not None and config.noise_seed is None:
            randomness = RunRandomness.load(self.store.run_dir(run_id), run_id=run_id)
        self.randomness = randomness or RunRandomness.for_config(config)
        self.stop_after = stop_after
        self.replay_of = replay_of
        self.owner = owner
        self._device_lock = device_lock
        self.name = name or config.name
        self.run_id = run_id or new_run_id()
        self.events: list[Event] = []  # in-memory copy for notebooks and tests
        self._subscribers: list[Subscriber] = list(subscribers)
        self._stop = threading.Event()
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        self.status = "created"
        self.summary: dict[str, Any] | None = None

    # -- control -----------------------------------------------------------------------------------
    def subscribe(self, fn: Subscriber) -> None:
        self._subscribers.append(fn)

    def start(self) -> str:
        """Start training on a background thread; returns the run id at once."""
        if self._thread is not None:
            raise RuntimeError("this session was already started; create a new Session for another run")
        self._register()
        self._thread = threading.Thread(target=self._run, name=f"workbench-{self.run_id}", daemon=True)
        self._thread.start()
        return self.run_id

    def run(self) -> dict[str, Any]:
        """Train in the calling thread and return the summary."""
        self._register()
        self._run()
        return self.summary or {}

    def stop(self) -> None:
        """Ask the run to stop; it takes effect at the next layer of the forward pass under way (the partial step is
        discarded, an evaluation under way abandoned) and the run's last evaluation is skipped (``evaluate_run`` runs
        it on request)."""
        self._stop.set()

    def wait(self, timeout: float | None = None) -> dict[str, Any] | None:
        self._done.wait(timeout)
        return self.summary

    @property
    def done(self) -> bool:
        return self._done.is_set()

    # -- internals ---------------------------------------------------------------------------------
    def _register(self) -> None:
        if self._registered:  # registered by the process that queued it (training_pool.py)
            return
        self._registered = True
        self.store.create_run(
            self.run_id, config=self.config.to_dict(), name=self.name, status="queued", owner=self.owner
        )
        # The key stays beside the run (mode 0600) so the data owner can replay it; never exported.
        self.randomness.save(self.store.run_dir(self.run_id))
        self.status = "queued"

    def _emit(self, event: Event) -> None:
        try:
            self.store.append(event)
        except Exception:  # the store failing must not kill training either; it is logged
            log.exception("run store could not write %s", event.kind)
        self._notify(event)

    def _notify(self, event: Event) -> None:
        """The in-memory copy and the subscribers (an event another process stored: training_pool.py)."""
        self.events.append(event)
        for fn in list(self._subscribers):
            try:
                fn(event)
            except Exception:
                log.exception("subscriber %r raised on %s; training goes on", fn, event.kind)

    def _run(self) -> None:
        lock = self._device_lock or _device_lock(self.config.device)
        try:
            while not lock.acquire(timeout=0.2):
                if self._stop.is_set():
                    self._end("stopped", "stopped before it started", {})
                    return
            try:
                self.status = "running"
                self.store.set_status(self.run_id, "running")
                self._train()
            finally:
                lock.release()
        finally:
            self._done.set()

    def _train(self) -> None:
        from workbench.audit import for_run
        from workbench.engine.baseline import CACHE_FILE
        from workbench.engine.trainer import Trainer, prepare
        from workbench.running import launch

        started = time.time()
        trainer = None
        try:
            run_dir = self.store.run_dir(self.run_id)
            # nproc > 1 in a process that is no rank yet (the app, a notebook): this Session hosts the group, as
            # its rank 0, with ranks 1..N-1 as child processes reaped when the block ends (running/launch.py).
            group = (
                launch.hosted(self.config, run_dir, run_id=self.run_id)
                if launch.hosts(self.config)
                else contextlib.nullcontext()
            )
            with group as collective:
                prepared = prepare(self.config)
                if self.replay_of is not None:  # the same key on other data would cancel the noise: refused
                    from workbench.store.ledger import Ledger

                    Ledger(self.store).check_replay(self.replay_of, prepared.dataset_fingerprint, data=self.config.data)
                trainer = Trainer(
                    prepared,
                    run_id=self.run_id,
                    emit=self._emit,
                    should_stop=self._should_stop(lambda: trainer),
                    run_dir=run_dir,
                    randomness=self.randomness,
                    collective=collective,
                    audit=for_run,  # audit runs: the canaries listen to every step (workbench/audit)
                    baseline_cache=self.store.home / CACHE_FILE,
                )
                status, reason = trainer.run()
                adapter = str(trainer.save(stopped=status == "stopped")) if trainer.step > 0 else None
            self._end(status, reason, self._summary(trainer, status, adapter, started), trainer=trainer)
        except UserError as err:
            self._end("failed", str(err), self._summary(trainer, "failed", None, started), trainer=trainer)
        except Exception as err:  # a bug, not bad input: keep the traceback in the run folder
            path = self.store.run_dir(self.run_id)
            path.mkdir(parents=True, exist_ok=True)
            (path / "error.log").write_text(traceback.format_exc())
            reason = f"internal error {type(err).__name__}: {err} (traceback in {path / 'error.log'})"
            self._end("failed", reason, self._summary(trainer, "failed", None, started), trainer=trainer)

    def _should_stop(self, trainer: Callable[[], Any]) -> Callable[[], bool]:
        if self.stop_after is None:
            return self._stop.is_set
        return lambda: self._stop.is_set() or trainer().step >= self.stop_after

    def _end(self, status: str, reason: str, summary: dict[str, Any], *, trainer=None) -> None:
        summary = {**summary, "status": status, "reason": reason}
        self.summary = summary
        self.status = status
        self._record_ledger(trainer, status)  # before RunEnded: whoever sees the run end finds its ledger row
        self._emit(RunEnded(run_id=self.run_id, status=status, reason=reason, summary=summary))

    def _record_ledger(self, trainer, status: str) -> None:
        """The run's row in the privacy ledger (store/ledger.py) when it took a step; a failure is logged. A run
        stopped by hand is recorded at its planned steps; a replay as a copy of its original."""
        if trainer is None or not trainer.step:
            return
        try:
            from workbench.store.ledger import Ledger

            Ledger(self.store).record_run(
                run_id=self.run_id,
                name=self.name,
                prepared=trainer.p,
                steps=trainer.step,
                seeded=self.randomness.is_seeded,
                stopped=status == "stopped",
                replay_of=self.replay_of,
            )
        except Exception:  # noqa: BLE001 - the ledger failing must not lose the run's end
            log.exception("the privacy ledger could not record run %s", self.run_id)

    def _summary(self, trainer, status: str, adapter: str | None, started: float) -> dict[str, Any]:
        from workbench.engine.data.describe import people as describe_people
        from workbench.engine.randomness import SEEDED_LABEL
        from workbench.engine.report import STOP_NOTE, published_sizes

        # adapter_dir is where the adapter lies on this machine: local, never exported (store/export.py)
        out: dict[str, Any] = {
            "run_id": self.run_id,
            "status": status,
            "adapter_dir": adapter,
            "seeded_randomness": self.randomness.is_seeded,
            "noise_source": self.randomness.noise_version,  # engine/noise.py; a replay uses the same source
        }
        if self.randomness.is_seeded:
            out["randomness"] = SEEDED_LABEL
        if self.replay_of is not None:  # a copy of that run's release: not exported (store/export.py)
            out["replay_of"] = self.replay_of
        if trainer is None:
            return out
        plan, cfg = trainer.p.plan, trainer.p.config
        stopped = status == "stopped"
        eps = plan.claimed_epsilon(trainer.step, stopped=stopped)  # stopped by hand: the planned epsilon
        if stopped and plan.private and trainer.step:
            out.update(
                planned_epsilon=plan.epsilon_at(plan.steps),
                steps_done_epsilon=plan.epsilon_at(trainer.step),  # only if the stop used public information only
                stop_note=STOP_NOTE,
            )
        comparison = plan.comparison_epsilon_at(trainer.step) if trainer.step else None
        if comparison is not None:
            out["edgeworth_epsilon"] = comparison
        out.update(
            epsilon=eps,
            steps=trainer.step,
            **plan.settings(),
            max_grad_norm=plan.max_grad_norm,
            sampling="poisson"
            + ({"els": " (examples, k per user)", "uls": " (users)"}.get(plan.user_sampling or "", "")),
            clipping=trainer.dp.clipping,
            **trainer.allocation_report(),
            **trainer.audit_report(),  # audit runs: the one-run audit's lower bound (privacy/audit.py)
            **trainer.prefix_cache_report(),  # the cached frozen prefix: layers, size, build time (telemetry)
            **published_sizes(trainer.p),
            max_examples_per_user=plan.max_examples_per_user,
            user_sampling=plan.user_sampling,
            **plan.user_level_report(trainer.step),
            model=cfg.model,
            data=cfg.data,
            wall_time=time.time() - started,
            **_final_metrics(trainer),
        )
        # the untuned model's metrics (engine/baseline.py) and the validation labels' majority class: telemetry from
        # the validation data, not exported (store/export.py)
        baseline = trainer.baseline if trainer.baseline is not None else (trainer.majority() or None)
        if baseline is not None:
            out["baseline"] = baseline
        people = describe_people(trainer.p.train)
        if people is not None:  # how many people, the most examples one has: counts of the private data, local
            out["people"] = people
        return out


def _finite(values: dict[str, Any]) -> dict[str, Any]:
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in values.items()}


def _final_metrics(trainer) -> dict[str, Any]:
    """The validation metrics of the weights the run saved: its last evaluation's when that evaluated them; none
    when a Stop skipped it (an earlier evaluation measured earlier weights; ``evaluate_run`` fills them in)."""
    return _finite(trainer.last_eval) if trainer.last_eval_step == trainer.step else {}


class EvaluateError(UserError, ValueError):
    """A stored run cannot be evaluated; the message says why."""


def evaluate_run(
    run_id: str, *, store: RunStore | None = None, generate: bool = True, wait: float | None = 0.0
) -> EvalMetrics:
    """Evaluate a stored run's adapter now, as its last evaluation would have (a Stop skips it): the run's validation
    examples scored the same way (engine/validation.py), with the generations unless ``generate`` is False. The
    evaluation is appended to the run's events at the steps it took and its numbers go into the run's summary.
    Telemetry like every evaluation: computed from the validation split, which no step read, so not covered by
    epsilon and spending no privacy budget (engine/validation.py says why). ``wait``: seconds to wait for a run
    training on the same device in this process (None: as long as it takes). EvaluateError (a message, never a
    traceback) for a run that is active, has no adapter, or whose data changed since it trained."""
    from workbench.engine.trainer import prepare
    from workbench.engine.validation import evaluate_adapter, summary_metrics
    from workbench.store.ledger import Ledger

    store = store or RunStore()
    record = store.get(run_id)  # RunNotFound (a UserError) names the command that lists the runs
    summary = record.summary or {}
    adapter = summary.get("adapter_dir")
    if record.status in ACTIVE:
        raise EvaluateError(f"run {record.id} is {record.status}: evaluate it once it has ended (stop it first).")
    if not adapter:
        why = {
            "failed": f"it failed before saving one ({record.reason})" if record.reason else "it failed",
            "interrupted": "its process ended before the run did",
        }.get(record.status) or ("none was saved" if summary.get("steps") else "it ended before its first step")
        raise EvaluateError(
            f"run {record.id} has no adapter to evaluate: {why}. Only a run that took a step and ended (finished or "
            "stopped) has one."
        )
    if not (Path(adapter) / "adapter_config.json").exists():
        raise EvaluateError(f"run {record.id}'s adapter is no longer in {adapter}: nothing to evaluate.")
    config = RunConfig.from_dict(record.config)  # a ConfigError (a UserError) if this version reads it otherwise
    lock = _device_lock(config.device)  # one job a device: the evaluation also reseeds torch (prepare)
    if not lock.acquire(timeout=-1 if wait is None else wait):
        raise EvaluateError(
            f"another run is training on this device ({config.device}); evaluate run {record.id} once it has ended."
        )
    try:
        prepared = prepare(config)
        if Ledger(store).trained_on(record.id, prepared.dataset_fingerprint) is False:
            raise EvaluateError(
                f"{config.data} no longer holds the records run {record.id} trained on (their fingerprint differs): "
                "its validation split would not be the one its evaluations read, so it is not evaluated."
            )
        evaluation = evaluate_adapter(
            prepared, Path(adapter), run_id=record.id, step=int(summary.get("steps") or 0), generate=generate
        )
    finally:
        lock.release()
    store.append(evaluation)
    store.set_status(record.id, record.status, summary={**summary, **_finite(summary_metrics(evaluation))})
    return evaluation
