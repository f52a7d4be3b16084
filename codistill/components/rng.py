"""Seeds and per-replica random streams, so that simulated mode draws exactly what torchrun's ranks draw."""

from __future__ import annotations

import contextlib
import hashlib
from typing import Iterator

import torch


def derive_seed(seed: int, *keys: object) -> int:
    """A stable 63-bit seed for (seed, *keys): independent streams for init, dropout, data of each group/replica."""
    digest = hashlib.sha256(repr((seed, *keys)).encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


class ReplicaRNG:
    """One torch RNG stream per local replica of a group (dropout draws).

    Under torchrun a process runs one replica, so its global generator *is* the stream. In simulated mode one
    process runs all R replicas, so each replica's generator state is swapped in around its micro-batch.
    """

    def __init__(self, seed: int, group: int, replicas: list[int], device: torch.device) -> None:
        self.device = device
        self.states: dict[int, tuple[torch.Tensor, ...]] = {}
        for r in replicas:
            torch.manual_seed(derive_seed(seed, "replica-rng", group, r))
            self.states[r] = self._get()
        self.swap = len(replicas) > 1

    def _get(self) -> tuple[torch.Tensor, ...]:
        cuda = (torch.cuda.get_rng_state(self.device),) if self.device.type == "cuda" else ()
        return (torch.get_rng_state(), *cuda)

    def _set(self, state: tuple[torch.Tensor, ...]) -> None:
        torch.set_rng_state(state[0])
        if self.device.type == "cuda":
            torch.cuda.set_rng_state(state[1], self.device)

    @contextlib.contextmanager
    def use(self, replica: int) -> Iterator[None]:
        if not self.swap:
            yield
            return
        outer = self._get()
        self._set(self.states[replica])
        try:
            yield
        finally:
            self.states[replica] = self._get()
            self._set(outer)

    def activate(self) -> None:
        """Make the (single) stream the process's global generator; used once at start under torchrun."""
        if not self.swap:
            self._set(next(iter(self.states.values())))
