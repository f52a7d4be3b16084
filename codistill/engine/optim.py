"""Optimizer and learning-rate schedule of one group."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable, Optional

import torch

if TYPE_CHECKING:
    from codistill.config import OptimConfig


def build_optimizer(params: Iterable[torch.nn.Parameter], optim: OptimConfig) -> torch.optim.Optimizer:
    """The optimizer the `optim` config section names."""
    if optim.name == "sgd":
        return torch.optim.SGD(
            params, lr=optim.lr, momentum=optim.momentum, weight_decay=optim.weight_decay, nesterov=optim.nesterov
        )
    if optim.name == "adam":
        return torch.optim.Adam(params, lr=optim.lr, weight_decay=optim.weight_decay)
    if optim.name == "adamw":
        return torch.optim.AdamW(params, lr=optim.lr, weight_decay=optim.weight_decay)
    raise ValueError(f"unknown optimizer {optim.name!r}")


def build_schedule(optimizer: torch.optim.Optimizer, optim: OptimConfig, max_steps: int
                   ) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up, then constant or cosine decay to zero at max_steps."""

    def factor(step: int) -> float:
        if step < optim.warmup_steps:
            return (step + 1) / optim.warmup_steps
        if optim.schedule == "cosine":
            progress = (step - optim.warmup_steps) / max(1, max_steps - optim.warmup_steps)
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


@dataclass(frozen=True)
class OptimizerFactory:
    """A group's optimizer and learning-rate schedule, from the `optim` section and the run's length."""

    optim: OptimConfig
    max_steps: int

    @property
    def grad_clip(self) -> Optional[float]:
        return self.optim.grad_clip

    def __call__(self, params: Iterable[torch.nn.Parameter]
                 ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
        optimizer = build_optimizer(params, self.optim)
        return optimizer, build_schedule(optimizer, self.optim, self.max_steps)
