"""The training loop: Poisson-sampled logical steps of DP-SGD on LoRA adapters, with events.

One logical step (read top to bottom):
    indices = poisson_sample(N, q)                     # batch size varies, may be 0
    for micro in micro_batches(indices, P):            # memory bounded by P whatever q is
        losses = per_example_loss(model, micro)        # (b,)
        losses.sum().backward()                        # hooks record per-example grads
        dp.add_microbatch(hooks.grads)                 # clip each example to C, add to sum
    canaries.add_to(dp)                                # audit runs only: sampled canary units, norm C
    (audit=input_canaries: sampled canary examples, clipped and added like the micro-batches above)
    dp.finish(expected_batch_size=q*N)                 # + N(0, sigma^2 C^2) once, / qN
    optimizer.step(); scheduler.step()
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from workbench.config import RunConfig
from workbench.engine import canaries as gradient_canaries
from workbench.engine import data as data_mod
from workbench.engine import distributed
from workbench.engine.allocation import (
    AdaptiveImportance,
    Allocation,
    clip_norms,
    manual_weights,
    quantile_update,
    solve_sigmas,
    split_budget,
    unclipped_fraction,
)
from workbench.engine.baseline import baseline_key, untuned_metrics
from workbench.engine.canaries import GradientCanaries
from workbench.engine.dp_step import DPGradient, StepStats
from workbench.engine.evaluate import Answers, answer_choices, evaluate, generate_samples, majority_class
from workbench.engine.exposure import demo_exposures
from workbench.engine.grad_sample import PerExampleGrads
from workbench.engine.input_canaries import InputCanaries, canary_count
from workbench.engine.losses import per_example_loss
from workbench.engine.prepare import Prepared, load_splits, prepare  # noqa: F401 (re-exported for callers)
from workbench.engine.randomness import RunRandomness
from workbench.engine.report import save_adapter
from workbench.engine.sampling import micro_batches, poisson_sample
from workbench.events import GRAD_NORM_BIN_EDGES, GRAD_NORM_LOG_BIN_EDGES, EvalMetrics, Event, RunStarted, StepMetrics
from workbench.privacy.audit import canary_epsilon
from workbench.privacy.checks import clipping_activity, preflight

CLIPPING_CHECK_STEPS = 3  # the per-example norms of this many first steps feed the "clipping never active" check
AUDIT_POINTS = 10  # audit runs: the running lower bound is computed about this many times, and at the last step

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
    *, run_id: str, config: RunConfig, plan, dp, params, device, model_name: str, seeded: bool, task: str | None
) -> RunStarted:
    """The RunStarted event of a run: its public settings, the planned epsilon curve and the pre-flight check.
    One builder for the trainer and for scripts that drive the DP step themselves (workbench/private.py)."""
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
    )


class StopRequested(Exception):
    """Raised inside a step when a stop was asked for; the partial step is discarded (nothing released)."""


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


class NoiseAllocator:
    """Per-layer C_l and sigma_l for each step (see allocation.py); sum sigma_l^-2 = sigma^-2 always (with the
    counts' z_b^-2 in the sum under quantile clip norms)."""

    QUANTILE_LIMITS = (1e-6, 1e6)  # quantile clip norms stay within these multiples of C (a float guard only)

    def __init__(self, config: RunConfig, dp: DPGradient, *, expected_batch_size: float) -> None:
        self.config, self.dp = config, dp
        self.groups = list(dp.groups)
        self.expected_batch_size = expected_batch_size  # qN, public: the divisor of the released counts
        self.importance = AdaptiveImportance(self.groups, smoothing=config.allocation_smoothing)
        self.weights = manual_weights(self.groups, config.allocation_weights) if config.allocation == "manual" else None
        # quantile clip norms: C_l(0) = C/sqrt(L), then moved by each step's released counts (allocation.py)
        self.thresholds: dict[str, float] | None = None
        if config.clip_allocation == "quantile":
            self.thresholds = clip_norms(self.groups, max_grad_norm=config.max_grad_norm, weights=None)
        dp.set_allocation(self._allocation(self.weights))

    def _allocation(self, weights: dict[str, float] | None) -> Allocation:
        cfg, sigma = self.config, self.dp.noise_multiplier
        w = weights or {g: 1.0 for g in self.groups}
        if self.thresholds is not None:  # the counts take z_b^-2 = share sigma^-2, the gradient the rest
            sigma_grad, z_b = split_budget(sigma, cfg.clip_quantile_share)
            sigmas = solve_sigmas(w, sigma=sigma_grad, bound=cfg.allocation_bound)
            return Allocation(clip=dict(self.thresholds), sigma=sigmas, count_sigma=z_b)
        sigmas = solve_sigmas(w, sigma=sigma, bound=cfg.allocation_bound)
        clips = clip_norms(
            self.groups, max_grad_norm=cfg.max_grad_norm, weights=w if cfg.clip_allocation == "importance" else None
        )
        return Allocation(clip=clips, sigma=sigmas)

    def after_step(self, stats: StepStats) -> None:
        # Post-processing: only the released noisy sums and counts and public constants are read here. In
        # data-parallel runs every rank holds rank 0's released values, so every rank computes the same next step.
        cfg, current = self.config, self.dp.allocation
        if self.thresholds is None and cfg.allocation != "adaptive":
            return
        if self.thresholds is not None:
            c = cfg.max_grad_norm
            self.thresholds = quantile_update(
                current.clip,
                unclipped_fraction(stats.released_counts, expected_batch_size=self.expected_batch_size),
                quantile=cfg.clip_quantile,
                lr=cfg.clip_quantile_lr,
                limits=(c * self.QUANTILE_LIMITS[0], c * self.QUANTILE_LIMITS[1]),
            )
        if cfg.allocation == "adaptive":
            self.importance.update(released_sq_norm=stats.released_sq_norm, dims=self.dp.dims(), allocation=current)
            self.weights = self.importance.weights()
        self.dp.set_allocation(self._allocation(self.weights))

    def report(self) -> dict:
        """The quantile clip norms' settings and budget split (summary, privacy report); {} for other clip norms."""
        if self.thresholds is None:
            return {}
        cfg, a = self.config, self.dp.allocation
        sigma_grad, z_b = split_budget(self.dp.noise_multiplier, cfg.clip_quantile_share)
        return {
            "quantile_clipping": {
                "method": "Andrew et al. 2021: C_l <- C_l exp(-eta (bbar_l - gamma)) from noised centred counts",
                "quantile": cfg.clip_quantile,
                "budget_share": cfg.clip_quantile_share,
                "learning_rate": cfg.clip_quantile_lr,
                "initial_clip_norm": cfg.max_grad_norm / math.sqrt(len(self.groups)),
                "count_noise_multiplier": z_b,
                "count_noise_std": a.count_noise_std(),
                "gradient_noise_multiplier": sigma_grad,
                "accounting": "one Gaussian mechanism with the counts: sum_l sigma_l^-2 + z_b^-2 = sigma^-2, "
                "so the epsilon is that of the plan's sigma",
            }
        }


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
        dist: "distributed.Distributed | distributed.Local | None" = None,
        baseline_cache: Path | None = None,
    ) -> None:
        """``dist``: this process's rank in a data-parallel group (a Session hosting one passes its rank 0);
        default: the group this process was started in (``distributed.current``), or one process.
        ``baseline_cache``: the file of untuned validation metrics (engine/baseline.py; a Session passes the one
        under its store's home); None measures the baseline every run."""
        self.p = prepared
        self.run_id = run_id
        self.emit = emit
        self.should_stop = should_stop
        self.run_dir = run_dir
        cfg = prepared.config
        # Sampling and noise come from the run's key (secret unless noise_seed: randomness.py),
        # never from cfg.seed, which is public (it is in the exported config).
        self.randomness = randomness
        # Data-parallel runs (engine/distributed.py): this process's rank; Local (no collectives) otherwise.
        self.dist = dist if dist is not None else distributed.current(cfg)
        self.distributed = self.dist.world_size > 1
        if self.distributed:
            self.dist.agree(None)  # every rank prepared, or every rank fails with the failing rank's message
        self.sample_rng = randomness.sampling_rng()
        self.hooks = PerExampleGrads(prepared.model)
        self.params = self.hooks.trainable_parameters()
        flat = [p for ps in self.params.values() for _, p in ps]
        self.optimizer, self.scheduler = make_optimizer(flat, cfg, prepared.plan.steps)
        self.private_path = prepared.plan.private or cfg.max_grad_norm is not None
        self.dp = DPGradient(
            self.params,
            max_grad_norm=cfg.max_grad_norm,
            noise_multiplier=prepared.plan.noise_multiplier,
            noise=randomness.noise(),
            clipping=cfg.resolved_clipping if cfg.max_grad_norm is not None else "flat",
            counts=cfg.clip_allocation == "quantile" and prepared.plan.private,
        )
        self.allocator = (
            NoiseAllocator(cfg, self.dp, expected_batch_size=prepared.plan.expected_batch_size)
            if self.dp.clipping == "per_layer" and prepared.plan.private
            else None
        )
        if self.distributed:  # the same starting weights everywhere; finish() sums over ranks, noise on rank 0
            self.dp.collective = self.dist
            with torch.no_grad():
                self.dist.from_main_([prm.data for prm in flat], what="the broadcast of the starting weights")
        main = self.dist.is_main  # audits live on rank 0 (its key's canary stream), their units added once
        self.canaries = self._canaries() if cfg.audit == "gradient_canaries" and main else None
        self.input_canaries = self._input_canaries() if cfg.audit == "input_canaries" and main else None
        self._audit: tuple[int, dict] | None = None  # audit_report's result, per step (scoring is costly)
        self.stopped_by_request = False
        self.users = (
            self._users() if prepared.plan.privacy_unit == "user" and prepared.plan.user_sampling == "uls" else None
        )
        self.sampler = (
            self.dist.sampler(
                randomness,
                identities=distributed.unit_identities(prepared.train_tok, by_user=self.users is not None),
                sample_rate=prepared.plan.sample_rate,
                seed=cfg.seed,
            )
            if self.distributed
            else None
        )
        self.choices = answer_choices(prepared.val, prepared.tokenizer)
        self.answers = Answers.of(prepared.val, prepared.tokenizer, self.choices)  # the samples show the answer
        self.gold = self._gold_labels()
        self.step = 0
        self.last_eval: dict = {}
        self.baseline_cache = baseline_cache
        self.baseline: dict | None = None  # the untuned model's metrics (step 0), with "cached"
        self._early_norms: list[torch.Tensor] = []

    # -- the loop ----------------------------------------------------------------------------------
    def run(self) -> tuple[str, str]:
        """Train until the planned steps, the budget, or a stop. Returns (status, reason)."""
        plan, cfg = self.p.plan, self.p.config
        main = self.dist.is_main  # only rank 0 emits events (and so writes the store) and evaluates
        if main:
            self.emit(self._started_event())
            baseline = self.baseline_evaluation() if cfg.baseline_eval else None
            if baseline is not None:
                self.emit(baseline)
        self.set_training_mode()  # explicitly: a cached baseline skips the evaluation that used to leave it
        every = cfg.eval_every or max(1, plan.steps // 5)
        status, reason = "finished", f"completed {plan.steps} planned steps"
        try:
            for step in range(1, plan.steps + 1):
                if self.dist.stop_requested(self.should_stop()):  # data-parallel: any rank's request, on every rank
                    raise StopRequested
                if not plan.budget_allows(step):
                    reason = f"privacy budget spent: another step would exceed epsilon={plan.target_epsilon:g}"
                    break
                event = self.train_step(step)
                if main:
                    self.emit(event)
                if main and step % every == 0 and step != plan.steps:
                    self.emit(self.evaluation())
        except StopRequested:
            status, reason = "stopped", f"stopped by request after step {self.step}"
            self.stopped_by_request = True  # an audit then reports an interim reading, not a bound
        finally:
            self.dp.close()  # the noise source's thread, making a step ahead (engine/noise.py), ends with the loop
        if main and (status == "finished" or self.step > 0):
            self.emit(self.evaluation(generate=status != "stopped"))  # after a Stop: no generations, seconds
        return status, reason

    def set_training_mode(self) -> None:
        """The model's mode for every step, whatever ran before (a measured or a cached baseline, an evaluation):
        a private run trains in eval mode, without dropout (its masks would come from the public, seeded generator
        in batch order, so one unit's clipped gradient would depend on which others were sampled; lora_dropout > 0
        is refused by the config); a non-private run trains with the model's dropout."""
        self.p.model.train(not self.p.plan.private)

    def _stop_within_step(self) -> bool:
        # Data-parallel: a rank leaving mid-step would leave the others waiting in the all-reduce, so a stop
        # takes effect at the next step's stop check (distributed.stop_requested), within one step.
        return not self.distributed and self.should_stop()

    def train_step(self, step: int) -> StepMetrics:
        p, plan = self.p, self.p.plan
        t0 = time.perf_counter()
        indices, owners = self._sample()
        losses, tokens = [], 0
        self.dp.start()
        self.hooks.enabled = self.private_path
        pbs = p.config.physical_batch_size
        for start, micro in zip(range(0, len(indices), pbs), micro_batches(indices, pbs)):
            if self._stop_within_step():
                raise StopRequested
            batch = self._batch([p.train_tok[i] for i in micro])
            tokens += int(batch["attention_mask"].sum())
            self.hooks.reset()
            with self._autocast():
                loss, _ = per_example_loss(p.model, batch, task=p.task)  # (b,)
            if self.private_path:
                loss.sum().backward()
                self.dp.add_microbatch(self.hooks.grads, None if owners is None else owners[start : start + len(micro)])
                self._drop_grads()
            else:  # the non-private baseline: ordinary autograd, same objective
                (loss.sum() / plan.expected_batch_size).backward()
            losses.append(loss.detach().float().cpu())
        if self.canaries is not None:  # audit runs: the sampled canaries join the clipped sum before the noise
            self.canaries.add_to(self.dp)
        if self.input_canaries is not None:
            self._train_input_canaries()
        stats = self._finish_gradient()
        allocation = self.dp.allocation
        if self.allocator is not None:  # the next step's allocation, from what this step released
            self.allocator.after_step(stats)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step = step
        if self.distributed:  # every rank's norms, losses and tokens, for rank 0's step event
            stats, losses, tokens = self.dist.gather_step(stats, losses, tokens)
            if not self.dist.is_main:
                return None
        return self._step_event(step, stats, losses, tokens, time.perf_counter() - t0, allocation)

    def _sample(self) -> tuple[np.ndarray, np.ndarray | None]:
        """Poisson-sample examples, or (ULS) users and then all of each sampled user's examples."""
        plan = self.p.plan
        if self.users is None:
            return self._draw(plan.dataset_size), None
        chosen = self._draw(len(self.users))
        idx = [self.users[u] for u in chosen]
        if not idx:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        owners = np.concatenate([np.full(len(ix), u) for u, ix in zip(chosen, idx)])
        return np.concatenate(idx), owners

    def _draw(self, population: int) -> np.ndarray:
        """Poisson-sampled unit indices: over all units, or (data-parallel) over this rank's shard."""
        if self.sampler is not None:
            return self.sampler.draw()
        return poisson_sample(population, self.p.plan.sample_rate, self.sample_rng)

    def _users(self) -> list[np.ndarray]:
        by_user: dict[str, list[int]] = {}
        for i, ex in enumerate(self.p.train_tok):
            by_user.setdefault(ex.user_id, []).append(i)
        return [np.array(by_user[u]) for u in sorted(by_user)]

    def _finish_gradient(self) -> StepStats:
        plan = self.p.plan
        if self.private_path:
            return self.dp.finish(expected_batch_size=plan.expected_batch_size)
        if self.distributed:  # the non-private baseline: sum the ranks' gradients (each already / q N)
            flat = [prm for ps in self.params.values() for _, prm in ps]
            for prm in flat:
                if prm.grad is None:
                    prm.grad = torch.zeros_like(prm)
            self.dist.sum_([prm.grad for prm in flat])
        norms = {}
        for g, ms in self.dp.groups.items():
            norms[g] = math.sqrt(
                sum(float(p.grad.pow(2).sum()) for m in ms for _, p in self.params[m] if p.grad is not None)
            )
        return StepStats(0, torch.zeros(0), 0.0, 0, norms, {g: 0.0 for g in norms}, {})

    def evaluation(self, *, generate: bool = True) -> EvalMetrics:
        """Validation loss and accuracy now, and sample generations unless ``generate`` is False (the last
        evaluation of a stopped run: generating costs seconds a prompt on a CPU, and a Stop must land at once)."""
        p = self.p
        measured = self._validation_metrics(p.val_tok[: p.config.eval_max_examples])
        metrics = {k: measured[k] for k in ("val_loss", "perplexity", "accuracy")}
        classes = {**self._predicted(measured), **self.majority()}
        gens = []
        if p.task == "causal_lm" and generate:
            gens = generate_samples(
                p.model,
                p.tokenizer,
                p.train.eval_prompts,
                device=p.device,
                max_new_tokens=p.config.generate_max_new_tokens,
                autocast=self._autocast,
                response_max_tokens=p.config.response_max_tokens,
                answers=self.answers,
            )
        self.last_eval = {**metrics, **self._predicted(measured)}
        return EvalMetrics(run_id=self.run_id, step=self.step, generations=gens, **metrics, **classes)

    def majority(self) -> dict:
        """The majority class of the evaluated validation labels and its share (``majority_label``,
        ``majority_share``): the accuracy of always answering that class. Telemetry from the validation data, as
        the untuned baseline; {} without labels."""
        found = majority_class(self.gold[: self.p.config.eval_max_examples])
        names = self.p.train.label_names or ()
        if found is None or found[0] >= len(names):
            return {}
        return {"majority_label": str(names[found[0]]), "majority_share": found[1]}

    def _predicted(self, measured: dict) -> dict:
        """The class the model predicted most in ``measured`` (an evaluation) and the share it predicted it for."""
        index, names = measured.get("predicted_class"), self.p.train.label_names or ()
        if index is None or index >= len(names):
            return {}
        return {"predicted_label": str(names[index]), "prediction_share": measured["prediction_share"]}

    def baseline_evaluation(self) -> EvalMetrics | None:
        """Step 0: the untuned model on the run's validation examples (loss and accuracy, no generations), read from
        the cache when this model, data and evaluation were measured before (engine/baseline.py); None without
        validation examples. Sets ``self.baseline`` (the summary's)."""
        p = self.p
        examples = p.val_tok[: p.config.eval_max_examples]
        if not examples:
            return None
        gold = self.gold[: len(examples)]
        key = baseline_key(
            model_name=p.model_name,
            model=p.model,
            task=p.task,
            examples=examples,
            gold=gold,
            choices=self.choices,
            device=p.device.type,
        )
        about = {"model": p.model_name, "data": p.config.data, "examples": len(examples)}
        metrics, cached = untuned_metrics(
            key, lambda: self._validation_metrics(examples), cache=self.baseline_cache, about=about
        )
        self.baseline = {**metrics, "cached": cached, **self.majority()}
        values = {k: (math.nan if metrics[k] is None else metrics[k]) for k in ("val_loss", "perplexity")}
        return EvalMetrics(
            run_id=self.run_id, step=0, accuracy=metrics["accuracy"], generations=[], **values, **self.majority()
        )

    def _validation_metrics(self, examples: list) -> dict:
        p = self.p
        return evaluate(
            p.model,
            examples,
            task=p.task,
            pad_id=p.tokenizer.pad_token_id,
            device=p.device,
            batch_size=p.config.physical_batch_size,
            choices=self.choices,
            gold=self.gold[: len(examples)],
            autocast=self._autocast,
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

    def _gold_labels(self) -> list[int | None]:
        """Label index of each tokenised validation example (records dropped by tokenisation skipped)."""
        index = {n: i for i, n in enumerate(self.p.train.label_names or ())}
        dropped = set(getattr(getattr(self.p.val_tok, "stats", None), "dropped_lines", ()))
        kept = [r for r in self.p.val.records if r.line is None or r.line not in dropped]
        return [index.get(r.label) if r.label is not None else None for r in kept][: len(self.p.val_tok)]

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
            **self._audit_bound(step),
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

    # -- the one-run audit (audit=gradient_canaries: engine/canaries.py; input_canaries: input_canaries.py) --
    def _canaries(self) -> GradientCanaries:
        """Secret canaries from the run's key. An extra unit each: the real data's accounting is unchanged."""
        plan = self.p.plan
        canaries = GradientCanaries(
            self.params,
            count=self.p.config.audit_canaries or gradient_canaries.DEFAULT_COUNT,
            sample_rate=plan.sample_rate,
            clip_norm=plan.max_grad_norm,
            delta=plan.delta,
            rng=self.randomness.canary_rng(),
            steps=plan.steps,
        )
        self.dp.on_release = canaries.record_release  # scores read the released noisy sums
        return canaries

    def _input_canaries(self) -> InputCanaries:
        """Secret canary examples from the run's key, Poisson-sampled at the real units' q. Extra units whose
        content and coins are independent of the data: the real data's accounting is unchanged (input_canaries.py)."""
        plan = self.p.plan
        units = plan.published_population or plan.population  # published: m must not reveal the exact size
        unit = "user" if plan.privacy_unit == "user" and plan.user_sampling == "uls" else "example"
        count = canary_count(self.p.config.audit_canaries, units=units, unit=unit)
        return InputCanaries(
            self.p,
            count=count,
            sample_rate=plan.sample_rate,
            delta=plan.delta,
            rng=self.randomness.canary_rng(),
            autocast=self._autocast,
            steps=plan.steps,
        )

    def _train_input_canaries(self) -> None:
        """This step's sampled input canaries: per-example gradients, clipped and summed as extra units."""
        sampled = self.input_canaries.sample()
        pbs = self.p.config.physical_batch_size
        for micro in micro_batches(sampled, pbs):
            if self._stop_within_step():
                raise StopRequested
            batch = self._batch([self.input_canaries.examples[i] for i in micro])
            self.hooks.reset()
            with self._autocast():
                loss, _ = per_example_loss(self.p.model, batch, task=self.p.task)  # (b,)
            loss.sum().backward()
            self.dp.add_microbatch(self.hooks.grads, canary=True)
            self._drop_grads()

    def _audit_final(self, step: int) -> bool:
        """Whether ``step`` ends the run by the plan (its last step, or the budget's stop): a time fixed before
        training, so the audit there is a bound. Every earlier reading is interim: one of several looks, and a
        largest one picked among them, or a stop decided on one, would not be covered by the confidence."""
        plan = self.p.plan
        return step == plan.steps or not plan.budget_allows(step + 1)

    def _audit_bound(self, step: int) -> dict[str, float]:
        """The step event's audit fields: the bound at the final step only (``audit_epsilon_lower_bound``),
        interim readings every few steps before it (``audit_interim``, not a bound)."""
        final = self._audit_final(step) if self.canaries is not None or self.input_canaries is not None else False
        if self.canaries is not None:
            every = max(1, self.p.plan.steps // AUDIT_POINTS)
            if step % every and not final:
                return {}
            value = self.canaries.result().epsilon_lower_bound
        elif self.input_canaries is not None and final:  # scoring costs 2 m forwards: last step only
            value = self.input_canaries.result().epsilon_lower_bound
        else:
            return {}
        return {"audit_epsilon_lower_bound": value} if final else {"audit_interim": value}

    def _audit_comparison(self) -> dict:
        """What the bound is compared against (privacy.audit.canary_epsilon, engine/canaries.py proves why), and
        whether this result is only an interim reading."""
        plan = self.p.plan
        eps = canary_epsilon(
            noise_multiplier=plan.noise_multiplier,
            sample_rate=plan.sample_rate,
            steps=self.step,
            delta=plan.delta,
            accountant=plan.accountant,
        )
        same = plan.neighboring == "add_remove" and plan.privacy_unit == "example"
        what = (
            f"the canaries' own epsilon (add/remove of one canary, Poisson at q = {plan.sample_rate:.4g}, "
            f"sigma = {plan.noise_multiplier:.4g}, {self.step} steps, delta = {plan.delta:.2g}): "
            + ("the run's claim, for the canaries are units of the same mechanism" if same else "at most the claim")
        )
        interim = self.stopped_by_request or not self._audit_final(self.step)
        return {"compared_epsilon": eps if math.isfinite(eps) else "inf", "compared_to": what, "interim": interim}

    def audit_report(self) -> dict:
        """{"audit": the result so far} for audit runs (summary, privacy report), {} otherwise. On the demo data it
        holds the exposure of the planted secrets too (engine/exposure.py). Computed once per step."""
        auditor = self.canaries if self.canaries is not None else self.input_canaries
        if auditor is None or self.step == 0:
            return {}
        if self._audit is not None and self._audit[0] == self.step:
            return self._audit[1]
        try:
            out = {"audit": {**auditor.result().to_dict(), **self._audit_comparison()}}
        except ValueError as err:  # e.g. non-finite released sums: say so rather than lose the summary
            log.error("the audit could not be computed: %s", err)
            return {}
        if self.p.config.data == "demo" and self.p.task == "causal_lm":
            try:
                out["audit"]["exposure"] = demo_exposures(
                    self.p, self.randomness.exposure_rng(), autocast=self._autocast
                )
            except Exception:  # noqa: BLE001 - the exposure test failing must not lose the audit
                log.exception("the exposure of the demo secrets could not be computed")
        self._audit = (self.step, out)
        return out

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
