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

from typing import Any, Callable, Optional, Protocol

import torch
from torch import nn

from codistill.engine import fused_head
from codistill.engine.chunked import Prediction
from codistill.engine.precision import teacher_autocast
from codistill.distributed.sharding import local, unique_state


class TeacherSource(Protocol):
    """What a group distils from: its peers' exchanged copies (TeacherCopies) or mode=kd's fixed teacher (kd.py)."""

    models: dict[int, nn.Module]  # the copies an exchange refreshes and a checkpoint keeps, by peer (none: {})
    source_step: dict[int, Optional[int]]  # the step each copy was taken at

    def predict(self, x: torch.Tensor, head: Optional[str] = None) -> list[Prediction]: ...

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

    def flatten(self, module: nn.Module, first: int = 0, last: Optional[int] = None) -> torch.Tensor:
        """Entries [first, last) packed (all by default; a fragment's with distill.fragments)."""
        state = module.state_dict()
        return torch.cat([local(state[name]).detach().reshape(-1).to(self.dtype)
                          for name, _, _ in self.entries[first:last]])

    @torch.no_grad()
    def load(self, module: nn.Module, flat: torch.Tensor, first: int = 0, last: Optional[int] = None) -> None:
        """Copy `flat` (entries [first, last) packed) into the module."""
        entries = self.entries[first:last]
        numel = sum(n for _, _, n in entries)
        if flat.numel() != numel:
            raise ValueError(f"snapshot holds {flat.numel()} values, this architecture has {numel}")
        state, offset = module.state_dict(), 0
        for name, shape, n in entries:
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
        self.loaded_step: dict[int, Any] = {}  # the step (and fragment) last loaded into each copy

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

    def load(self, group: int, flat: torch.Tensor, step: int, part: Optional[tuple[int, int, int]] = None) -> None:
        """Copy `group`'s snapshot of `step` into its copy (once: students sharing the copy load the same one).

        `part`: (fragment, first entry, last entry) when `flat` is one fragment of the state (distill.fragments).
        The copy is written in place, so a compiled forward keeps running on the new weights without recompiling.
        """
        key = step if part is None else (step, part[0])
        if self.loaded_step[group] != key:
            first, last = (0, None) if part is None else part[1:]
            self.flattener[group].load(self.models[group], flat, first, last)
            self.loaded_step[group] = key


class TeacherCopies:
    """The copies one group distils from (its peers', from the pool), with the step each was taken at."""

    def __init__(self, peers: list[int], pool: TeacherPool) -> None:
        self.pool = pool
        self.models: dict[int, nn.Module] = {p: pool.get(p) for p in peers}
        self.flattener = {p: pool.flattener[p] for p in peers}
        # the step each copy was taken at: its oldest fragment's with distill.fragments (then per fragment below)
        self.source_step: dict[int, Optional[int]] = {p: None for p in peers}
        self.fragment_steps: dict[int, list[Optional[int]]] = {}

    def layouts(self) -> dict[int, list]:
        """The flattened layout (StateFlattener.entries) of every copy: what an exchange must deliver for each peer."""
        return {p: f.entries for p, f in self.flattener.items()}

    def load(self, peer: int, flat: torch.Tensor, step: int, part: Optional[tuple[int, int, int, int]] = None) -> None:
        """`part`: (fragment, fragments, first entry, last entry) when `flat` is one fragment of the peer's state."""
        if part is None:
            self.pool.load(peer, flat, step)
            self.source_step[peer] = step
            self.fragment_steps.pop(peer, None)
            return
        fragment, fragments, first, last = part
        self.pool.load(peer, flat, step, (fragment, first, last))
        steps = self.fragment_steps.setdefault(peer, [None] * fragments)
        steps[fragment] = step
        self.source_step[peer] = None if None in steps else min(steps)  # ready once every fragment has arrived

    def state_dict(self) -> dict[int, dict]:
        """The loaded copies and their source steps (what a resumed run must distill from)."""
        return {
            p: {"flat": self.flattener[p].flatten(self.models[p]).cpu(), "step": s,
                **({"fragment_steps": self.fragment_steps[p]} if p in self.fragment_steps else {})}
            for p, s in self.source_step.items()
            if s is not None
        }

    def load_state_dict(self, state: dict[int, dict]) -> None:
        for p, copy in state.items():
            self.load(p, copy["flat"], copy["step"])  # copy_ moves it to the copy's device and dtype
            if "fragment_steps" in copy:
                self.fragment_steps[p] = list(copy["fragment_steps"])
                self.pool.loaded_step[p] = None

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
    def predict(self, x: torch.Tensor, head: Optional[str] = None) -> list[Prediction]:
        """The ready copies' predictions on x: logits, or hidden states and head when layer `head` is fused."""
        with teacher_autocast(self.pool.dtype, self.pool.device):
            return [fused_head.predict(self.pool.forwards[p], self.models[p], head, x) for p in self.ready]

    def staleness(self, step: int) -> Optional[int]:
        """Steps since the oldest copy was taken (None before the first exchange)."""
        ages = [step - s for s in self.source_step.values() if s is not None]
        return max(ages) if ages else None


def state_sizes(build: Callable[[int], nn.Module], groups: int) -> list[int]:
    """Length of every group's flattened state (what an exchange moves), from models built on the meta device."""
    with torch.device("meta"):
        return [StateFlattener(build(g)).numel for g in range(groups)]
