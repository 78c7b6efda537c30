"""The privatised gradient of one logical DP-SGD step, in small readable stages.

    start()                      zero the clipped-sum buffers
    add_microbatch(grads)        per-example norms -> clip to C -> add to the sum   (per micro-batch)
    finish(expected_batch_size)  add N(0, sigma^2 C^2) once, divide by q*N, write p.grad

Sampling is done by the caller (Poisson, see ``sampling.py``).  Division is by the *expected*
batch size q*N, not the realised one, as the accountant assumes (REFERENCES.md section 1).
An example whose gradient is not finite (NaN/inf) contributes zero: its contribution then has
norm 0 <= C, so the sensitivity bound still holds, and the count is reported.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from workbench.engine.grad_sample import ModuleGrads

ParamTable = dict[str, list[tuple[str, nn.Parameter]]]  # module name -> [(param name, parameter)]


@dataclass
class StepStats:
    """What the step released and measured (for events; all Python numbers)."""

    batch_size: int
    norms: torch.Tensor  # (batch_size,) per-example gradient norms before clipping, cpu fp32
    clipped_fraction: float
    nonfinite: int
    module_grad_norm: dict[str, float]  # norm of each module's clipped sum (before noise)
    module_noise_std: dict[str, float]  # std of the noise added to each coordinate of that sum


class DPGradient:
    """Clip per-example gradients, sum, noise once, and average over the expected batch size."""

    def __init__(
        self,
        params: ParamTable,
        *,
        max_grad_norm: float | None,
        noise_multiplier: float,
        generator: torch.Generator,
    ) -> None:
        if noise_multiplier > 0 and max_grad_norm is None:
            raise ValueError("noise needs a clipping norm")
        self.params = params
        self.max_grad_norm = max_grad_norm
        self.noise_multiplier = noise_multiplier
        self.generator = generator
        self._sums: dict[str, list[torch.Tensor]] = {}
        self._norms: list[torch.Tensor] = []
        self._nonfinite = 0

    def start(self) -> None:
        self._sums = {m: [torch.zeros_like(p, dtype=torch.float32) for _, p in ps] for m, ps in self.params.items()}
        self._norms = []
        self._nonfinite = 0

    @torch.no_grad()
    def add_microbatch(self, grads: dict[str, ModuleGrads]) -> None:
        """Clip every example of the micro-batch to C (over all modules jointly) and add to the sums."""
        missing = [m for m in self.params if m not in grads]
        if missing:
            # A module that got no gradient would silently stay unprivatised and untrained:
            # fail loudly instead (this is how Opacus issue #820 went unnoticed).
            raise RuntimeError(f"no per-example gradient recorded for {missing[:3]}; the hooks are not attached")
        sq = torch.stack([grads[m].sq_norms() for m in self.params]).sum(0)  # (B,)
        norms = sq.sqrt()
        finite = torch.isfinite(norms)
        if self.max_grad_norm is None:
            factor = torch.ones_like(norms)
        else:
            factor = (self.max_grad_norm / (norms + 1e-6)).clamp(max=1.0)  # (B,)
        factor = torch.where(finite, factor, torch.zeros_like(factor))
        self._nonfinite += int((~finite).sum())
        for m, ps in self.params.items():
            for buf, (pname, _) in zip(self._sums[m], ps):
                g = getattr(grads[m], pname)  # (B, *shape)
                g = torch.where(finite.view(-1, *([1] * (g.dim() - 1))), g, torch.zeros_like(g))
                buf.add_(torch.einsum("b,b...->...", factor, g))
        self._norms.append(norms.detach().float().cpu())

    @torch.no_grad()
    def finish(self, *, expected_batch_size: float) -> StepStats:
        """Add the Gaussian noise once, scale by 1/(q N) and write ``p.grad``."""
        std = self.noise_multiplier * (self.max_grad_norm or 0.0)
        module_norm, module_std = {}, {}
        for m, ps in self.params.items():
            sq = 0.0
            for buf, (_, p) in zip(self._sums[m], ps):
                sq += float(buf.pow(2).sum())
                if std > 0:
                    buf.add_(torch.normal(0.0, std, size=buf.shape, generator=self.generator, device=buf.device))
                p.grad = (buf / expected_batch_size).to(p.dtype)
            module_norm[m] = sq**0.5
            module_std[m] = std
        norms = torch.cat(self._norms) if self._norms else torch.zeros(0)
        clipped = 0.0
        if self.max_grad_norm is not None and len(norms):
            clipped = float((~torch.isfinite(norms) | (norms > self.max_grad_norm)).float().mean())
        return StepStats(
            batch_size=len(norms),
            norms=norms,
            clipped_fraction=clipped,
            nonfinite=self._nonfinite,
            module_grad_norm=module_norm,
            module_noise_std=module_std,
        )
