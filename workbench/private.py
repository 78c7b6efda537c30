"""DP-SGD in your own training loop: ``make_private`` and the object both it and ``workbench.hf`` drive.

One logical step, in a hand-written loop (examples/make_private_loop.py):

    private = make_private(model, optimizer, dataset_size=len(data), expected_batch_size=64, epochs=2,
                           target_epsilon=8.0)
    for indices in private.batch_sampler:              # Poisson: each unit in with probability q, size varies
        for micro in private.micro_batches(indices):   # physical micro-batches of at most physical_batch_size
            losses = per_example_losses(model, collate([data[i] for i in micro]))   # (b,)
            private.backward(losses)                   # hooks: per-example grads -> clip -> add to the sum
        private.step()                                 # + N(0, sigma^2 C^2) once, / qN, optimizer.step()
    private.end()                                      # RunEnded, the ledger row

Underneath is the engine of ``workbench train``: the plan (planning/plan.py ``make_plan``), the run's secret
key and its ChaCha20 streams (engine/randomness.py), the per-example gradient hooks that refuse trainable
parameters they do not cover (engine/grad_sample.py), and the same ``DPGradient`` (engine/dp_step.py) that
clips, sums and adds the float64 noise once per logical step. The accountant counts logical steps, which are
optimizer updates; micro-batches only bound memory.

Every event goes to the run store (``store=None`` turns it off), so ``workbench app`` shows a script's run
live in the Train tab, lists it in Runs and Compare, and the ledger counts it with every run on the same examples:
each row is normalised as `workbench train` reads a file (``dataset_identity``), so a script on a file's rows and
`workbench train` on that file share one total.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

import numpy as np
import torch

from workbench.config import ConfigError, RunConfig
from workbench.engine.dp_step import DPGradient, StepStats
from workbench.engine.grad_sample import PerExampleGrads, UnsupportedModelError
from workbench.engine.randomness import SEEDED_LABEL, RunRandomness
from workbench.engine.sampling import micro_batches, poisson_sample
from workbench.events import EvalMetrics, Event, RunEnded, RunStarted, StepMetrics
from workbench.planning.plan import PrivacyPlan, make_plan

log = logging.getLogger(__name__)

STREAMS_DIR = "streams"  # beside the key in the store's run folder (mode 0600): the noise stream at a checkpoint
DEFAULT_STORE = "default"  # the run store of WORKBENCH_HOME


class PoissonBatchSampler:
    """The run's Poisson sampling as a batch sampler: one logical batch per step, each unit in with
    probability q, from the run's secret sampling stream (never a public seed). An empty batch is a real step.

    ``micro_batches`` > 1 (the Trainer's gradient accumulation): each logical batch is yielded as that many
    consecutive chunks (``np.array_split``: sizes differ by at most one, some may be empty), so the Trainer's
    accumulation groups exactly one logical step; ``len`` counts chunks."""

    def __init__(self, *, population: int, sample_rate: float, steps: int, rng: np.random.Generator, chunks: int = 1):
        self.population, self.sample_rate, self.steps, self.chunks = population, sample_rate, steps, chunks
        self.rng = rng
        self.drawn = 0  # logical batches drawn so far

    def draw(self) -> np.ndarray:
        self.drawn += 1
        return poisson_sample(self.population, self.sample_rate, self.rng)

    def fast_forward(self, steps: int) -> None:
        """Draw (and drop) ``steps`` logical batches: a resumed run continues the stream from its key."""
        for _ in range(steps - self.drawn):
            self.draw()

    def __iter__(self) -> Iterator[list[int]]:
        while self.drawn < self.steps:
            indices = self.draw()
            if self.chunks == 1:
                yield indices.tolist()
            else:
                yield from (c.tolist() for c in np.array_split(indices, self.chunks))

    def __len__(self) -> int:
        return self.steps * self.chunks


@dataclass
class ScriptData:
    """What the report (engine/report.py) and the ledger (store/ledger.py) read of a run, as ``Prepared`` holds it
    for ``workbench train``; built from a script's model, tokenizer and dataset."""

    config: RunConfig
    plan: PrivacyPlan
    model: torch.nn.Module
    tokenizer: Any
    task: str
    model_name: str
    train: Any  # .name: the dataset's name
    dataset_fingerprint: str | None = None
    dataset_name: str | None = None
    dataset_units: list | None = None
    dataset_note: str | None = None  # on the ledger's row: rows that are not records (``dataset_identity``)


def _plain(x: Any) -> Any:
    """json's fallback for a dataset row's values: tensors and arrays as lists, dataclasses as dicts."""
    if isinstance(x, (torch.Tensor, np.ndarray)):
        return x.tolist()
    if isinstance(x, np.generic):
        return x.item()
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return {f.name: getattr(x, f.name) for f in dataclasses.fields(x)}
    return repr(x)


def _as_row(item: Any) -> dict | None:
    """A dataset item as a row of plain values (a mapping's or a dataclass's fields; tensors and numpy values as
    Python ones), or None when it is neither (a tuple, a tensor)."""
    if dataclasses.is_dataclass(item) and not isinstance(item, type):
        item = {f.name: getattr(item, f.name) for f in dataclasses.fields(item)}
    if not isinstance(item, Mapping):
        return None
    return {str(k): v.tolist() if isinstance(v, (torch.Tensor, np.ndarray, np.generic)) else v for k, v in item.items()}


@dataclass(frozen=True)
class DataIdentity:
    """What the ledger reads of a script's training set: its exact-records fingerprint, per row its unit identity
    (engine/fingerprint.py ``unit_identities``) and, when some rows are not records, a note saying so."""

    fingerprint: str
    units: list[tuple[bytes, bytes | None]]
    note: str | None = None


def dataset_identity(
    dataset: Any, size: int, *, columns: dict[str, str] | None = None, privacy_unit: str = "example"
) -> DataIdentity:
    """The identity of a script's training set as the ledger links runs by it (store/ledger.py).

    Each row is normalised on its own with the engine's record normalisation (engine/data/normalise.py
    ``normalise_row``: the roles ``columns`` maps, then the standard names text/label, prompt/response,
    instruction/output, messages ...), and its unit is ``unit_identities`` of that record: the rows of a file
    are the same units as the records `workbench train` reads from it, so both runs count in one ledger group.
    When every row normalises, the fingerprint is ``dataset_fingerprint`` of the records (the file's own).

    A row that does not normalise (e.g. tokenised only: input_ids, labels) is named by its raw content instead
    (BLAKE2b-256 of its canonical JSON) and the note says how many: such a row links only to runs on the same
    raw rows. Either way a row's identity depends on that row alone (neighbour-stable). Local only: the ledger
    keys the units with its secret and never publishes either."""
    from workbench.engine.data import ROLES, DataError, Dataset
    from workbench.engine.data.normalise import normalise_row
    from workbench.engine.fingerprint import dataset_fingerprint, unit_identities

    unknown = sorted(set(columns or {}) - set(ROLES))
    if unknown:
        raise DataError(
            f"unknown role(s) {unknown} in `columns`. Map these roles to your dataset's column names: "
            f"{', '.join(ROLES)}, e.g. {{'text': 'sentence'}}."
        )
    records: dict[int, Any] = {}
    raw: list[str] = []
    first_raw: tuple[int, dict | None, Any] | None = None
    for i in range(size):
        item = dataset[i]
        row = _as_row(item)
        if row is not None:
            try:
                records[i] = normalise_row(row, columns, name="the training set", line=i + 1)
            except DataError:
                pass
        if i not in records and first_raw is None:
            first_raw = (i, row, item)
        raw.append(json.dumps(item, default=_plain, sort_keys=True, ensure_ascii=False, separators=(",", ":")))

    def as_dataset(recs) -> Any:
        return Dataset(name="script", schema="script", task="script", records=tuple(recs), columns={}, label_names=None)

    named = dict(zip(records, unit_identities(as_dataset(records.values()))))
    units = [
        named[i] if i in named else (hashlib.blake2b(f"example:{line}".encode("utf-8"), digest_size=32).digest(), None)
        for i, line in enumerate(raw)
    ]
    if first_raw is None:
        return DataIdentity(dataset_fingerprint(as_dataset(records.values()), privacy_unit=privacy_unit), units)
    h = hashlib.sha256(b"workbench-script-dataset-v1\nunit:example\n")
    for line in raw:
        h.update(line.encode("utf-8") + b"\n")
    i, row, item = first_raw
    what = f"columns {', '.join(map(str, row)) or 'none'}" if row is not None else f"a {type(item).__name__}"
    note = (
        f"{size - len(records)} of {size} training rows are not records the workbench reads (text/label, "
        f"prompt/response, instruction/output or messages; first: row {i + 1}, {what}): they are identified by "
        "their raw content, so they link only to runs on the very same rows, not to a `workbench train` run on "
        "the file they came from. Keep the text columns in the dataset (or pass columns=...) to link them"
    )
    return DataIdentity(h.hexdigest(), units, note)


def privacy_config(**settings: Any) -> RunConfig:
    """A ``RunConfig`` holding a script's privacy settings (the plan, the report and the app read it); a bad
    setting is a ConfigError with the config's own message."""
    return RunConfig.from_dict({k: v for k, v in settings.items() if v is not None})


def _check_supported(config: RunConfig) -> None:
    if config.privacy_unit != "example":
        raise ConfigError(
            "privacy_unit=user is not supported by make_private / workbench.hf yet (its per-user cap is a data "
            "preparation step): use `workbench train` with privacy_unit=user, or privacy_unit=example."
        )
    if config.audit != "none":
        raise ConfigError(
            f"audit={config.audit} is not supported by make_private / workbench.hf yet: run the audit with "
            "`workbench train --set audit=...`, or audit=none."
        )


class RunRecorder:
    """Writes a script's run to the store as a ``Session`` does: the run row, the key beside it (mode 0600),
    every event in order."""

    def __init__(self, store, *, run_id: str, name: str | None) -> None:
        self.store, self.run_id, self.name = store, run_id, name

    def create(self, config: RunConfig, randomness: RunRandomness) -> None:
        self.store.create_run(self.run_id, config=config.to_dict(), name=self.name, status="running")
        randomness.save(self.store.run_dir(self.run_id))

    def emit(self, event: Event) -> None:
        try:
            self.store.append(event)
        except Exception:  # the store failing must not stop training; it is logged (as Session._emit)
            log.exception("run store could not write %s", event.kind)


def open_store(store: Any):
    """``"default"``: the run store of WORKBENCH_HOME; None: no store; a RunStore or a path: that one."""
    if store is None:
        return None
    from workbench.store.runs import RunStore

    if isinstance(store, RunStore):
        return store
    return RunStore() if store == DEFAULT_STORE else RunStore(store)


class PrivateTraining:
    """The DP step of a script's run and its record: what ``make_private`` returns and ``workbench.hf`` drives.

    ``backward(losses)`` per micro-batch (per-example losses, shape (b,)); ``step()`` once per logical step
    (noise once, divide by q N, then the optimizer when one was given); ``end()`` when training stops."""

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        config: RunConfig,
        dataset_size: int,
        optimizer: torch.optim.Optimizer | None = None,
        store: Any = DEFAULT_STORE,
        name: str | None = None,
        tokenizer: Any = None,
        task: str = "causal_lm",
        dataset: Any = None,
        dataset_name: str = "script",
        columns: dict[str, str] | None = None,
        chunks: int = 1,
        register: bool = True,
    ) -> None:
        """``register``: write the run to the store now (make_private); the Trainer registers at train().
        ``columns``: which of ``dataset``'s columns hold which roles (text, label, prompt, response, messages ...),
        where they are not the standard names, as a run config's ``columns``: the ledger names its rows' units by
        the records they make (``dataset_identity``)."""
        _check_supported(config)
        if config.max_grad_norm is None and config.is_private:
            raise ConfigError("a private run needs a clipping norm (max_grad_norm, e.g. 1.0).")
        self.model, self.optimizer, self.config, self.task = model, optimizer, config, task
        self.plan = make_plan(config, dataset_size=dataset_size)
        self.randomness = RunRandomness.for_config(config)
        self.hooks = PerExampleGrads(model)  # refuses trainable parameters the hooks do not cover, here
        self.hooks.enabled = True  # the hooks record only under grad mode: evaluation is left alone
        self.params = self.hooks.trainable_parameters()
        self.dp = DPGradient(
            self.params,
            max_grad_norm=config.max_grad_norm,
            noise_multiplier=self.plan.noise_multiplier,
            noise=self.randomness.noise(threads=self.config.noise_threads),
            clipping="flat",
        )
        self.batch_sampler = PoissonBatchSampler(
            population=self.plan.population,
            sample_rate=self.plan.sample_rate,
            steps=self.plan.steps,
            rng=self.randomness.sampling_rng(),
            chunks=chunks,
        )
        self.physical_batch_size = config.physical_batch_size
        self.steps_done = 0
        self.store = open_store(store)
        self.name = name or config.name
        self.run_id: str | None = None
        self.recorder: RunRecorder | None = None
        identity = (
            dataset_identity(dataset, dataset_size, columns=columns, privacy_unit=config.privacy_unit)
            if dataset is not None
            else None
        )
        self.data = ScriptData(
            config=config,
            plan=self.plan,
            model=model,
            tokenizer=tokenizer,
            task=task,
            model_name=config.model,
            train=_Named(dataset_name),
            dataset_fingerprint=identity.fingerprint if identity else None,
            dataset_name=dataset_name,
            dataset_units=identity.units if identity else None,
            dataset_note=identity.note if identity else None,
        )
        self._open = False
        self._losses: list[torch.Tensor] = []
        self._tokens = 0
        self._t0 = 0.0
        self.started = time.time()
        self.ended: str | None = None
        if register:
            self.register()

    # -- the run in the store -----------------------------------------------------------------------------
    def register(self, *, run_id: str | None = None, resumed: bool = False) -> None:
        """Create the run in the store and emit RunStarted; ``resumed``: continue ``run_id`` (no new row)."""
        from workbench.store.runs import new_run_id

        self.run_id = run_id or self.run_id or new_run_id()
        if self.store is None:
            return
        self.recorder = RunRecorder(self.store, run_id=self.run_id, name=self.name)
        if resumed:
            self.store.set_status(self.run_id, "running")
            return
        self.recorder.create(self.config, self.randomness)
        self.emit(self.started_event())

    def emit(self, event: Event) -> None:
        if self.recorder is not None:
            self.recorder.emit(event)

    def started_event(self) -> RunStarted:
        from workbench.engine.trainer import started_event

        return started_event(
            run_id=self.run_id,
            config=self.config,
            plan=self.plan,
            dp=self.dp,
            params=self.params,
            device=next(p.device for ps in self.params.values() for _, p in ps),
            model_name=self.config.model,
            seeded=self.randomness.is_seeded,
            task=self.task,
        )

    # -- one logical step -----------------------------------------------------------------------------
    def micro_batches(self, indices: Iterable[int]) -> list[np.ndarray]:
        """A logical batch as physical micro-batches of at most ``physical_batch_size`` units."""
        return micro_batches(np.asarray(list(indices), dtype=np.int64), self.physical_batch_size)

    def loader(self, dataset: Any, collate_fn: Callable[[list], Any]) -> Iterator[list[Any]]:
        """Per logical step, its collated micro-batches (an empty list for an empty Poisson batch)."""
        for indices in self.batch_sampler:
            yield [collate_fn([dataset[int(i)] for i in micro]) for micro in self.micro_batches(indices)]

    def _begin(self) -> None:
        self.dp.start()
        self._open, self._losses, self._tokens, self._t0 = True, [], 0, time.perf_counter()

    def backward(self, losses: torch.Tensor, *, tokens: int = 0) -> None:
        """One micro-batch: ``losses`` holds one loss per example (shape (b,)); per-example gradients through the
        hooks, each clipped to C and added to the step's sum. The autograd sum in ``p.grad`` is discarded."""
        if not self._open:
            self._begin()
        if losses.dim() != 1:
            raise ValueError(
                f"backward() needs one loss per example, shape (batch,); got shape {tuple(losses.shape)}. Compute "
                "the loss with reduction='none' and average each example's tokens (workbench.engine.losses)."
            )
        if len(losses) == 0:
            return
        self.hooks.reset()
        losses.sum().backward()
        try:
            self.dp.add_microbatch(self.hooks.grads)
        except RuntimeError as err:
            if "no per-example gradient" not in str(err):
                raise
            missing = [m for m in self.params if m not in self.hooks.grads]
            raise UnsupportedModelError(
                f"trainable parameters received no per-example gradient: {missing[:3]}. Each trainable module must "
                "be on the loss's path in this forward pass (a LoRA module the model does not call, a wrapper that "
                "hides it from the hooks, or gradient checkpointing); freeze what should not train."
            ) from None
        for ps in self.params.values():  # autograd's unclipped sum must never be used
            for _, p in ps:
                p.grad = None
        self._losses.append(losses.detach().float().cpu())
        self._tokens += int(tokens)

    def finish(self, *, learning_rate: float | None = None) -> StepMetrics:
        """End the logical step without the optimizer: the noisy average is in ``p.grad`` (the Trainer steps)."""
        if not self._open:
            self._begin()  # an empty Poisson batch: noise only, a real step
        stats = self.dp.finish(expected_batch_size=self.plan.expected_batch_size)
        self._open = False
        self.steps_done += 1
        event = self.step_event(stats, learning_rate=learning_rate)
        self.emit(event)
        return event

    def step(self) -> StepMetrics:
        """End the logical step: noise once, divide by q N, ``optimizer.step()`` and ``zero_grad``."""
        event = self.finish()
        if self.optimizer is not None:
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        return event

    def step_event(self, stats: StepStats, *, learning_rate: float | None = None) -> StepMetrics:
        from workbench.engine.trainer import norm_telemetry

        plan, t = self.plan, self.steps_done
        seconds = time.perf_counter() - self._t0
        if learning_rate is None and self.optimizer is not None:
            learning_rate = float(self.optimizer.param_groups[0]["lr"])
        a = self.dp.allocation
        return StepMetrics(
            run_id=self.run_id or "",
            step=t,
            loss=float(torch.cat(self._losses).mean()) if self._losses else math.nan,
            learning_rate=learning_rate or 0.0,
            batch_size=stats.batch_size,
            epsilon=plan.epsilon_at(t),
            clipped_fraction=stats.clipped_fraction,
            module_grad_norm=stats.module_grad_norm,
            module_noise_std=stats.module_noise_std,
            step_time=seconds,
            tokens_per_second=self._tokens / seconds if seconds > 0 else 0.0,
            tokens=self._tokens,
            module_clip_norm=dict(a.clip),
            module_noise_multiplier=dict(a.sigma),
            effective_noise_multiplier=plan.noise_multiplier if plan.private else 0.0,
            nonfinite=stats.nonfinite,
            **norm_telemetry(stats.norms, plan.max_grad_norm),
        )

    def evaluation(self, *, val_loss: float, accuracy: float | None = None) -> None:
        """An evaluation at the current step (the Train tab's validation panel)."""
        ppl = math.exp(val_loss) if val_loss < 50 else math.inf
        event = EvalMetrics(
            run_id=self.run_id or "",
            step=self.steps_done,
            val_loss=val_loss,
            perplexity=ppl,
            accuracy=accuracy,
            generations=[],
        )
        self.emit(event)

    # -- the privacy state --------------------------------------------------------------------------------
    @property
    def budget_spent(self) -> bool:
        """Whether another step would exceed the target epsilon (or the planned steps are done)."""
        return self.steps_done >= self.plan.steps or not self.plan.budget_allows(self.steps_done + 1)

    @property
    def epsilon(self) -> float:
        """The epsilon spent by the steps done (0 before the first)."""
        return self.plan.epsilon_at(self.steps_done) if self.steps_done else 0.0

    def claimed_epsilon(self, *, stopped: bool) -> float:
        return self.plan.claimed_epsilon(self.steps_done, stopped=stopped)

    def report(self, *, stopped: bool = False) -> dict:
        from workbench.engine.report import privacy_report

        return privacy_report(
            self.data,
            steps_done=self.steps_done,
            epsilon=self.claimed_epsilon(stopped=stopped),
            stopped=stopped,
            seeded=self.randomness.is_seeded,
            extra={"integration": "workbench.make_private / workbench.hf"},
        )

    def write_report(self, out_dir: str | Path, *, stopped: bool = False) -> dict:
        """privacy_report.json and the model card's DP section in ``out_dir`` (a saved model or adapter), as
        ``workbench train`` writes them (engine/report.py)."""
        from workbench.engine.report import model_card_section, place_card_section

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        report = self.report(stopped=stopped)
        (out / "privacy_report.json").write_text(json.dumps(report, indent=2))
        card = out / "README.md"
        existing = card.read_text() if card.exists() else f"# Model trained on {report['base_model']}\n"
        card.write_text(place_card_section(existing, model_card_section(report)))
        return report

    def state(self) -> dict:
        """What a checkpoint keeps (never the key, a stream's state or a local path): the run (its key and noise
        stream's position are in the store's folder of that run), the steps done, and the plan to check a resume
        against."""
        return {
            "run_id": self.run_id,
            "steps_done": self.steps_done,
            "noise_seed": self.randomness.noise_seed,
            "plan": {**self.plan.settings(), "max_grad_norm": self.plan.max_grad_norm},
        }

    def save_streams(self) -> str | None:
        """Write the noise stream's position after the steps done beside the run's key (mode 0600); returns its
        file name, or None without a store. The sampling stream needs none: it is re-drawn from the key."""
        if self.store is None or self.run_id is None:
            return None
        folder = self.store.run_dir(self.run_id) / STREAMS_DIR
        folder.mkdir(parents=True, exist_ok=True)
        os.chmod(folder, 0o700)
        name = f"noise-step-{self.steps_done}.json"
        path = folder / name
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(_jsonable_state(noise_state(self.dp.noise)), fh)
        return name

    def restore(self, state: dict, *, streams: str | None) -> None:
        """Continue the run ``state`` describes (a checkpoint's): the same key, the sampling stream re-drawn to the
        steps done, the noise stream from its saved position; a plan that differs is refused."""
        if state.get("plan") != self.state()["plan"]:
            raise ConfigError(
                f"the checkpoint's privacy plan {state.get('plan')} is not this run's {self.state()['plan']}: resume "
                "with the same privacy settings, dataset size and schedule (max_steps or epochs)."
            )
        run_id, k = state["run_id"], int(state["steps_done"])
        if state.get("noise_seed") is not None:
            self.randomness = RunRandomness.seeded(state["noise_seed"])
        else:
            if self.store is None or state.get("streams") is None:
                raise ConfigError(
                    "this checkpoint's run kept its secret key in a run store, and this trainer has none (store=None): "
                    "resume with the store the run was started with."
                )
            self.randomness = RunRandomness.load(self.store.run_dir(run_id), run_id=run_id)
        if streams is None or self.store is None:
            raise ConfigError(
                "the checkpoint does not say where its noise stream stands (it was saved without a run store): it "
                "cannot be resumed without restarting the noise, which would reuse noise already released."
            )
        noise = self.randomness.noise(threads=self.config.noise_threads)
        path = self.store.run_dir(run_id) / STREAMS_DIR / streams
        restore_noise(noise, _state_from_json(json.loads(path.read_text())))
        close = getattr(self.dp, "close", None)
        if close is not None:
            close()  # the fresh source's background thread, if it has one
        self.dp.noise = noise
        self.batch_sampler.rng = self.randomness.sampling_rng()
        self.batch_sampler.drawn = 0
        self.batch_sampler.fast_forward(k)
        self.steps_done = k
        self.run_id = run_id

    # -- the end ---------------------------------------------------------------------------------------
    def end(self, *, status: str | None = None, reason: str | None = None) -> dict:
        """Record the run's end: the ledger row, then RunEnded with the summary. ``status`` defaults to
        'finished' when the schedule or the budget is done, else 'stopped' (which claims the planned epsilon)."""
        if status is None:
            status = "finished" if self.budget_spent else "stopped"
        if reason is None:
            reason = (
                f"completed {self.steps_done} planned steps"
                if self.steps_done >= self.plan.steps
                else f"privacy budget spent after {self.steps_done} steps"
                if status == "finished"
                else f"stopped after step {self.steps_done} of {self.plan.steps}"
            )
        summary = self.summary(status)
        self.ended = status
        close = getattr(self.dp, "close", None)  # a noise source that draws ahead on a thread stops here
        if close is not None:
            close()
        if self.store is not None and self.run_id is not None:
            self._record_ledger(status)
            self.emit(RunEnded(run_id=self.run_id, status=status, reason=reason, summary={**summary, "reason": reason}))
        return summary

    def _record_ledger(self, status: str) -> None:
        if not self.steps_done:
            return
        try:
            from workbench.store.ledger import Ledger

            Ledger(self.store).record_run(
                run_id=self.run_id,
                name=self.name,
                prepared=self.data,
                steps=self.steps_done,
                seeded=self.randomness.is_seeded,
                stopped=status == "stopped",
            )
        except Exception:  # noqa: BLE001 - the ledger failing must not lose the run's end
            log.exception("the privacy ledger could not record run %s", self.run_id)

    def summary(self, status: str) -> dict:
        from workbench.engine.report import published_sizes

        plan, stopped = self.plan, status == "stopped"
        out = {
            "run_id": self.run_id,
            "status": status,
            "epsilon": self.claimed_epsilon(stopped=stopped),
            "steps": self.steps_done,
            **plan.settings(),
            "max_grad_norm": plan.max_grad_norm,
            "sampling": "poisson",
            "clipping": self.dp.clipping,
            "seeded_randomness": self.randomness.is_seeded,
            **published_sizes(self.data),
            "model": self.config.model,
            "data": self.config.data,
            "wall_time": time.time() - self.started,
            "integration": "script",
        }
        if self.randomness.is_seeded:
            out["randomness"] = SEEDED_LABEL
        if stopped and plan.private and self.steps_done:
            out["steps_done_epsilon"] = plan.epsilon_at(self.steps_done)
        return {k: ("inf" if isinstance(v, float) and math.isinf(v) else v) for k, v in out.items()}


@dataclass
class _Named:
    name: str
    label_names: tuple = field(default=())


def noise_state(noise: Any) -> dict:
    """Where a noise source stands (its own ``state()`` where it has one; a numpy stream's bit generator)."""
    return noise.state() if hasattr(noise, "state") else {"bit_generator": noise.rng.bit_generator.state}


def restore_noise(noise: Any, state: dict) -> None:
    if hasattr(noise, "restore"):
        noise.restore(state)
    else:
        noise.rng.bit_generator.state = state["bit_generator"]


def _jsonable_state(state: Any) -> Any:
    if isinstance(state, dict):
        return {k: _jsonable_state(v) for k, v in state.items()}
    if isinstance(state, np.ndarray):
        return {"__ndarray__": state.tolist(), "dtype": str(state.dtype)}
    if isinstance(state, np.generic):
        return state.item()
    return state


def _state_from_json(state: Any) -> Any:
    if isinstance(state, dict) and "__ndarray__" in state:
        return np.array(state["__ndarray__"], dtype=state["dtype"])
    if isinstance(state, dict):
        return {k: _state_from_json(v) for k, v in state.items()}
    return state


def model_name_of(model: torch.nn.Module) -> str:
    """The name a script's model goes by in the run store and the report (its hub id or folder's last part)."""
    base = getattr(model, "base_model", model)
    for m in (model, base, getattr(base, "model", None)):
        name = getattr(getattr(m, "config", None), "_name_or_path", None) or getattr(m, "name_or_path", None)
        if name:
            return str(name)
    return type(model).__name__


def make_private(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None,
    *,
    dataset_size: int | None = None,
    public_dataset_size: int | None = None,
    expected_batch_size: int,
    physical_batch_size: int | None = None,
    epochs: float | None = None,
    max_steps: int | None = None,
    target_epsilon: float | None = None,
    noise_multiplier: float | None = None,
    delta: float | None = None,
    max_grad_norm: float = 1.0,
    accountant: str = "pld",
    neighboring: str = "auto",
    noise_seed: int | None = None,
    task: str = "causal_lm",
    dataset: Any = None,
    columns: dict[str, str] | None = None,
    data_name: str = "script",
    name: str | None = None,
    store: Any = DEFAULT_STORE,
) -> PrivateTraining:
    """DP-SGD for a hand-written PyTorch loop: the Poisson batch sampler (``.batch_sampler``) and the DP step
    (``.backward(losses)`` per micro-batch, ``.step()`` once per logical step, ``.end()``), on the engine of
    ``workbench train``. See the module docstring for the loop.

    ``dataset_size``: the number of training examples (its length when ``dataset`` is given); under
    neighboring=add_remove every published number comes from ``public_dataset_size`` instead. ``dataset``: the
    training set (optional, its rows as the loop reads them): the ledger counts the run under the units its rows
    are, so a run on the rows of a file shares one total with `workbench train` runs on that file
    (``dataset_identity``); ``columns`` maps roles to its column names where they are not the standard ones
    (e.g. ``{"text": "sentence"}``). ``noise_seed``: the labelled seeded mode (reproducible, no DP guarantee).
    ``store=None``: write nothing to the run store."""
    if dataset_size is None:
        if dataset is None or not hasattr(dataset, "__len__"):
            raise ConfigError("make_private needs dataset_size (or a dataset with a length): q = batch / size.")
        dataset_size = len(dataset)
    if target_epsilon is None and noise_multiplier is None:
        target_epsilon = 8.0
    config = privacy_config(
        name=name,
        model=model_name_of(model),
        data=data_name,
        batch_size=expected_batch_size,
        physical_batch_size=physical_batch_size or expected_batch_size,
        epochs=epochs,
        max_steps=max_steps,
        target_epsilon=target_epsilon,
        noise_multiplier=noise_multiplier,
        delta=delta,
        max_grad_norm=max_grad_norm,
        accountant=accountant,
        neighboring=neighboring,
        public_dataset_size=public_dataset_size,
        noise_seed=noise_seed,
        task=task,
        columns=columns,
        learning_rate=optimizer.param_groups[0]["lr"] if optimizer is not None else None,
        generate_max_new_tokens=0,
    )
    return PrivateTraining(
        model,
        config=config,
        dataset_size=dataset_size,
        optimizer=optimizer,
        store=store,
        name=name,
        task=task,
        dataset=dataset,
        dataset_name=data_name,
        columns=columns,
    )
