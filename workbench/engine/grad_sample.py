"""Per-example gradients of the trainable ``nn.Linear`` modules (LoRA A/B and classifier heads).

Why our own hooks and not Opacus' ``GradSampleModule``: the DP step needs, per micro-batch, the
per-example norm of every module separately (per-layer clipping and noise allocation, the
per-module telemetry), and wants to clip and discard the per-example tensors right after each
micro-batch so memory stays flat.  LoRA adapters and peft's ``modules_to_save`` heads are plain
``nn.Linear`` layers, so one sampler covers everything that trains; the maths is the same as
Opacus' ``compute_linear_grad_sample`` (grad_W_i = sum_t g_it x_it^T) and is tested against a
microbatch-of-1 oracle.  Any trainable parameter outside an ``nn.Linear`` is refused loudly
rather than silently left un-clipped (the failure mode of Opacus issue #820).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from workbench.errors import UserError

# Per-example gradient rules, keyed by layer type (as Opacus' register_grad_sampler): each takes the
# module, its input x (B, T, in) and the gradient of its output g (B, T, out), both fp32, and returns
# the per-example (weight, bias) gradients (None for a frozen parameter). Only nn.Linear is needed:
# LoRA A/B and peft's modules_to_save heads are Linear layers. LoRA on embeddings is not offered, so
# there is no embedding rule, and trainable_modules refuses such parameters in one place.
GradSampler = Callable[[nn.Module, torch.Tensor, torch.Tensor], tuple[torch.Tensor | None, torch.Tensor | None]]
GRAD_SAMPLERS: dict[type[nn.Module], GradSampler] = {}


def register_grad_sampler(layer_type: type[nn.Module]) -> Callable[[GradSampler], GradSampler]:
    def register(rule: GradSampler) -> GradSampler:
        GRAD_SAMPLERS[layer_type] = rule
        return rule

    return register


@register_grad_sampler(nn.Linear)
def linear_grad_sample(module: nn.Linear, x: torch.Tensor, g: torch.Tensor):
    """grad_W_i = sum_t g_it x_it^T, grad_b_i = sum_t g_it (Opacus' compute_linear_grad_sample)."""
    weight = torch.einsum("bto,bti->boi", g, x) if module.weight.requires_grad else None  # (B, out, in)
    bias = g.sum(1) if module.bias is not None and module.bias.requires_grad else None  # (B, out)
    return weight, bias


class UnsupportedModelError(UserError, RuntimeError):
    """The model has trainable parameters we cannot compute per-example gradients for."""


@dataclass
class ModuleGrads:
    """Per-example gradients of one Linear module for the current micro-batch."""

    weight: torch.Tensor | None = None  # (B, out, in), fp32
    bias: torch.Tensor | None = None  # (B, out), fp32

    def add(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        self.weight = weight if self.weight is None else self.weight + weight
        if bias is not None:
            self.bias = bias if self.bias is None else self.bias + bias

    def sq_norms(self) -> torch.Tensor:
        """(B,) squared per-example norm over this module's parameters."""
        out = self.weight.flatten(1).pow(2).sum(1)
        if self.bias is not None:
            out = out + self.bias.pow(2).sum(1)
        return out


@dataclass
class PerExampleGrads:
    """Hooks that record per-example gradients of every trainable Linear in ``model``."""

    model: nn.Module
    modules: dict[str, nn.Module] = field(init=False)
    grads: dict[str, ModuleGrads] = field(init=False, default_factory=dict)
    enabled: bool = field(init=False, default=False)

    def __post_init__(self) -> None:
        self.modules = trainable_modules(self.model)
        self._handles = [m.register_forward_hook(self._forward_hook(name)) for name, m in self.modules.items()]

    def trainable_parameters(self) -> dict[str, list[tuple[str, nn.Parameter]]]:
        """Module name -> its trainable (param_name, parameter) pairs, 'weight' first."""
        out = {}
        for name, m in self.modules.items():
            out[name] = [
                (pn, p) for pn, p in (("weight", m.weight), ("bias", m.bias)) if p is not None and p.requires_grad
            ]
        return out

    def reset(self) -> None:
        self.grads = {}

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def _forward_hook(self, name: str):
        def hook(module: nn.Linear, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            if not (self.enabled and torch.is_grad_enabled() and output.requires_grad):
                return
            x = inputs[0].detach()
            output.register_hook(lambda g, x=x: self._backward(name, module, x, g))

        return hook

    def _backward(self, name: str, module: nn.Module, x: torch.Tensor, g: torch.Tensor) -> None:
        # Per-example grads in fp32 whatever the autocast dtype of the backbone.
        b = x.shape[0]
        x = x.reshape(b, -1, x.shape[-1]).float()  # (B, T, in)
        g = g.reshape(b, -1, g.shape[-1]).float()  # (B, T, out)
        weight, bias = rule_for(module)(module, x, g)
        self.grads.setdefault(name, ModuleGrads()).add(weight, bias)


def rule_for(module: nn.Module) -> GradSampler | None:
    """The per-example rule of ``module``'s type, or of its nearest registered base class."""
    return next((GRAD_SAMPLERS[t] for t in type(module).__mro__ if t in GRAD_SAMPLERS), None)


def trainable_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Every module of a type with a per-example rule (GRAD_SAMPLERS) that has a trainable parameter;
    any other trainable parameter is refused here, the one place that decides what can be privatised."""
    found: dict[str, nn.Module] = {}
    covered: set[int] = set()
    for name, module in model.named_modules():
        if rule_for(module) is not None and any(p.requires_grad for p in module.parameters(recurse=False)):
            found[name] = module
            covered.update(id(p) for p in module.parameters(recurse=False))
    stray = [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in covered]
    if any("lora_embedding" in n for n in stray):
        raise UnsupportedModelError(
            f"LoRA on embedding layers is not supported (no per-example gradient rule for embeddings): {stray[:3]}. "
            "Leave the embedding layers out of lora_target_modules."
        )
    if stray:
        raise UnsupportedModelError(
            f"trainable parameters outside nn.Linear layers cannot be privatised: {stray[:5]}. "
            "Train LoRA adapters (and Linear heads) only."
        )
    if not found:
        raise UnsupportedModelError("the model has no trainable parameters; check the LoRA target modules.")
    return found
