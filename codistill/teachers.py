"""Stale teacher copies: each group's private, frozen copies of its peers' parameters.

A teacher copy is a plain module in eval mode with requires_grad off, outside DDP and the optimizer. It changes
only when an exchange loads a peer's snapshot into it, so between exchanges it is stale by up to K steps, which is
what lets groups communicate rarely (Anil et al. 2018, Alg. 1).
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import nn

from codistill.logits import as_logits


class StateFlattener:
    """Packs a module's parameters and buffers into one float32 vector and back (one buffer = one collective)."""

    def __init__(self, module: nn.Module) -> None:
        self.entries = [(name, t.shape, t.numel()) for name, t in module.state_dict().items()]
        self.numel = sum(n for _, _, n in self.entries)

    def flatten(self, module: nn.Module) -> torch.Tensor:
        state = module.state_dict()
        return torch.cat([state[name].detach().reshape(-1).to(torch.float32) for name, _, _ in self.entries])

    @torch.no_grad()
    def load(self, module: nn.Module, flat: torch.Tensor) -> None:
        if flat.numel() != self.numel:
            raise ValueError(f"snapshot holds {flat.numel()} values, this architecture has {self.numel}")
        state, offset = module.state_dict(), 0
        for name, shape, n in self.entries:
            state[name].copy_(flat[offset : offset + n].view(shape))
            offset += n


class TeacherCopies:
    """The copies one group keeps of its peers, with the step each copy was taken at."""

    def __init__(self, peers: list[int], build: Callable[[int], nn.Module], device: torch.device) -> None:
        self.models: dict[int, nn.Module] = {}
        for p in peers:
            model = build(p).to(device).eval()
            model.requires_grad_(False)
            self.models[p] = model
        self.flattener = {p: StateFlattener(m) for p, m in self.models.items()}
        self.source_step: dict[int, Optional[int]] = {p: None for p in peers}

    def load(self, peer: int, flat: torch.Tensor, step: int) -> None:
        self.flattener[peer].load(self.models[peer], flat)
        self.source_step[peer] = step

    def state_dict(self) -> dict[int, dict]:
        """The loaded copies and their source steps (what a resumed run must distill from)."""
        return {
            p: {"flat": self.flattener[p].flatten(self.models[p]).cpu(), "step": s}
            for p, s in self.source_step.items()
            if s is not None
        }

    def load_state_dict(self, state: dict[int, dict]) -> None:
        for p, copy in state.items():
            self.load(p, copy["flat"], copy["step"])  # copy_ moves it to the copy's device

    @property
    def ready(self) -> list[int]:
        """Peers with a copy loaded; peers never received are left out of the aggregate."""
        return [p for p, s in self.source_step.items() if s is not None]

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [as_logits(self.models[p](x)) for p in self.ready]

    def staleness(self, step: int) -> Optional[int]:
        """Steps since the oldest copy was taken (None before the first exchange)."""
        ages = [step - s for s in self.source_step.values() if s is not None]
        return max(ages) if ages else None
