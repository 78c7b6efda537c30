"""The privatised gradient of one logical DP-SGD step, in small readable stages.

    start()                           zero the clipped-sum buffers
    add_microbatch(grads, owners)     per-unit norms -> clip -> add to the sum   (per micro-batch)
    add_canaries(unit)                audit runs only: canary units, clipped and added alike (audit/canaries.py;
                                      input canaries: add_microbatch(..., canary=True), audit/input_canaries.py)
    finish(expected_batch_size)       one stage each:
        _reduce                       the clipped sums (and counts) over every process (the collective)
        _noise                        + N(0, sigma_l^2 C_l^2) once, in float64, on rank 0 alone
        _share                        every process takes rank 0's noisy sums, bit for bit
        _scale                        p.grad = noisy sum / (q*N)
        _release                      the release listeners read what was released (allocation, audit)
                                      (quantile clip norms: the noised counts S_b are released too)

Its parts are given at construction: the clipped-sum ``collective`` (collective.LocalCollective for one
process, distributed.Distributed for a rank of several: the same interface), the secret ``noise`` source, and
the ``listeners`` of each release (``ReleaseListener``: the allocation policy, allocation.NoiseAllocator, and the
audits, workbench/audit), which see only released values, so what they do with them is post-processing.

The unit of privacy is one example, or (user-level sampling, ULS) one user: then the examples of
a user are averaged first (``owners`` says whose each example is) and that mean is clipped.
Clipping is flat (all blocks jointly to C, noise sigma*C everywhere) or per layer (block l to C_l,
noise sigma_l*C_l, see ``allocation.py``).  With quantile clip norms (``counts``) each unit also adds
its centred indicators b_{i,l} = 1[||g_{i,l}|| <= C_l] - 1/2 to an L-vector that is released with noise
N(0, sigma_b^2 I_L) beside the gradient, and the next step's C_l come from it (allocation.py proves
that the two releases are together one Gaussian mechanism of the plan's sigma).  Sampling is done by
the caller (Poisson, see ``sampling.py``); division is by the *expected* batch size q*N, as the accountant assumes.
A unit whose gradient is not finite (NaN/inf) contributes zero: its contribution then has norm
0 <= C, so the sensitivity bound still holds, and the count is reported.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, Sequence

import numpy as np
import torch
from torch import nn

from workbench.engine.allocation import Allocation, group_modules
from workbench.engine.clipping import NoClipping, PerLayerClipping, QuantileClipping, make_clipping
from workbench.engine.collective import Collective, LocalCollective
from workbench.engine.grad_sample import ModuleGrads
from workbench.engine.noise import GaussianNoise, KeystreamNoise

ParamTable = dict[str, list[tuple[str, nn.Parameter]]]  # module name -> [(param name, parameter)]
UnitGrads = dict[str, list[torch.Tensor]]  # module name -> per-unit grads, one (U, *shape) per param


@dataclass
class StepStats:
    """What the step released and measured (for events; all Python numbers)."""

    batch_size: int  # units (examples, or users under ULS)
    norms: torch.Tensor  # (units,) per-unit gradient norms before clipping, cpu fp32
    clipped_fraction: float
    nonfinite: int
    module_grad_norm: dict[str, float]  # block -> norm of its clipped sum (before noise)
    module_noise_std: dict[str, float]  # block -> std of the noise added to each coordinate
    released_sq_norm: dict[str, float]  # block -> squared norm of the noised sum (what was released)
    released_counts: dict[str, float] = field(default_factory=dict)  # quantile clip norms: block -> S_b,l (noised)


@dataclass(frozen=True)
class Release:
    """What one step released: each parameter's noisy sum (float64, before the division by q N), and its stats."""

    sums: tuple[tuple[str, int, torch.Tensor], ...]  # (module, parameter index, noisy sum), in parameter order
    stats: StepStats
    allocation: Allocation  # the C_l and sigma_l this step used


class ReleaseListener(Protocol):
    """Reads each step's release, after the noise: the audits' scores, the next step's allocation. It may read only
    ``release`` and public constants (post-processing); it must not change the released tensors."""

    def released(self, dp: "DPGradient", release: Release) -> None: ...


class DPGradient:
    """Clip per-unit gradients, sum, noise once, and average over the expected batch size."""

    def __init__(
        self,
        params: ParamTable,
        *,
        max_grad_norm: float | None,
        noise_multiplier: float,
        noise: KeystreamNoise | GaussianNoise,
        clipping: str = "flat",
        counts: bool = False,
        allocation: Allocation | None = None,
        collective: Collective | None = None,
        listeners: Sequence[ReleaseListener] = (),
    ) -> None:
        """``counts``: quantile clip norms (per-layer clipping only): release the noised indicator counts too.
        ``allocation``: the first step's per-layer C_l and sigma_l (per-layer clipping; default: flat, C and sigma
        for every block). ``collective``: the processes the clipped sums are summed over (default: this one alone,
        collective.LocalCollective); rank 0 alone adds the noise. ``listeners``: called after each release, in
        order (``ReleaseListener``)."""
        if noise_multiplier > 0 and max_grad_norm is None:
            raise ValueError("noise needs a clipping norm")
        if counts and (clipping != "per_layer" or max_grad_norm is None):
            raise ValueError("quantile clip norms need clipping='per_layer' and a clipping norm")
        self.params = params
        self.groups = group_modules(list(params))  # block -> its modules
        self.max_grad_norm = max_grad_norm
        self.noise_multiplier = noise_multiplier
        self.noise = noise  # secret by default (randomness.py): never a public seed
        blocks = list(self.groups)
        self.clip = make_clipping(clipping, max_grad_norm=max_grad_norm, blocks=blocks, counts=counts)  # clipping.py
        self.clipping = clipping
        self.allocation = self._flat_allocation()
        self._sums: dict[str, list[torch.Tensor]] = {}
        self._counts: torch.Tensor | None = None  # (L,) sum of the units' indicators (quantile clip norms only)
        self._norms: list[torch.Tensor] = []
        self._clipped = 0
        self._nonfinite = 0
        self._pending: dict[object, tuple[UnitGrads, int]] = {}
        # Data-parallel runs (engine/distributed.py): finish() sums the clipped sums of all ranks, rank 0 alone adds
        # the noise, and every rank receives rank 0's noisy sum. One process: every collective is the identity.
        self.collective = collective if collective is not None else LocalCollective()
        self.listeners = tuple(listeners)  # the allocation policy, the audits: they read each release
        if allocation is not None:
            self.set_allocation(allocation)

    def _flat_allocation(self) -> Allocation:
        c = self.max_grad_norm or 0.0
        return Allocation(clip={g: c for g in self.groups}, sigma={g: self.noise_multiplier for g in self.groups})

    def set_allocation(self, allocation: Allocation) -> None:
        """Per-layer C_l and sigma_l for the next step (per-layer clipping only)."""
        if not isinstance(self.clip, PerLayerClipping):
            raise ValueError("a per-layer allocation needs clipping='per_layer'")
        if isinstance(self.clip, QuantileClipping) != (allocation.count_sigma is not None):
            raise ValueError("quantile clip norms and the counts' noise multiplier (count_sigma) go together")
        self.allocation = allocation
        self.clip.clip_norms = dict(allocation.clip)

    def dims(self) -> dict[str, int]:
        return {g: sum(p.numel() for m in ms for _, p in self.params[m]) for g, ms in self.groups.items()}

    def start(self) -> None:
        self._sums = {m: [torch.zeros_like(p, dtype=torch.float32) for _, p in ps] for m, ps in self.params.items()}
        self._norms, self._clipped, self._nonfinite, self._pending = [], 0, 0, {}
        if isinstance(self.clip, QuantileClipping):
            device = next(p.device for ps in self.params.values() for _, p in ps)
            self._counts = torch.zeros(len(self.groups), dtype=torch.float32, device=device)

    @torch.no_grad()
    def add_microbatch(
        self, grads: dict[str, ModuleGrads], owners: np.ndarray | None = None, *, canary: bool = False
    ) -> None:
        """Add one micro-batch: clip each example now, or (``owners`` given) hold per-user sums.

        ``canary``: input canaries (audit/input_canaries.py), each its own unit (also under ULS), clipped and
        summed alike and left out of the telemetry, as ``add_canaries``."""
        missing = [m for m in self.params if m not in grads]
        if missing:
            # A module that got no gradient would silently stay unprivatised and untrained:
            # fail loudly instead (this is how Opacus issue #820 went unnoticed).
            raise RuntimeError(f"no per-example gradient recorded for {missing[:3]}; the hooks are not attached")
        unit = {m: [getattr(grads[m], pname) for pname, _ in ps] for m, ps in self.params.items()}
        if canary:
            self._clip_and_add(unit, record=False)
        elif owners is None:
            self._clip_and_add(unit)
        else:
            self._hold_by_owner(unit, owners)

    def _hold_by_owner(self, unit: UnitGrads, owners: np.ndarray) -> None:
        for owner in dict.fromkeys(owners.tolist()):  # first-seen order
            rows = torch.as_tensor(np.flatnonzero(owners == owner))
            part = {m: [g.index_select(0, rows.to(g.device)).sum(0) for g in gs] for m, gs in unit.items()}
            if owner in self._pending:
                held, n = self._pending[owner]
                part = {m: [a + b for a, b in zip(held[m], part[m])] for m in part}
                self._pending[owner] = (part, n + len(rows))
            else:
                self._pending[owner] = (part, len(rows))

    def _flush_owners(self) -> None:
        """ULS: each user's gradient is the mean over its examples in the batch, clipped as one unit."""
        if not self._pending:
            return
        held = list(self._pending.values())
        unit = {
            m: [torch.stack([h[m][j] / n for h, n in held]) for j in range(len(self.params[m]))] for m in self.params
        }
        self._pending = {}
        self._clip_and_add(unit)

    def clipped_sum(self) -> dict[str, list[torch.Tensor]]:
        """The clipped sum so far (before noise; this rank's units only): the white-box audit reads the real
        data's part just before the canaries join it (audit/canaries.py). Read it, never write it. Under ULS the
        users held so far are clipped and added first (as finish() would: every micro-batch of the step is in)."""
        self._flush_owners()
        return self._sums

    @torch.no_grad()
    def add_canaries(self, unit: UnitGrads) -> None:
        """Add audit canaries (audit/canaries.py): extra units, clipped and summed like any unit, and
        left out of the telemetry (norms, clipped fraction), which describes the real data."""
        self._clip_and_add(unit, record=False)

    def _clip_and_add(self, unit: UnitGrads, *, record: bool = True) -> None:
        sq = {g: sum(x.flatten(1).pow(2).sum(1) for m in ms for x in unit[m]) for g, ms in self.groups.items()}
        total = torch.stack(list(sq.values())).sum(0).sqrt()  # (U,)
        finite = torch.isfinite(total)
        all_finite = bool(finite.all())  # the common case: no masking copies of the per-unit grads
        factors, clipped = self.clip.factors(sq, total)  # block -> (U,), and (U,) which units were clipped
        if self._counts is not None:  # every unit added, canaries too: the counts are part of the mechanism
            self._counts += self.clip.indicators(sq).sum(1)
        for g, ms in self.groups.items():
            f = factors[g] if all_finite else torch.where(finite, factors[g], torch.zeros_like(factors[g]))
            for m in ms:
                for buf, x in zip(self._sums[m], unit[m]):
                    if not all_finite:  # zero the non-finite units (0 * NaN would still be NaN)
                        x = torch.where(finite.view(-1, *([1] * (x.dim() - 1))), x, torch.zeros_like(x))
                    buf.add_(torch.tensordot(f, x, dims=1))  # sum_u f_u x_u
        if record:
            self._nonfinite += int((~finite).sum())
            if not isinstance(self.clip, NoClipping):  # a non-finite unit counts as clipped (to zero)
                self._clipped += int((clipped | ~finite).sum())
            self._norms.append(total.detach().float().cpu())

    def _draw_noise(self, noised: list[tuple[torch.Tensor, float]]) -> dict[int, torch.Tensor]:
        """The step's noise for each (tensor, std): N(0, std^2) in float64 on the tensor's device, by ``id``.

        One draw of the secret source for the whole step (made ahead on a thread, engine/noise.py), moved to the
        device once and cut into views; each view is scaled in place (the values are this step's alone)."""
        if not noised:
            return {}
        flat = torch.from_numpy(self.noise.draw_step([t.numel() for t, _ in noised]))
        on_device: dict[torch.device, torch.Tensor] = {}
        out, offset = {}, 0
        for t, std in noised:
            if t.device not in on_device:
                on_device[t.device] = flat.to(t.device)  # the one copy: host to device (none on the CPU)
            values = on_device[t.device]
            out[id(t)] = values[offset : offset + t.numel()].view(t.shape).mul_(float(std))
            offset += t.numel()
        return out

    def close(self) -> None:
        """End the noise source's background thread (a run's end, or its failure)."""
        close = getattr(self.noise, "close", None)
        if close is not None:
            close()

    @torch.no_grad()
    def finish(self, *, expected_batch_size: float) -> StepStats:
        """Add the Gaussian noise once, scale by 1/(q N), write ``p.grad`` and tell the listeners what was released.

        Quantile clip norms: the summed indicators get their noise N(0, sigma_b^2 I_L) right after the gradient's,
        from the same secret generator (``self.noise``, randomness.py; never a public seed), and are released in
        ``StepStats.released_counts`` for the next step's C_l (allocation.quantile_update).

        Data-parallel: the clipped sums (and the counts with them) are all-reduced first, so each holds the sum over
        every rank's units; rank 0 alone adds the noise (once: distributed.py says why it is neither multiplied nor
        divided by the number of ranks), the counts' noise too, and broadcasts the noisy sums and counts, so every
        rank applies the same update and the same next C_l. One process: the collective does nothing."""
        self._flush_owners()
        sums = self._entries()  # (block, module, index, clipped sum, parameter), in parameter order
        counts = [] if self._counts is None else [self._counts]  # the (L,) indicator sum, quantile clip norms only
        self._reduce(sums, counts)
        clean = self._norms_before_noise(sums)
        stds = {g: 0.0 for g in self.groups} if isinstance(self.clip, NoClipping) else self.allocation.noise_std()
        noisy, noisy_counts = self._noise(sums, counts, stds)
        self._share(noisy + noisy_counts)
        self._scale(sums, noisy, expected_batch_size)
        stats = self._stats(sums, noisy, noisy_counts, clean, stds)
        self._release(Release(tuple((m, j, out) for (_, m, j, _, _), out in zip(sums, noisy)), stats, self.allocation))
        return stats

    def _entries(self) -> list[tuple[str, str, int, torch.Tensor, nn.Parameter]]:
        return [
            (g, m, j, buf, p)
            for g, ms in self.groups.items()
            for m in ms
            for j, (buf, (_, p)) in enumerate(zip(self._sums[m], self.params[m]))
        ]

    def _reduce(self, sums: list, counts: list[torch.Tensor]) -> None:
        """The clipped sums and counts over every process, in place (one process: as they are)."""
        self.collective.sum_([e[3] for e in sums] + counts)

    def _norms_before_noise(self, sums: list) -> dict[str, float]:
        """Each block's squared norm of the clipped sum (telemetry, before the noise)."""
        clean = {g: 0.0 for g in self.groups}
        for g, _, _, buf, _ in sums:
            clean[g] += float(buf.pow(2).sum())
        return clean

    def _noise(
        self, sums: list, counts: list[torch.Tensor], stds: dict[str, float]
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The noisy sums and counts in float64: + N(0, std^2) from one step of the secret source on rank 0 (the
        gradient's, then the counts'); the other ranks' stay clean until ``_share`` overwrites them."""
        adds_noise = self.collective.is_main
        count_std = self.allocation.count_noise_std() if adds_noise else 0.0
        noised = [(buf, stds[g]) for g, _, _, buf, _ in sums if stds[g] > 0 and adds_noise]
        noised += [(c, count_std) for c in counts if count_std > 0]  # S_b = sum_i b_i + N(0, sigma_b^2 I_L)
        noise = self._draw_noise(noised)
        outs = []
        for _, _, _, buf, _ in sums:
            out = buf.double()  # the noise is added in float64 (see engine/noise.py)
            if id(buf) in noise:
                out += noise[id(buf)]
            outs.append(out)
        return outs, [c.double() + noise[id(c)] if id(c) in noise else c.double() for c in counts]

    def _share(self, released: list[torch.Tensor]) -> None:
        """Rank 0's noisy sums (and counts), bit for bit, on every rank (one process: already its own)."""
        self.collective.from_main_(released)

    @staticmethod
    def _scale(sums: list, noisy: list[torch.Tensor], expected_batch_size: float) -> None:
        """p.grad = noisy sum / (q N): the expected batch size, as the accountant assumes (post-processing)."""
        for (_, _, _, _, p), out in zip(sums, noisy):
            p.grad = (out / expected_batch_size).to(p.dtype)

    def _stats(self, sums: list, noisy: list, noisy_counts: list, clean: dict, stds: dict) -> StepStats:
        released = {g: 0.0 for g in self.groups}
        for (g, _, _, _, _), out in zip(sums, noisy):
            released[g] += float(out.pow(2).sum())
        norms = torch.cat(self._norms) if self._norms else torch.zeros(0)
        return StepStats(
            batch_size=len(norms),
            norms=norms,
            clipped_fraction=self._clipped / len(norms) if len(norms) else 0.0,
            nonfinite=self._nonfinite,
            module_grad_norm={g: c**0.5 for g, c in clean.items()},
            module_noise_std=stds,
            released_sq_norm=released,
            released_counts=dict(zip(self.groups, noisy_counts[0].tolist())) if noisy_counts else {},
        )

    def _release(self, release: Release) -> None:
        """Every listener reads this step's release, in order (the audit's scores; the next step's allocation)."""
        for listener in self.listeners:
            listener.released(self, release)


def noised_counts(counts: torch.Tensor, std: float, noise: KeystreamNoise | GaussianNoise) -> torch.Tensor:
    """S_b = counts + N(0, std^2 I) in float64 (std = sigma_b = z_b sqrt(L)/2), drawn from ``noise`` (one step of
    its own; ``finish`` draws the counts' noise with the gradient's instead). std 0 adds nothing."""
    out = counts.double()
    if std > 0:
        out += noise.sample(out.shape, std, device=out.device)
    return out
