"""The exchange interface: how groups' snapshots travel. One interface, several transports."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional, Protocol

import torch


@dataclass(frozen=True)
class Snapshot:
    """A group's flattened parameters + buffers as they were after `step` completed steps."""

    group: int
    step: int
    flat: torch.Tensor


Entries = tuple[tuple[str, tuple[int, ...], int], ...]  # (name, shape, numel) of each tensor, in flattening order


@dataclass(frozen=True)
class StateLayout:
    """What a transport knows of the states it moves (no model, no worker): their flattened layout and dtype.

    `entries[g]`: the layout of every group this process publishes or reads (this replica's local shards with
    `sharded`, topology.strategy=fsdp); `sizes[g]`: the flat length of every group's state on this rank.
    """

    entries: Mapping[int, Entries]
    sizes: tuple[int, ...]
    dtype: torch.dtype = torch.float32
    sharded: bool = False


class Exchange(Protocol):
    def exchange(self, step: int, local: dict[int, torch.Tensor]) -> dict[int, Snapshot]:
        """Publish the local groups' states (taken after `step` steps); return the groups' newest snapshots.

        A group may be missing from the result (no snapshot of it yet, or none newer than the one last returned):
        its teacher copy then stays as it is. A snapshot's `step` may be older than `step` (a slower peer).
        """
        ...

    def traffic_line(self, step: int) -> Optional[str]:
        """What the last exchange moved, for the log (None: nothing worth a line)."""
        ...

    def close(self) -> None:
        """Finish pending work (a snapshot still being written: peers may read it)."""
        ...
