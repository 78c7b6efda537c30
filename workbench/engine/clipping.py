"""How one step clips its units: none, flat (all LoRA modules jointly to C) or per layer (block l to C_l).

Each strategy returns, for a batch of units, the scale factor of every block and which units it
clipped, together, so the two can never disagree. ``DPGradient`` (dp_step.py) multiplies and sums;
a unit whose gradient is not finite is zeroed there, whatever the strategy.

    sq     block -> (U,) squared norm of each unit's gradient in that block
    total  (U,) each unit's norm over all blocks
"""

from __future__ import annotations

import torch

Norms = dict[str, torch.Tensor]
EPS = 1e-6  # keeps C / norm finite for an all-zero gradient


class NoClipping:
    """The non-private baseline: every factor is 1 and nothing is clipped."""

    kind = "none"

    def factors(self, sq: Norms, total: torch.Tensor) -> tuple[Norms, torch.Tensor]:
        ones = torch.ones_like(total)
        return {g: ones for g in sq}, torch.zeros_like(total, dtype=torch.bool)


class FlatClipping:
    """Each unit's whole gradient to norm at most C: one factor min(1, C / ||g||) for every block."""

    kind = "flat"

    def __init__(self, max_grad_norm: float) -> None:
        self.max_grad_norm = max_grad_norm

    def factors(self, sq: Norms, total: torch.Tensor) -> tuple[Norms, torch.Tensor]:
        f = (self.max_grad_norm / (total + EPS)).clamp(max=1.0)
        return {g: f for g in sq}, total > self.max_grad_norm


class PerLayerClipping:
    """Block l of each unit to norm at most C_l (``clip_norms``, set by the noise allocation each step)."""

    kind = "per_layer"

    def __init__(self, clip_norms: dict[str, float]) -> None:
        self.clip_norms = dict(clip_norms)

    def factors(self, sq: Norms, total: torch.Tensor) -> tuple[Norms, torch.Tensor]:
        norms = {g: s.sqrt() for g, s in sq.items()}
        factors = {g: (self.clip_norms[g] / (n + EPS)).clamp(max=1.0) for g, n in norms.items()}
        clipped = torch.stack([n > self.clip_norms[g] for g, n in norms.items()]).any(0)
        return factors, clipped


class QuantileClipping(PerLayerClipping):
    """Per-layer clipping whose C_l track a quantile of the per-unit norms (clip_allocation=quantile, Andrew et
    al. 2021; allocation.py). Besides the factors, each unit has one centred indicator per block,

        b_{i,l} = 1[||g_{i,l}|| <= C_l] - 1/2      (+-1/2, so ||b_i|| = sqrt(L)/2 whatever the unit)

    which DPGradient sums over the units and releases with noise (dp_step.py). A block whose norm is not finite
    counts as above C_l (-1/2), as the clipped telemetry counts such a unit: the bound on ||b_i|| holds either way.
    """

    def indicators(self, sq: Norms) -> torch.Tensor:
        """(L, U) float32 b_{i,l}, blocks in the order of ``sq``."""
        return torch.stack([(s.sqrt() <= self.clip_norms[g]).float() - 0.5 for g, s in sq.items()])


def make_clipping(kind: str, *, max_grad_norm: float | None, blocks: list[str], counts: bool = False):
    """The strategy for ``kind`` ('flat' or 'per_layer'); no clipping norm means no clipping. ``counts``: per-layer
    clipping that also gives each unit's indicators (quantile clip norms)."""
    if max_grad_norm is None:
        return NoClipping()
    if kind == "flat":
        return FlatClipping(max_grad_norm)
    if kind == "per_layer":
        cls = QuantileClipping if counts else PerLayerClipping
        return cls({g: max_grad_norm for g in blocks})
    raise ValueError(f"clipping must be 'flat' or 'per_layer'. Found {kind!r}.")
