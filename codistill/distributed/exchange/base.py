"""The exchange interface: how groups' snapshots travel. One interface, several transports."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch


@dataclass(frozen=True)
class Snapshot:
    """A group's flattened parameters + buffers as they were after `step` completed steps."""

    group: int
    step: int
    flat: torch.Tensor


class Exchange(Protocol):
    def exchange(self, step: int, local: dict[int, torch.Tensor]) -> dict[int, Snapshot]:
        """Publish the local groups' states (taken after `step` steps); return the groups' newest snapshots.

        A group may be missing from the result (no snapshot of it yet, or none newer than the one last returned):
        its teacher copy then stays as it is. A snapshot's `step` may be older than `step` (a slower peer).
        """
        ...
