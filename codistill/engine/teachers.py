"""Stale teacher copies: frozen copies of peers' parameters, refreshed only by exchanges.

A teacher copy is a plain module in eval mode with requires_grad off, outside DDP and the optimizer. It changes
only when an exchange loads a peer's snapshot into it, so between exchanges it is stale by up to K steps, which is
what lets groups communicate rarely (Anil et al. 2018, Alg. 1).

Copies live in a per-process pool: one copy of each group's snapshot, shared by every local student that distils
from it (each runs the forward on its own batch). In simulated mode that is G copies for G groups, not G x (G - 1);
under torchrun a rank holds its G - 1 peers. Copies may be stored, exchanged and run in bfloat16. With
topology.strategy=fsdp each copy is sharded like the student (codistill/distributed/sharding.py): a rank holds 1/R of it.
"""

from __future__ import annotations

from typing import Callable, Optional, Protocol

import torch
from torch import nn

from codistill.engine.logits import as_logits, call
from codistill.engine.precision import teacher_autocast
from codistill.distributed.sharding import local, unique_state


class TeacherSource(Protocol):
    """What a group distils from: its peers' exchanged copies (TeacherCopies) or mode=kd's fixed teacher (kd.py)."""

    models: dict[int, nn.Module]  # the copies an exchange refreshes and a checkpoint keeps, by peer (none: {})
    source_step: dict[int, Optional[int]]  # the step each copy was taken at

    def predict(self, x: torch.Tensor) -> list[torch.Tensor]: ...

    def staleness(self, step: int) -> Optional[int]: ...

    def layouts(self) -> dict[int, list]: ...

    def state_dict(self) -> dict[int, dict]: ...

    def load_state_dict(self, state: dict[int, dict]) -> None: ...

    def restore_steps(self, steps: dict[int, int]) -> None: ...


class StateFlattener:
    """Packs a module's parameters and buffers into one vector (one buffer = one collective) and back.

    A sharded module (FSDP2) packs only this rank's shards: the local tensors of its DTensors. A tied tensor (input
    and output embeddings) is packed once, under its first name: loading it writes every tied use.
    """

    def __init__(self, module: nn.Module, dtype: torch.dtype = torch.float32) -> None:
        unique = unique_state(module)
        self.entries = [(name, local(t).shape, local(t).numel()) for name, t, _ in unique]
        self.is_param = [is_param for _, _, is_param in unique]  # parameters, not buffers (the outer step's split)
        self.numel = sum(n for _, _, n in self.entries)
        self.dtype = dtype

    def flatten(self, module: nn.Module) -> torch.Tensor:
        state = module.state_dict()
        return torch.cat([local(state[name]).detach().reshape(-1).to(self.dtype) for name, _, _ in self.entries])

    @torch.no_grad()
    def load(self, module: nn.Module, flat: torch.Tensor) -> None:
        if flat.numel() != self.numel:
            raise ValueError(f"snapshot holds {flat.numel()} values, this architecture has {self.numel}")
        state, offset = module.state_dict(), 0
        for name, shape, n in self.entries:
            local(state[name]).copy_(flat[offset : offset + n].view(shape))
            offset += n


class TeacherPool:
    """This process's teacher copies: at most one per group, built on first use, loaded once per snapshot."""

    def __init__(self, build: Callable[[int], nn.Module], device: torch.device, dtype: torch.dtype = torch.float32,
                 compile: bool = False, shard: Optional[Callable[[nn.Module, int], nn.Module]] = None) -> None:
        """`shard(model, group)`: shards a copy like that group's student (topology.strategy=fsdp)."""
        self.build, self.device, self.dtype, self.compile, self.shard = build, device, dtype, compile, shard
        self.models: dict[int, nn.Module] = {}
        self.forwards: dict[int, Callable] = {}  # the (compiled) forward of each copy
        self.flattener: dict[int, StateFlattener] = {}
        self.loaded_step: dict[int, Optional[int]] = {}

    def get(self, group: int) -> nn.Module:
        if group not in self.models:
            model = self.build(group).to(self.device, self.dtype).eval()
            model.requires_grad_(False)
            if self.shard is not None:
                model = self.shard(model, group)
            self.models[group] = model
            self.forwards[group] = torch.compile(model) if self.compile else model
            self.flattener[group] = StateFlattener(model, self.dtype)
            self.loaded_step[group] = None
        return self.models[group]

    def load(self, group: int, flat: torch.Tensor, step: int) -> None:
        """Copy `group`'s snapshot of `step` into its copy (once: students sharing the copy load the same one).

        The copy is written in place, so a compiled forward keeps running on the new weights without recompiling.
        """
        if self.loaded_step[group] != step:
            self.flattener[group].load(self.models[group], flat)
            self.loaded_step[group] = step


class TeacherCopies:
    """The copies one group distils from (its peers', from the pool), with the step each was taken at."""

    def __init__(self, peers: list[int], pool: TeacherPool) -> None:
        self.pool = pool
        self.models: dict[int, nn.Module] = {p: pool.get(p) for p in peers}
        self.flattener = {p: pool.flattener[p] for p in peers}
        self.source_step: dict[int, Optional[int]] = {p: None for p in peers}

    def layouts(self) -> dict[int, list]:
        """The flattened layout (StateFlattener.entries) of every copy: what an exchange must deliver for each peer."""
        return {p: f.entries for p, f in self.flattener.items()}

    def load(self, peer: int, flat: torch.Tensor, step: int) -> None:
        self.pool.load(peer, flat, step)
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
            self.load(p, copy["flat"], copy["step"])  # copy_ moves it to the copy's device and dtype

    def restore_steps(self, steps: dict[int, int]) -> None:
        """The copies' source steps after their weights were restored in place (sharded checkpoints)."""
        for p, step in steps.items():
            self.source_step[p] = step
            self.pool.loaded_step[p] = step

    @property
    def ready(self) -> list[int]:
        """Peers with a copy loaded; peers never received are left out of the aggregate."""
        return [p for p, s in self.source_step.items() if s is not None]

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> list[torch.Tensor]:
        with teacher_autocast(self.pool.dtype, self.pool.device):
            return [as_logits(call(self.pool.forwards[p], x)) for p in self.ready]

    def staleness(self, step: int) -> Optional[int]:
        """Steps since the oldest copy was taken (None before the first exchange)."""
        ages = [step - s for s in self.source_step.values() if s is not None]
        return max(ages) if ages else None


def state_sizes(build: Callable[[int], nn.Module], groups: int) -> list[int]:
    """Length of every group's flattened state (what an exchange moves), from models built on the meta device."""
    with torch.device("meta"):
        return [StateFlattener(build(g)).numel for g in range(groups)]
