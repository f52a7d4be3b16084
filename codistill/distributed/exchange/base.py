"""The exchange interface: how groups' snapshots travel. One interface, several transports.

A transport moves payloads: flat uint8 tensors made by a codec (codistill/distributed/exchange/codecs.py). An
exchange is launched at one step and waited for at the same or a later one (distill.exchange_delay), so a transport
that can overlap the transfer with training (an asynchronous all-gather, a background upload and download) does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional, Protocol

import torch


@dataclass(frozen=True)
class Snapshot:
    """A group's payload (flattened parameters + buffers, encoded) as it was after `step` completed steps."""

    group: int
    step: int
    flat: torch.Tensor


Entries = tuple[tuple[str, tuple[int, ...], int], ...]  # (name, shape, numel) of each tensor, in flattening order


@dataclass(frozen=True)
class StateLayout:
    """What a transport knows of the states it moves (no model, no worker): their flattened layout and payloads.

    `entries[g]`: the layout of every group this process publishes or reads (this replica's local shards with
    `sharded`, topology.strategy=fsdp); `sizes[g]`: the length of every group's payload on this rank, in `dtype`
    (uint8: a codec's bytes, codistill/distributed/exchange/codecs.py).
    """

    entries: Mapping[int, Entries]
    sizes: tuple[int, ...]
    dtype: torch.dtype = torch.uint8
    sharded: bool = False


class InFlight(Protocol):
    def wait(self) -> dict[int, Snapshot]:
        """The groups' snapshots this exchange delivers (waiting for the transfer if it has not finished).

        A group may be missing (no snapshot of it yet, or none newer than the one last delivered): its teacher copy
        then stays as it is. A snapshot's `step` may be older than the launch step (a slower peer).
        """
        ...


class Done:
    """An exchange whose snapshots are already here (simulated mode, or one restored from a checkpoint)."""

    def __init__(self, snapshots: dict[int, Snapshot]) -> None:
        self.snapshots = snapshots

    def wait(self) -> dict[int, Snapshot]:
        return self.snapshots


class Exchange(Protocol):
    def launch(self, step: int, local: dict[int, torch.Tensor], sizes: Optional[list[int]] = None) -> InFlight:
        """Start publishing the local groups' payloads (taken after `step` steps) and fetching the peers'.

        `sizes[g]`: the payload length of every group at this launch (a fragment's, with distill.fragments > 1).
        """
        ...

    def exchange(self, step: int, local: dict[int, torch.Tensor]) -> dict[int, Snapshot]:
        """`launch` and wait at once (distill.exchange_delay=0)."""
        ...

    def close(self) -> None:
        """Finish pending work (a snapshot still being written: peers may read it)."""
        ...
