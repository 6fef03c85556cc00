"""Optimizers and gradient clipping.

Frozen parameters (``requires_grad`` False) never enter an optimizer. RegionCLIP's pretraining and transfer use
SGD (momentum 0.9, weight decay 1e-4) with each parameter's gradient norm clipped to 5.0 separately
(``GradientClipping("per_parameter", 5.0)``); the embedded world's trainers use AdamW.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable

import torch
from torch import nn

#: ``no_decay(name, parameter)`` → True for parameters trained without weight decay
NoDecay = Callable[[str, nn.Parameter], bool]


def trainable_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """``(name, parameter)`` of every parameter that requires a gradient, in ``named_parameters`` order."""
    return [(name, param) for name, param in model.named_parameters() if param.requires_grad]


def parameter_groups(model: nn.Module, weight_decay: float, no_decay: NoDecay | None = None) -> list[dict[str, Any]]:
    """The trainable parameters as optimizer groups: one group with ``weight_decay``, or - given ``no_decay`` - a
    decayed group followed by a group with weight decay 0."""
    params = trainable_parameters(model)
    if no_decay is None:
        return [{"params": [p for _, p in params], "weight_decay": weight_decay}]
    exempt = [no_decay(name, p) for name, p in params]
    return [
        {"params": [p for (_, p), skip in zip(params, exempt) if not skip], "weight_decay": weight_decay},
        {"params": [p for (_, p), skip in zip(params, exempt) if skip], "weight_decay": 0.0},
    ]


def build_optimizer(
    model: nn.Module,
    name: str,
    lr: float,
    weight_decay: float,
    *,
    no_decay: NoDecay | None = None,
    momentum: float = 0.9,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    fused: bool | None = None,
) -> torch.optim.Optimizer:
    """``"sgd"`` (``momentum``, not Nesterov, as detectron2 builds it) or ``"adamw"`` (``betas``, ``eps``) over the
    trainable parameters of ``model`` (`parameter_groups`); ``fused`` picks the fused kernel (None: torch's
    default)."""
    groups = parameter_groups(model, weight_decay, no_decay)
    if not any(group["params"] for group in groups):
        raise ValueError("the model has no trainable parameters (all have requires_grad False)")
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay, fused=fused)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, fused=fused)
    raise ValueError(f"unknown optimizer {name!r}; choose 'sgd' or 'adamw'")


@dataclass(frozen=True)
class GradientClipping:
    """Clip gradient norms before the optimizer step (``torch.nn.utils.clip_grad_norm_`` semantics: gradients
    whose norm exceeds ``max_norm`` are scaled by ``max_norm / (norm + 1e-6)``).

    ``"per_parameter"`` clips each parameter's gradient on its own (detectron2's ``CLIP_TYPE: norm``, which
    RegionCLIP uses with 5.0); ``"global"`` clips the norm of all gradients together."""

    mode: str = "per_parameter"
    max_norm: float = 5.0
    norm_type: float = 2.0

    def __post_init__(self) -> None:
        if self.mode not in ("per_parameter", "global"):
            raise ValueError(f"gradient clipping mode must be 'per_parameter' or 'global', got {self.mode!r}")
        if self.max_norm <= 0:
            raise ValueError(f"max_norm must be > 0, got {self.max_norm}")

    def __call__(self, parameters: Iterable[nn.Parameter]) -> None:
        with_grad = [p for p in parameters if p.grad is not None]
        if self.mode == "global":
            torch.nn.utils.clip_grad_norm_(with_grad, self.max_norm, self.norm_type)
            return
        for param in with_grad:
            torch.nn.utils.clip_grad_norm_(param, self.max_norm, self.norm_type)
