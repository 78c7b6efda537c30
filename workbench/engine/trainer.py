"""The training loop: Poisson-sampled logical steps of DP-SGD on LoRA adapters, with events.

One logical step (``Trainer.train_step``, read top to bottom):
    indices = sampler.draw()                           # Poisson at rate q (data-parallel: this rank's shard); may be 0
    for micro in micro_batches(indices, P):            # memory bounded by P whatever q is
        losses = per_example_loss(model, micro)        # (b,)
        losses.sum().backward()                        # hooks record per-example grads
        dp.add_microbatch(hooks.grads)                 # clip each example to C, add to sum
    audit.add_canaries(dp, ...)                        # audit runs only: the sampled canaries, as extra units
    dp.finish(expected_batch_size=q*N)                 # sum over ranks, + N(0, sigma^2 C^2) once, / qN; the release
                                                       # listeners (allocation, audit) read what was released
    optimizer.step(); scheduler.step()
    collective.gather_step(...)                        # every rank's norms, losses and tokens, for the step event

Its parts are given at construction: the collective (collective.LocalCollective, or a rank of a data-parallel
group, distributed.Distributed: the same interface, so no line here asks how many processes run), the DP step
(dp_step.DPGradient) with its release listeners (allocation.NoiseAllocator, the audit), and the audit's factory
(workbench/audit, which the engine never imports).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from pathlib import Path
from typing import Callable, Protocol

import numpy as np
import torch

from workbench.config import RunConfig
from workbench.engine import data as data_mod
from workbench.engine import distributed
from workbench.engine.allocation import NoiseAllocator, unclipped_fraction
from workbench.engine.baseline import baseline_key, untuned_metrics
from workbench.engine.collective import LocalCollective
from workbench.engine.dp_step import DPGradient, ParamTable, Release, StepStats
from workbench.engine.grad_sample import PerExampleGrads
from workbench.engine.losses import per_example_loss
from workbench.engine.prefix_cache import MIB, prefix_cache_for
from workbench.engine.prepare import Prepared, load_splits, prepare  # noqa: F401 (re-exported for callers)
from workbench.engine.randomness import RunRandomness
from workbench.engine.report import save_adapter
from workbench.engine.validation import Validation, summary_metrics
from workbench.events import GRAD_NORM_BIN_EDGES, GRAD_NORM_LOG_BIN_EDGES, EvalMetrics, Event, RunStarted, StepMetrics
from workbench.privacy.checks import clipping_activity, preflight

CLIPPING_CHECK_STEPS = 3  # the per-example norms of this many first steps feed the "clipping never active" check

log = logging.getLogger(__name__)


def log_norm_histogram(norms_over_c: np.ndarray) -> list[int]:
    """Counts of per-unit norm / C over GRAD_NORM_LOG_BIN_EDGES: [below 0.01 C, the 16 bins [low, high), from 100 C
    up]; a NaN counts in the overflow bin (events.py)."""
    x = np.nan_to_num(np.asarray(norms_over_c, dtype=float), nan=np.inf)
    index = np.searchsorted(np.asarray(GRAD_NORM_LOG_BIN_EDGES), x, side="right")
    return np.bincount(index, minlength=len(GRAD_NORM_LOG_BIN_EDGES) + 1).tolist()


def log_norm_telemetry(norms: np.ndarray, clip: float | None) -> dict:
    """StepMetrics' log histogram and median of the per-unit norms, in units of C (of 1 without a clipping norm);
    a non-finite norm counts as above every other."""
    scaled = np.nan_to_num(np.asarray(norms, dtype=float) / (clip or 1.0), nan=np.inf)
    return {
        "grad_norm_log_hist": log_norm_histogram(scaled),
        "grad_norm_median": float(np.median(scaled)) if len(scaled) else None,
    }


def norm_telemetry(norms: torch.Tensor, clip: float | None) -> dict:
    """Every StepMetrics field of the per-unit norms (telemetry from raw data, never exported): the linear and
    log histograms in units of C, the largest finite norm and the median. One place for the trainer and for
    scripts that drive the DP step themselves (workbench/private.py)."""
    scaled = np.nan_to_num(norms.numpy() / (clip or 1.0), nan=1e30, posinf=1e30)  # non-finite -> overflow bin
    hist = np.histogram(scaled, bins=np.array(GRAD_NORM_BIN_EDGES[:-1] + (1e31,)))[0]
    finite = norms[torch.isfinite(norms)]
    return {
        "grad_norm_hist": [int(c) for c in hist],
        "grad_norm_max": float(finite.max()) if len(finite) else 0.0,
        **log_norm_telemetry(norms.numpy(), clip),
    }


def started_event(
    *,
    run_id: str,
    config: RunConfig,
    plan,
    dp,
    params,
    device,
    model_name: str,
    seeded: bool,
    task: str | None,
    prefix_cache: dict | None = None,
) -> RunStarted:
    """The RunStarted event of a run: its public settings, the planned epsilon curve and the pre-flight check.
    One builder for the trainer and for scripts that drive the DP step themselves (workbench/private.py).
    ``prefix_cache``: the cached frozen prefix's header (engine/prefix_cache.py), or why it is off."""
    return RunStarted(
        run_id=run_id,
        config=config.to_dict(),
        **plan.settings(),
        dataset_size=plan.dataset_size,
        num_users=plan.num_users,
        planned_epsilon=plan.curve(),
        modules=list(dp.groups),
        trainable_parameters=sum(prm.numel() for ps in params.values() for _, prm in ps),
        device=str(device),
        model_name=model_name,
        seeded_randomness=seeded,
        checks=[f.to_dict() for f in preflight(config, plan, task=task)],
        module_dims=dp.dims(),
        prefix_cache=prefix_cache or {},
    )


class StopRequested(Exception):
    """Raised inside a step when a stop was asked for; the partial step is discarded (nothing released)."""


def block_pre_hooks(model: torch.nn.Module, check: Callable[[], None]) -> list:
    """``check`` run before every block of the model's layer stacks (each ``nn.ModuleList``'s children: a decoder's
    layers, an encoder's), so that a Stop can end a forward pass within one block instead of one micro-batch (seconds
    for the default model on a CPU): ``check`` raises to stop. Returns the hooks' handles."""
    blocks = [child for module in model.modules() if isinstance(module, torch.nn.ModuleList) for child in module]
    return [block.register_forward_pre_hook(lambda _module, _args: check()) for block in blocks]


def make_optimizer(params, config: RunConfig, total_steps: int):
    if config.optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=config.learning_rate, momentum=config.momentum)
    else:
        opt = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    warm, kind = config.warmup_steps, config.lr_schedule

    def factor(step: int) -> float:  # step counts from 0
        if step < warm:
            return (step + 1) / warm
        if kind == "constant":
            return 1.0
        frac = (step - warm) / max(1, total_steps - warm)
        return max(0.0, 1.0 - frac) if kind == "linear" else 0.5 * (1 + math.cos(math.pi * min(1.0, frac)))

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


class StepAudit(Protocol):
    """The one-run audit as the trainer sees it (workbench/audit/run.py, ``RunAudit``): canaries added before the
    noise, a release listener of the DP step, the step event's fields and the summary's report."""

    def add_canaries(self, dp: DPGradient, backward: Callable[[list], object]) -> None: ...

    def released(self, dp: DPGradient, release: Release) -> None: ...

    def step_fields(self, step: int) -> dict[str, float]: ...

    def report(self, step: int, *, stopped: bool) -> dict: ...


class AuditFactory(Protocol):
    def __call__(self, prepared: Prepared, *, params: ParamTable, randomness, autocast: Callable) -> StepAudit: ...


class NoAudit:
    """A run without an audit (and every rank but 0 of an audited one: the canaries live on rank 0)."""

    def add_canaries(self, dp: DPGradient, backward: Callable[[list], object]) -> None:
        """No canaries."""

    def released(self, dp: DPGradient, release: Release) -> None:
        """Nothing to score."""

    def step_fields(self, step: int) -> dict[str, float]:
        return {}

    def report(self, step: int, *, stopped: bool) -> dict:
        return {}


class Trainer:
    """Runs one prepared job, emitting events; ``should_stop`` is polled within every step."""

    def __init__(
        self,
        prepared: Prepared,
        *,
        run_id: str,
        emit: Callable[[Event], None],
        should_stop: Callable[[], bool] = lambda: False,
        run_dir: Path,
        randomness: RunRandomness,
        collective: "distributed.Distributed | LocalCollective | None" = None,
        audit: AuditFactory | None = None,
        baseline_cache: Path | None = None,
    ) -> None:
        """``collective``: this process's rank in a data-parallel group (a Session hosting one passes its rank 0);
        default: the group this process was started in (``distributed.current``), or one process.
        ``audit``: builds the run's audit when the config asks for one (``workbench.audit.for_run``; a Session
        passes it); audits live on rank 0. ``baseline_cache``: the file of untuned validation metrics
        (engine/baseline.py; a Session passes the one under its store's home); None measures the baseline every
        run."""
        self.p = prepared
        self.run_id = run_id
        self.emit = emit
        self.should_stop = should_stop
        self.run_dir = run_dir
        cfg, plan = prepared.config, prepared.plan
        # Sampling and noise come from the run's key (secret unless noise_seed: randomness.py),
        # never from cfg.seed, which is public (it is in the exported config).
        self.randomness = randomness
        # This process's rank of a data-parallel group (engine/distributed.py), or LocalCollective: one process.
        self.collective = collective if collective is not None else distributed.current(cfg)
        self.collective.agree(None)  # every rank prepared, or every rank fails with the failing rank's message
        self.hooks = PerExampleGrads(prepared.model)
        # a Stop within a forward pass: before each block, the stop check of what runs now (_stoppable), if any
        self._stop_check: Callable[[], bool] | None = None
        self._block_hooks = block_pre_hooks(prepared.model, self._stop_in_forward)
        self.params = self.hooks.trainable_parameters()
        # The frozen layers before the first adapted one, cached per training example (engine/prefix_cache.py): a
        # step then runs the adapted layers and the head only. The DP mechanism is unchanged: the same sampling,
        # per-example gradients, clipping and noise. Built for the steps' mode (set_training_mode: train mode only
        # for a non-private run); None, with the reason, where it does not apply (prefix_cache=on refuses instead).
        self.prefix_cache, self.prefix_cache_off = prefix_cache_for(
            prepared.model,
            mode=cfg.prefix_cache,
            memory_mb=cfg.prefix_cache_mb,
            training=not plan.private,
            lengths=[len(ex.input_ids) for ex in prepared.train_tok],
            spill_dir=run_dir,
            autocast=self._autocast,
        )
        flat = [p for ps in self.params.values() for _, p in ps]
        self.optimizer, self.scheduler = make_optimizer(flat, cfg, plan.steps)
        with torch.no_grad():  # the same starting weights on every rank
            self.collective.from_main_([prm.data for prm in flat], what="the broadcast of the starting weights")
        self.private_path = plan.private or cfg.max_grad_norm is not None
        clipping = cfg.resolved_clipping if cfg.max_grad_norm is not None else "flat"
        self.allocator = (
            NoiseAllocator(
                cfg, self.params, noise_multiplier=plan.noise_multiplier, expected_batch_size=plan.expected_batch_size
            )
            if clipping == "per_layer" and plan.private
            else None
        )
        self.audit = self._make_audit(audit)
        self.dp = DPGradient(
            self.params,
            max_grad_norm=cfg.max_grad_norm,
            noise_multiplier=plan.noise_multiplier,
            noise=randomness.noise(threads=cfg.noise_threads),
            clipping=clipping,
            counts=cfg.clip_allocation == "quantile" and plan.private,
            allocation=self.allocator.allocation if self.allocator is not None else None,
            collective=self.collective,  # finish() sums over the ranks; the noise is added once, on rank 0
            listeners=[self.audit] + ([self.allocator] if self.allocator is not None else []),
        )
        self.stopped_by_request = False
        self.users = self._users() if plan.privacy_unit == "user" and plan.user_sampling == "uls" else None
        self.sampler = self.collective.sampler(
            randomness,
            units=prepared.train_tok,
            by_user=self.users is not None,
            sample_rate=plan.sample_rate,
            seed=cfg.seed,
        )
        # the validation examples and how every evaluation scores them (engine/validation.py: what they are to epsilon)
        self.validation = Validation(prepared, autocast=self._autocast, prefix_cache=self._validation_prefix_cache())
        self.gold = self.validation.gold
        self.step = 0
        self.last_eval: dict = {}  # the latest evaluation's numbers (summary_metrics), at step last_eval_step
        self.last_eval_step: int | None = None
        self.baseline_cache = baseline_cache
        self.baseline: dict | None = None  # the untuned model's metrics (step 0), with "cached"
        self._early_norms: list[torch.Tensor] = []

    def close(self) -> None:
        """Detach this trainer from its model (the per-example and Stop hooks) and end the noise thread: a caller that
        builds several trainers on one model in turn (workbench/federated: one per client and round) calls it."""
        self.hooks.remove()
        for handle in self._block_hooks:
            handle.remove()
        self._block_hooks = []
        self.dp.close()
        self.close_prefix_cache()

    def _make_audit(self, factory: AuditFactory | None) -> StepAudit:
        """The run's audit on rank 0 when the config asks for one (its canary stream comes from rank 0's key, and
        its units are added once), NoAudit otherwise."""
        kind = self.p.config.audit
        if kind == "none" or not self.collective.is_main:
            return NoAudit()
        if factory is None:
            raise ValueError(f"audit={kind} needs its audit: pass audit=workbench.audit.for_run to the Trainer")
        return factory(self.p, params=self.params, randomness=self.randomness, autocast=self._autocast)

    # -- the loop ----------------------------------------------------------------------------------
    def run(self) -> tuple[str, str]:
        """Train until the planned steps, the budget, or a stop. Returns (status, reason)."""
        plan, cfg = self.p.plan, self.p.config
        main = self.collective.is_main  # only rank 0 emits events (and so writes the store) and evaluates
        if main:
            self.emit(self._started_event())
            baseline = self.baseline_evaluation(should_stop=self.should_stop) if cfg.baseline_eval else None
            if baseline is not None:
                self.emit(baseline)
        self.set_training_mode()  # explicitly: a cached baseline skips the evaluation that used to leave it
        every = cfg.eval_every or max(1, plan.steps // 5)
        status, reason = "finished", f"completed {plan.steps} planned steps"
        try:
            for step in range(1, plan.steps + 1):
                if self.collective.stop_requested(self.should_stop()):  # any rank's request, on every rank
                    raise StopRequested
                if not plan.budget_allows(step):
                    reason = f"privacy budget spent: another step would exceed epsilon={plan.target_epsilon:g}"
                    break
                event = self.train_step(step)
                if main:
                    self.emit(event)
                if main and step % every == 0 and step != plan.steps:
                    # None: a Stop abandoned it; the next stop check, on every rank, ends the run (data-parallel:
                    # the other ranks wait there, so rank 0 leaves only through it)
                    evaluation = self.evaluation(should_stop=self.should_stop)
                    if evaluation is not None:
                        self.emit(evaluation)
        except StopRequested:
            status, reason = "stopped", f"stopped by request after step {self.step}"
            self.stopped_by_request = True  # an audit then reports an interim reading, not a bound
        finally:
            self.dp.close()  # the noise source's thread, making a step ahead (engine/noise.py), ends with the loop
            self.close_prefix_cache()  # its memory and spill file (private data) go with the loop, also on a Stop
        # A run stopped by hand skips its last evaluation (tens of seconds on a CPU: a Stop must land in seconds);
        # `workbench runs evaluate` or the Runs tab's Evaluate measures the stored adapter afterwards on request
        # (engine/validation.py, evaluate_adapter). A Stop during a finished run's last evaluation abandons it too.
        if main and status == "finished":
            evaluation = self.evaluation(should_stop=self.should_stop)
            if evaluation is None:
                reason += "; Stop skipped the last evaluation"
            else:
                self.emit(evaluation)
        return status, reason

    def set_training_mode(self) -> None:
        """The model's mode for every step, whatever ran before (a measured or a cached baseline, an evaluation):
        a private run trains in eval mode, without dropout (its masks would come from the public, seeded generator
        in batch order, so one unit's clipped gradient would depend on which others were sampled; lora_dropout > 0
        is refused by the config); a non-private run trains with the model's dropout."""
        self.p.model.train(not self.p.plan.private)

    def _stop_within_step(self) -> bool:
        # Data-parallel: a rank leaving mid-step would leave the others waiting in the all-reduce, so a stop
        # takes effect at the next step's stop check (collective.stop_requested), within one step.
        return self.collective.stops_within_step and self.should_stop()

    @contextlib.contextmanager
    def _stoppable(self, check: Callable[[], bool] | None):
        """While the block runs, a forward pass of the model raises StopRequested at its next layer once ``check``
        says yes (block_pre_hooks)."""
        self._stop_check = check
        try:
            yield
        finally:
            self._stop_check = None

    def _stop_in_forward(self) -> None:
        if self._stop_check is not None and self._stop_check():
            raise StopRequested

    def train_step(self, step: int) -> StepMetrics:
        """One logical step of DP-SGD (the module docstring), and its event."""
        t0 = time.perf_counter()
        indices, owners = self._sample()
        self.dp.start()
        self.hooks.enabled = self.private_path
        with self._stoppable(self._stop_within_step):  # a Stop ends the forward pass under way at its next layer
            losses, tokens = self._backward([self.p.train_tok[i] for i in indices], owners, indices=indices)
            self.audit.add_canaries(self.dp, self._backward_canaries)  # audit runs: they join before the noise
        allocation = self.dp.allocation  # this step's C_l and sigma_l (the allocation policy sets the next)
        stats = self._finish_gradient()
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step = step
        stats, losses, tokens = self.collective.gather_step(stats, losses, tokens)  # every rank's telemetry
        return self._step_event(step, stats, losses, tokens, time.perf_counter() - t0, allocation)

    def _backward(
        self,
        examples: list,
        owners: np.ndarray | None = None,
        *,
        canary: bool = False,
        indices: np.ndarray | None = None,
    ) -> tuple[list[torch.Tensor], int]:
        """Per-example gradients of ``examples`` in micro-batches of at most P (memory bounded whatever q is), each
        unit clipped and added to the DP sum (``owners``: whose each example is, under ULS; ``canary``: audit units,
        left out of the telemetry); the non-private baseline backpropagates the same objective with ordinary
        autograd. ``indices``: the examples' places in the training split, for the cached prefix (None: not
        training examples, the whole model runs). Returns the per-example losses and the tokens."""
        p = self.p
        pbs = p.config.physical_batch_size
        losses, tokens = [], 0
        for start in range(0, len(examples), pbs):
            if self._stop_within_step():
                raise StopRequested
            batch = self._batch(examples[start : start + pbs])
            tokens += int(batch["attention_mask"].sum())
            self.hooks.reset()
            rows = None if indices is None else indices[start : start + pbs]
            with self._autocast(), self._from_prefix_cache(rows, batch):
                loss, _ = per_example_loss(p.model, batch, task=p.task, targets_only=True)  # (b,): the head on targets
            if self.private_path:
                loss.sum().backward()
                part = None if owners is None else owners[start : start + pbs]
                self.dp.add_microbatch(self.hooks.grads, part, canary=canary)
                self._drop_grads()
            else:  # the non-private baseline: ordinary autograd, same objective
                (loss.sum() / p.plan.expected_batch_size).backward()
            losses.append(loss.detach().float().cpu())
        return losses, tokens

    def _from_prefix_cache(self, rows: np.ndarray | None, batch: dict[str, torch.Tensor]):
        """The model runs from its first adapted layer on, fed the cached prefix of the training examples ``rows``
        (engine/prefix_cache.py; their missing states computed first), or whole when there is no cache or no rows."""
        if self.prefix_cache is None or rows is None:
            return contextlib.nullcontext()
        return self.prefix_cache.substituted(self.p.model, rows, batch)

    def _validation_prefix_cache(self):
        """The evaluated validation examples' frozen prefix, kept between the run's evaluations (they run in eval
        mode: no dropout, so it applies wherever the architecture does), in memory only, within what the training
        split's cache leaves of prefix_cache_mb (beyond it: recomputed); None with prefix_cache=off."""
        cfg = self.p.config
        if cfg.prefix_cache == "off":
            return None
        left = cfg.prefix_cache_mb
        if self.prefix_cache is not None:
            left = max(0, left - math.ceil(self.prefix_cache.full_bytes / MIB))
        examples = self.p.val_tok[: cfg.eval_max_examples]
        cache, _ = prefix_cache_for(
            self.p.model,
            mode="auto",
            memory_mb=left,
            training=False,
            lengths=[len(ex.input_ids) for ex in examples],
            spill_dir=None,
            autocast=self._autocast,
        )
        return cache

    def prefix_cache_report(self) -> dict:
        """{"prefix_cache": what the cached frozen prefix did (layers, size, build time), or why it was off}: the
        summary's. Counts of the sampled examples: telemetry, left out of an export (store/export.py)."""
        if self.prefix_cache is None:
            return {"prefix_cache": {"off": self.prefix_cache_off}}
        return {"prefix_cache": self.prefix_cache.report()}

    def close_prefix_cache(self) -> None:
        """Free the cached prefix: its memory and its spill file (the report keeps its numbers)."""
        if self.prefix_cache is not None:
            self.prefix_cache.close()

    def _backward_canaries(self, examples: list) -> None:
        """The audit's canary examples (input canaries): clipped and summed as extra units, out of the telemetry."""
        self._backward(examples, canary=True)

    def _sample(self) -> tuple[np.ndarray, np.ndarray | None]:
        """Poisson-sample examples, or (ULS) users and then all of each sampled user's examples. The sampler draws
        over every unit, or (data-parallel) over this rank's shard (collective.sampler)."""
        if self.users is None:
            return self.sampler.draw(), None
        chosen = self.sampler.draw()
        idx = [self.users[u] for u in chosen]
        if not idx:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        owners = np.concatenate([np.full(len(ix), u) for u, ix in zip(chosen, idx)])
        return np.concatenate(idx), owners

    def _users(self) -> list[np.ndarray]:
        by_user: dict[str, list[int]] = {}
        for i, ex in enumerate(self.p.train_tok):
            by_user.setdefault(ex.user_id, []).append(i)
        return [np.array(by_user[u]) for u in sorted(by_user)]

    def _finish_gradient(self) -> StepStats:
        """The DP step's release (dp_step.DPGradient.finish), or the non-private baseline's gradients summed over the
        ranks (each already / q N) with their per-block norms."""
        plan = self.p.plan
        if self.private_path:
            return self.dp.finish(expected_batch_size=plan.expected_batch_size)
        self.collective.sum_grads_([prm for ps in self.params.values() for _, prm in ps])
        norms = {}
        for g, ms in self.dp.groups.items():
            norms[g] = math.sqrt(
                sum(float(p.grad.pow(2).sum()) for m in ms for _, p in self.params[m] if p.grad is not None)
            )
        return StepStats(0, torch.zeros(0), 0.0, 0, norms, {g: 0.0 for g in norms}, {})

    def evaluation(self, *, generate: bool = True, should_stop: Callable[[], bool] | None = None) -> EvalMetrics | None:
        """Validation loss and accuracy now, and sample generations unless ``generate`` is False; None when
        ``should_stop`` said yes during it (checked between two batches or prompts, engine/validation.py, and before
        each layer of a forward pass): a Stop waits for one layer, not for the evaluation. Sets ``last_eval`` (the
        summary's)."""
        try:
            with self._stoppable(should_stop):
                evaluation = self.validation.evaluation(
                    run_id=self.run_id, step=self.step, generate=generate, should_stop=should_stop
                )
        except StopRequested:
            return None
        if evaluation is not None:
            self.last_eval, self.last_eval_step = summary_metrics(evaluation), evaluation.step
        return evaluation

    def majority(self) -> dict:
        """The validation labels' majority class and its share (Validation.majority); {} without labels."""
        return self.validation.majority()

    def baseline_evaluation(self, *, should_stop: Callable[[], bool] | None = None) -> EvalMetrics | None:
        """Step 0: the untuned model on the run's validation examples (loss and accuracy, no generations), read from
        the cache when this model, data and evaluation were measured before (engine/baseline.py); None without
        validation examples, or when ``should_stop`` said yes while it was measured (then nothing is cached). Sets
        ``self.baseline`` (the summary's)."""
        p = self.p
        examples = self.validation.examples
        if not examples:
            return None
        gold = self.gold[: len(examples)]
        key = baseline_key(
            model_name=p.model_name,
            model=p.model,
            task=p.task,
            examples=examples,
            gold=gold,
            choices=self.validation.choices,
            device=p.device.type,
        )
        about = {"model": p.model_name, "data": p.config.data, "examples": len(examples)}

        def measure() -> dict:
            measured = self.validation.metrics(examples, should_stop=should_stop)
            if measured is None:
                raise StopRequested
            return measured

        try:
            with self._stoppable(should_stop):
                metrics, cached = untuned_metrics(key, measure, cache=self.baseline_cache, about=about)
        except StopRequested:  # nothing cached; the loop's first stop check ends the run
            return None
        self.baseline = {**metrics, "cached": cached, **self.majority()}
        values = {k: (math.nan if metrics[k] is None else metrics[k]) for k in ("val_loss", "perplexity")}
        return EvalMetrics(
            run_id=self.run_id, step=0, accuracy=metrics["accuracy"], generations=[], **values, **self.majority()
        )

    def save(self, *, stopped: bool = False) -> Path:
        cfg = self.p.config
        out = Path(cfg.output_dir) if cfg.output_dir else self.run_dir / "adapter"
        save_adapter(
            self.p,
            out_dir=out,
            steps_done=self.step,
            epsilon=self.p.plan.claimed_epsilon(self.step, stopped=stopped),  # stopped by hand: the planned one
            stopped=stopped,
            seeded=self.randomness.is_seeded,
            extra={**self.allocation_report(), **self.audit_report()},
        )
        return out

    # -- helpers -----------------------------------------------------------------------------------
    def _batch(self, examples) -> dict[str, torch.Tensor]:
        batch = data_mod.collate(examples, pad_id=self.p.tokenizer.pad_token_id)
        return {k: v.to(self.p.device, non_blocking=True) for k, v in batch.items()}

    def _drop_grads(self) -> None:
        # Autograd also writes the summed (unclipped) gradient into p.grad; it must never be used.
        for ps in self.params.values():
            for _, prm in ps:
                prm.grad = None

    def _autocast(self):
        if self.p.device.type == "cuda":
            # bf16 backbone; LoRA weights stay fp32 and the hooks compute per-example grads in fp32.
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _started_event(self) -> RunStarted:
        p = self.p
        return started_event(
            run_id=self.run_id,
            config=p.config,
            plan=p.plan,
            dp=self.dp,
            params=self.params,
            device=p.device,
            model_name=p.model_name,
            seeded=self.randomness.is_seeded,
            task=p.task,
            prefix_cache=self.prefix_cache.header()
            if self.prefix_cache is not None
            else {"off": self.prefix_cache_off},
        )

    def _step_event(self, step: int, stats: StepStats, losses, tokens: int, seconds: float, allocation) -> StepMetrics:
        plan = self.p.plan
        loss = float(torch.cat(losses).mean()) if losses else math.nan
        return StepMetrics(
            run_id=self.run_id,
            step=step,
            loss=loss,
            learning_rate=float(self.scheduler.get_last_lr()[0]),
            batch_size=sum(len(x) for x in losses),
            epsilon=plan.epsilon_at(step),
            clipped_fraction=stats.clipped_fraction,
            module_grad_norm=stats.module_grad_norm,
            module_noise_std=stats.module_noise_std,
            step_time=seconds,
            tokens_per_second=tokens / seconds if seconds > 0 else 0.0,
            tokens=tokens,
            module_clip_norm=dict(allocation.clip) if self.private_path else {},
            module_noise_multiplier=dict(allocation.sigma) if self.private_path else {},
            effective_noise_multiplier=self._effective_sigma(allocation),
            nonfinite=stats.nonfinite,
            notices=self._notices(step, stats),
            **self.audit.step_fields(step),
            **norm_telemetry(stats.norms, plan.max_grad_norm),
            module_unclipped_fraction=unclipped_fraction(
                stats.released_counts, expected_batch_size=plan.expected_batch_size
            ),
        )

    def _notices(self, step: int, stats: StepStats) -> list[dict[str, str]]:
        """After the first CLIPPING_CHECK_STEPS steps: a warning when clipping never acted (telemetry:
        computed from raw norms, for the data owner only, privacy/checks.py)."""
        if not self.private_path or step > CLIPPING_CHECK_STEPS:
            return []
        self._early_norms.append(stats.norms)
        if step < min(CLIPPING_CHECK_STEPS, self.p.plan.steps):
            return []
        finding = clipping_activity(torch.cat(self._early_norms), self.p.config.max_grad_norm)
        return [finding.to_dict()] if finding is not None else []

    def audit_report(self) -> dict:
        """{"audit": the result so far} for audit runs (summary, privacy report), {} otherwise (workbench/audit)."""
        return self.audit.report(self.step, stopped=self.stopped_by_request)

    def allocation_report(self) -> dict:
        """The current per-module clip norms and noise multipliers, and the multiplier the accountant sees."""
        a = self.dp.allocation
        return {
            "effective_noise_multiplier": self._effective_sigma(a),
            "noise_allocation": {g: {"clip_norm": a.clip[g], "noise_multiplier": a.sigma[g]} for g in self.dp.groups},
            **(self.allocator.report() if self.allocator is not None else {}),
        }

    def _effective_sigma(self, allocation) -> float:
        if not self.p.plan.private:
            return 0.0
        if self.dp.clipping == "flat":
            return self.p.plan.noise_multiplier
        return allocation.effective_noise_multiplier
