"""Seeds and per-replica random streams, so that simulated mode draws exactly what torchrun's ranks draw."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import random
from typing import Iterator

import numpy as np
import torch
from torch import nn

log = logging.getLogger("codistill")


def derive_seed(seed: int, *keys: object) -> int:
    """A stable 63-bit seed for (seed, *keys): independent streams for init, dropout, data of each group/replica."""
    digest = hashlib.sha256(repr((seed, *keys)).encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def device_generator(device: torch.device) -> list[torch.Generator]:
    """The generator torch draws from on `device` besides the CPU's (none for the CPU itself)."""
    if device.type != "cuda":
        return []
    torch.cuda.init()  # the default generators exist once CUDA is initialised
    return [torch.cuda.default_generators[device.index if device.index is not None else torch.cuda.current_device()]]


def owned_generators(model: nn.Module) -> list[torch.Generator]:
    """torch.Generator objects a model keeps as module attributes (its own noise source, outside the global ones)."""
    found: dict[int, torch.Generator] = {}
    for m in model.modules():
        for v in vars(m).values():
            if isinstance(v, torch.Generator):
                found.setdefault(id(v), v)
    return list(found.values())


def host_draw_state() -> tuple:
    """Positions of Python's and numpy's global generators: a change shows a draw, which no replica stream holds."""
    _, keys, pos, _, _ = np.random.get_state()
    return random.getstate(), pos, keys.tobytes()


class ReplicaRNG:
    """One set of random streams per local replica of a group: what its training step draws (dropout, ...).

    A replica's streams are swapped into the generators around its step and out again after, in both modes. So its
    draws depend on (seed, group, replica, step) only: not on how many groups and replicas share the process
    (simulated mode runs them all in one), nor on what else the process draws (initialisation, evaluation).
    The generators: torch's CPU one, the device's, and any torch.Generator the model keeps as a module attribute
    (each replica starts from its state at construction, as every rank's copy of the model would).
    Python's `random` and numpy's global generator are not per replica (swapping them would cost ~0.1 ms per
    replica and step): `use(..., check=True)` logs one line when the step draws from them.
    """

    def __init__(self, seed: int, group: int, replicas: list[int], device: torch.device, model: nn.Module) -> None:
        self.group = group
        global_ = [torch.default_generator, *device_generator(device)]
        owned = owned_generators(model)
        self.generators = global_ + owned
        own_state = tuple(g.get_state() for g in owned)
        self.states: dict[int, tuple[torch.Tensor, ...]] = {}
        for r in replicas:
            s = derive_seed(seed, "replica-rng", group, r)
            fresh = [torch.Generator(device=g.device).manual_seed(s).get_state() for g in global_]
            self.states[r] = (*fresh, *own_state)

    def _get(self) -> tuple[torch.Tensor, ...]:
        return tuple(g.get_state() for g in self.generators)

    def _set(self, state: tuple[torch.Tensor, ...]) -> None:
        for g, s in zip(self.generators, state):
            g.set_state(s)

    @contextlib.contextmanager
    def use(self, replica: int, check: bool = False) -> Iterator[None]:
        """Draw from `replica`'s streams inside the block. `check`: log a line if the block draws from Python's or
        numpy's global generator (a draw that differs between simulated mode and torchrun)."""
        host = host_draw_state() if check else None
        outer = self._get()
        self._set(self.states[replica])
        try:
            yield
        finally:
            self.states[replica] = self._get()
            self._set(outer)
        if host is not None and host_draw_state() != host:
            log.warning("group %d's training step draws from Python's `random` or numpy's global generator, which are "
                        "not kept per replica: simulated mode and torchrun draw different numbers there; "
                        "draw from torch (torch.rand, dropout) for reproducible noise", self.group)
