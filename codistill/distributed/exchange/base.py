"""The exchange interface: how groups' snapshots travel. One interface, several transports.

A transport moves payloads: flat uint8 tensors made by a codec (codistill/distributed/exchange/codecs.py). An
exchange is launched at one step and waited for at the same or a later one (distill.exchange_delay), so a transport
that can overlap the transfer with training (an asynchronous all-gather, a background upload and download) does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Protocol

import torch


@dataclass(frozen=True)
class Snapshot:
    """A group's payload (flattened parameters + buffers, encoded) as it was after `step` completed steps."""

    group: int
    step: int
    flat: torch.Tensor


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
