"""Per-layer noise allocation (ANADP, Li et al., EMNLP 2024, arXiv 2410.02912; REFERENCES.md s.1).

Block l (one LoRA module: its A and B, or a trainable head) is clipped to C_l and gets noise
N(0, sigma_l^2 C_l^2).  Rescaling block l by 1/(sigma_l C_l) turns the step into one Gaussian
mechanism with unit noise and sensitivity sqrt(sum_l sigma_l^-2), i.e. with effective multiplier

    sigma_eff = (sum_l sigma_l^-2)^(-1/2).

Every allocation here keeps sum_l sigma_l^-2 = sigma^-2, so the accounting is exactly that of the
uniform step with multiplier sigma.  Strategies:

- uniform: sigma_l = sigma * sqrt(L) for every block.
- manual: precision sigma_l^-2 proportional to a user weight per module pattern.
- adaptive: precision proportional to an importance score computed ONLY from what earlier steps
  released (the noised gradient sums) and public constants, so it is post-processing and costs no
  privacy.  The score of block l is an exponential moving average of its estimated signal energy
  per coordinate, max(||g~_l||^2 - d_l sigma_l^2 C_l^2, 0) / (d_l C_l^2) where g~_l is the released
  noisy sum (the subtracted term is the expected energy of the noise that was added), taken to the
  power 1/2.  Blocks whose gradients stand out of their noise get less noise.  The papers do not
  publish their exact formula; this one follows ANADP's idea (importance from moving averages of
  gradient statistics, normalised so that the overall guarantee holds).

Each sigma_l is kept within [sigma sqrt(L) / bound, sigma sqrt(L) * bound] (floor and ceiling) and
the precisions are then re-normalised by water-filling so the constraint holds exactly.

Quantile clip norms (``clip_allocation=quantile``; Andrew, Thakkar, McMahan, Ramaswamy 2021,
"Differentially Private Learning with Adaptive Clipping", NeurIPS; REFERENCES.md s.9).  Each C_l starts
at C/sqrt(L) and tracks the quantile gamma of the per-unit norms ||g_{i,l}|| of block l.  Per step t:

    b_{i,l}  = 1[||g_{i,l}|| <= C_l(t)] - 1/2                   each unit's centred indicator (clipping.py)
    S_b      = sum_i b_i + N(0, sigma_b^2 I_L)                   released with the gradient (dp_step.py)
    bbar_l   = (S_b,l + qN/2) / (qN)                             the estimated unclipped fraction
    C_l(t+1) = C_l(t) * exp(-eta (bbar_l - gamma))               (``quantile_update``)

qN is the *expected* batch size (public), never the sampled one (private under Poisson sampling).

Why the accountant's sigma covers both releases.  The vector b_i has L coordinates of +-1/2, so
||b_i|| = sqrt(L)/2: adding or removing a unit moves sum_i b_i by exactly sqrt(L)/2, and replacing one
by at most sqrt(L) (each coordinate moves by 0 or 1).  The clipped gradient sum moves by at most
C_l in block l (add/remove) or 2 C_l (replace-one).  So, with z_b = sigma_b / (sqrt(L)/2), rescaling
block l of the gradient by 1/(sigma_l C_l) and the counts by 1/sigma_b gives one release with unit noise
N(0, I) (the count noise and the gradient noise are independent) whose sensitivity is

    add/remove:   sqrt(sum_l C_l^2 / (sigma_l C_l)^2 + (sqrt(L)/2)^2 / sigma_b^2) = sqrt(sum_l sigma_l^-2 + z_b^-2)
    replace-one:  2 sqrt(sum_l sigma_l^-2 + z_b^-2)     (both parts exactly double, like C -> 2C)

on the same Poisson sample: one subsampled Gaussian mechanism of multiplier
(sum_l sigma_l^-2 + z_b^-2)^(-1/2).  ``split_budget`` sets z_b^-2 = share sigma^-2 and the gradient
blocks sum_l sigma_l^-2 = (1 - share) sigma^-2 (``solve_sigmas`` with sigma / sqrt(1 - share): every
sigma_l is 1/sqrt(1 - share) times what it would be without the counts), so the total precision is
sigma^-2 and the multiplier is the plan's sigma: the accountant, the plan, epsilon and the report are
exactly those of the fixed-threshold run with the same settings.  The C_l do not enter the
constraint, so any C_l computed from earlier releases and public constants (here C, gamma, eta, qN)
is post-processing and costs nothing more.  The same holds for a user under ULS (its clipped mean
and its indicators), and ELS's user-level analysis applies unchanged: each of a user's examples
contributes a (gradient, indicator) pair with the same rescaled bound as one example here.
"""

from __future__ import annotations

import fnmatch
import math
import re
from dataclasses import dataclass

from workbench.config import RunConfig

_ADAPTER_SUFFIX = re.compile(r"\.(lora_A|lora_B)\.[^.]+$|\.modules_to_save\.[^.]+$")


def group_name(module_name: str) -> str:
    """'base_model.model.model.layers.3.self_attn.q_proj.lora_A.default' -> 'layers.3.self_attn.q_proj'."""
    name = _ADAPTER_SUFFIX.sub("", module_name)
    for prefix in ("base_model.model.model.", "base_model.model."):
        if name.startswith(prefix):
            return name[len(prefix) :]
    return name


def group_modules(module_names: list[str]) -> dict[str, list[str]]:
    groups: dict[str, list[str]] = {}
    for m in module_names:
        groups.setdefault(group_name(m), []).append(m)
    return groups


@dataclass(frozen=True)
class Allocation:
    """Clip norm C_l and noise multiplier sigma_l of each block; under quantile clipping also z_b, the
    noise multiplier of the released counts (their std is sigma_b = z_b sqrt(L) / 2)."""

    clip: dict[str, float]
    sigma: dict[str, float]
    count_sigma: float | None = None  # z_b; None: no counts are released (fixed or importance clip norms)

    @property
    def effective_noise_multiplier(self) -> float:
        """(sum_l sigma_l^-2 + z_b^-2)^(-1/2): the multiplier of the one Gaussian mechanism the step is."""
        counts = [] if self.count_sigma is None else [self.count_sigma]
        return effective_noise_multiplier([*self.sigma.values(), *counts])

    def noise_std(self) -> dict[str, float]:
        return {g: self.sigma[g] * self.clip[g] for g in self.sigma}

    def count_noise_std(self) -> float:
        """sigma_b = z_b sqrt(L) / 2: the std of the noise on each block's count (0 when there are none)."""
        return 0.0 if self.count_sigma is None else self.count_sigma * math.sqrt(len(self.sigma)) / 2


def effective_noise_multiplier(sigmas) -> float:
    sigmas = list(sigmas)
    if any(s == 0 for s in sigmas):
        return 0.0
    return sum(s**-2 for s in sigmas) ** -0.5


def solve_sigmas(weights: dict[str, float], *, sigma: float, bound: float) -> dict[str, float]:
    """sigma_l with precision proportional to weight, within the bounds, and sum sigma_l^-2 = sigma^-2."""
    n = len(weights)
    total = sigma**-2
    lo, hi = total / n / bound**2, total / n * bound**2  # precision bounds = sigma_l ceiling, floor
    w = {g: max(float(v), 1e-12) for g, v in weights.items()}

    def spent(lam: float) -> float:
        return sum(min(max(lam * v, lo), hi) for v in w.values())

    a, b = 0.0, 1.0
    while spent(b) < total:
        b *= 2
    for _ in range(200):  # bisection on the scale: spent() is monotone
        mid = (a + b) / 2
        a, b = (mid, b) if spent(mid) < total else (a, mid)
    prec = {g: min(max(b * v, lo), hi) for g, v in w.items()}
    scale = total / sum(prec.values())  # remove the bisection's last rounding error exactly
    return {g: (p * scale) ** -0.5 for g, p in prec.items()}


def clip_norms(groups: list[str], *, max_grad_norm: float, weights: dict[str, float] | None) -> dict[str, float]:
    """C_l with ||(C_1..C_L)||_2 = C: equal shares, or shares by importance weight."""
    if not weights:
        return {g: max_grad_norm / math.sqrt(len(groups)) for g in groups}
    total = sum(max(weights[g], 1e-12) for g in groups)
    return {g: max_grad_norm * math.sqrt(max(weights[g], 1e-12) / total) for g in groups}


def split_budget(sigma: float, share: float) -> tuple[float, float]:
    """(sigma_grad, z_b) with sigma_grad^-2 = (1 - share) sigma^-2 and z_b^-2 = share sigma^-2, so that
    sigma_grad^-2 + z_b^-2 = sigma^-2: the gradient's allocation solves for sigma_grad (``solve_sigmas``)."""
    if not 0 < share < 1:
        raise ValueError(f"the counts' share of the budget must be strictly between 0 and 1. Found {share!r}.")
    return sigma / math.sqrt(1 - share), sigma / math.sqrt(share)


def unclipped_fraction(released_counts: dict[str, float], *, expected_batch_size: float) -> dict[str, float]:
    """bbar_l = (S_b,l + qN/2) / (qN): the estimated fraction of units with ||g_l|| <= C_l, from the released
    (noised, centred) counts and the public expected batch size qN."""
    n = expected_batch_size
    return {g: (s + n / 2) / n for g, s in released_counts.items()}


def quantile_update(
    clip: dict[str, float],
    fraction: dict[str, float],
    *,
    quantile: float,
    lr: float,
    limits: tuple[float, float] = (0.0, math.inf),
) -> dict[str, float]:
    """C_l <- C_l exp(-eta (bbar_l - gamma)): down when more than gamma of the units were under C_l, up when fewer.

    bbar_l is not clamped to [0, 1] (as Andrew et al.: clamping would bias the noisy estimate near 0 and 1 and
    move the fixed point off gamma). ``limits`` (public constants, far apart) only keep C_l a finite positive
    float whatever the noise draws; the exponent is kept finite for the same reason."""
    lo, hi = limits
    out = {}
    for g, c in clip.items():
        step = -lr * (fraction[g] - quantile)
        out[g] = min(max(c * math.exp(min(max(step, -700.0), 700.0)), lo), hi)
    return out


def manual_weights(groups: list[str], patterns: dict[str, float]) -> dict[str, float]:
    """Weight of each block from {glob or substring: weight}; first matching pattern wins; default 1."""
    out = {}
    for g in groups:
        out[g] = 1.0
        for pat, weight in patterns.items():
            if fnmatch.fnmatch(g, pat) or pat in g:
                out[g] = float(weight)
                break
    return out


class AdaptiveImportance:
    """Smoothed importance scores from released (noised) gradient sums: post-processing only."""

    def __init__(self, groups: list[str], *, smoothing: float) -> None:
        self.smoothing = smoothing
        self.score: dict[str, float] | None = None
        self.groups = groups

    def update(self, *, released_sq_norm: dict[str, float], dims: dict[str, int], allocation: Allocation) -> None:
        fresh = {}
        for g in self.groups:
            noise_energy = dims[g] * (allocation.sigma[g] * allocation.clip[g]) ** 2
            signal = max(released_sq_norm[g] - noise_energy, 0.0) / (dims[g] * allocation.clip[g] ** 2)
            fresh[g] = math.sqrt(signal)
        if self.score is None:
            self.score = fresh
        else:
            b = self.smoothing
            self.score = {g: b * self.score[g] + (1 - b) * fresh[g] for g in self.groups}

    def weights(self) -> dict[str, float] | None:
        if self.score is None or sum(self.score.values()) <= 0:
            return None
        mean = sum(self.score.values()) / len(self.score)
        return {g: s / mean + 1e-3 for g, s in self.score.items()}


class NoiseAllocator:
    """The allocation policy of a per-layer run: C_l and sigma_l for each step, with sum sigma_l^-2 = sigma^-2 always
    (with the counts' z_b^-2 in the sum under quantile clip norms). ``allocation`` is the first step's; a release
    listener of the DP step (dp_step.ReleaseListener): after each release it sets the next step's, computed from
    the released noisy sums and counts and public constants only (post-processing)."""

    QUANTILE_LIMITS = (1e-6, 1e6)  # quantile clip norms stay within these multiples of C (a float guard only)

    def __init__(self, config: RunConfig, params: dict, *, noise_multiplier: float, expected_batch_size: float) -> None:
        """``params``: the DP step's table, module -> [(parameter name, parameter)] (its blocks and their sizes)."""
        self.config, self.noise_multiplier = config, noise_multiplier
        blocks = group_modules(list(params))
        self.groups = list(blocks)
        self.dims = {g: sum(p.numel() for m in ms for _, p in params[m]) for g, ms in blocks.items()}
        self.expected_batch_size = expected_batch_size  # qN, public: the divisor of the released counts
        self.importance = AdaptiveImportance(self.groups, smoothing=config.allocation_smoothing)
        self.weights = manual_weights(self.groups, config.allocation_weights) if config.allocation == "manual" else None
        # quantile clip norms: C_l(0) = C/sqrt(L), then moved by each step's released counts (module docstring)
        self.thresholds: dict[str, float] | None = None
        if config.clip_allocation == "quantile":
            self.thresholds = clip_norms(self.groups, max_grad_norm=config.max_grad_norm, weights=None)
        self.allocation = self._allocation(self.weights)

    def _allocation(self, weights: dict[str, float] | None) -> Allocation:
        cfg, sigma = self.config, self.noise_multiplier
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

    def released(self, dp, release) -> None:
        """The next step's allocation, set on ``dp`` (a DPGradient), from ``release`` (a dp_step.Release).

        Post-processing: only the released noisy sums and counts and public constants are read here. In data-parallel
        runs every rank holds rank 0's released values, so every rank computes the same next step."""
        cfg, current, stats = self.config, release.allocation, release.stats
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
            self.importance.update(released_sq_norm=stats.released_sq_norm, dims=self.dims, allocation=current)
            self.weights = self.importance.weights()
        self.allocation = self._allocation(self.weights)
        dp.set_allocation(self.allocation)

    def report(self) -> dict:
        """The quantile clip norms' settings and budget split (summary, privacy report); {} for other clip norms."""
        if self.thresholds is None:
            return {}
        cfg, a = self.config, self.allocation
        sigma_grad, z_b = split_budget(self.noise_multiplier, cfg.clip_quantile_share)
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
