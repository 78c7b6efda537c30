"""The gradient-canary audit on the DP step alone, at a run's sizes, with simulated per-example gradients.

No model: a ParamTable of one (out, in) weight (d = out * in LoRA-sized coordinates) and N "real" units whose
per-example gradient is a * v + z_i (v fixed over the run, z_i fresh Gaussian), of norm far above C, so every unit
is clipped and the real clipped sum points the same way step after step, as a fine-tuning run's does. Each step
Poisson-samples the real units at q (``sampling.poisson_sample``), adds them through ``DPGradient.add_microbatch``,
then the canaries (``GradientCanaries.add_to``), then ``finish()`` adds the noise and releases: the engine's own
order. The canaries' randomness comes from ``canary_seed`` here only because this is a test.
"""

from __future__ import annotations

import numpy as np
import torch

from workbench.audit.canaries import GradientCanaries
from workbench.engine.dp_step import DPGradient
from workbench.engine.grad_sample import ModuleGrads
from workbench.engine.randomness import GaussianNoise
from workbench.privacy.audit import AuditResult

# The demo (assets/demo.yaml): batch 64 of about 1,100 training messages, 20 steps, C = 0.1, delta 1e-5, LoRA r = 4
# on q and v of the last 4 layers of SmolLM2-135M: d = 4 * 4 * ((576 + 576) + (576 + 192)) = 30,720.
DEMO = dict(population=1100, batch=64, steps=20, clip=0.1, delta=1e-5, shape=(128, 240), canaries=1000)


def simulate(
    *,
    noise_multiplier: float,
    population: int,
    batch: int,
    steps: int,
    clip: float,
    delta: float,
    shape: tuple[int, int],
    canaries: int,
    seed: int = 0,
    alignment: float = 0.5,
    scoring: str = "released_minus_data",
    noise_scale: float = 1.0,
) -> tuple[AuditResult, GradientCanaries]:
    """The audit after ``steps`` steps. ``noise_scale`` < 1 is a broken mechanism: the noise is that much smaller
    than the sigma the accountant was told."""
    rng = np.random.default_rng(seed)
    weight = torch.nn.Parameter(torch.zeros(shape))
    params = {"m": [("weight", weight)]}
    noise = GaussianNoise(np.random.default_rng(seed + 10_000))
    q = batch / population
    canary = GradientCanaries(
        params,
        count=canaries,
        sample_rate=q,
        clip_norm=clip,
        delta=delta,
        rng=np.random.default_rng(seed + 20_000),
        steps=steps,
        scoring=scoring,
    )
    dp = DPGradient(
        params, max_grad_norm=clip, noise_multiplier=noise_multiplier * noise_scale, noise=noise, listeners=[canary]
    )
    v = torch.from_numpy(rng.standard_normal(shape)).float()
    v /= v.norm()
    for _ in range(steps):
        dp.start()
        sampled = np.flatnonzero(rng.random(population) < q)
        if len(sampled):
            z = torch.from_numpy(rng.standard_normal((len(sampled), *shape))).float() / np.sqrt(np.prod(shape))
            grads = alignment * v + np.sqrt(1 - alignment**2) * z  # (b, out, in), norm about 1 >> C
            dp.add_microbatch({"m": ModuleGrads(weight=grads)})
        canary.add_to(dp)
        dp.finish(expected_batch_size=q * population)
    return canary.result(), canary
