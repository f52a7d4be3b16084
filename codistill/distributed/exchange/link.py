"""A slow link in front of a transport (scripts/bench.py --link-mbps): what an exchange costs between clusters.

Every launch queues its bytes on one link of `mbps` megabits per second: the transfer starts when the link is free
(after the transfers launched before it), takes bytes / bandwidth, and completes `latency_s` later. Waiting for an
exchange before it has completed sleeps for the rest, which is what a blocking exchange costs; an exchange waited for
tau steps later costs nothing if the link finished during those steps. The bytes are those one group receives: the
payloads of its G - 1 peers (the groups' links run in parallel).
"""

from __future__ import annotations

import time
from typing import Any, Optional

import torch

from codistill.distributed.exchange.base import InFlight, Snapshot


class _Delayed:
    def __init__(self, inner: InFlight, done_at: float, link: "SimulatedLink") -> None:
        self.inner, self.done_at, self.link = inner, done_at, link

    def wait(self) -> dict[int, Snapshot]:
        left = self.done_at - time.perf_counter()
        if left > 0:
            self.link.stalled_s += left
            time.sleep(left)
        return self.inner.wait()


class SimulatedLink:
    def __init__(self, inner: Any, mbps: float, latency_s: float = 0.0) -> None:
        self.inner, self.bits_per_s, self.latency_s = inner, mbps * 1e6, latency_s
        self.free_at = 0.0
        self.stalled_s = 0.0  # time waits spent sleeping for the link
        self.peak_bytes = 0  # the largest transfer one exchange put on the link
        self.bytes = 0  # every transfer's bytes

    def launch(self, step: int, local: dict[int, torch.Tensor], sizes: Optional[list[int]] = None) -> _Delayed:
        sizes = sizes or [t.numel() * t.element_size() for t in local.values()]
        received = max(sum(sizes) - s for s in sizes) if len(sizes) > 1 else 0
        self.peak_bytes = max(self.peak_bytes, received)
        self.bytes += received
        start = max(time.perf_counter(), self.free_at)
        self.free_at = start + received * 8 / self.bits_per_s
        return _Delayed(self.inner.launch(step, local, sizes), self.free_at + self.latency_s, self)

    def exchange(self, step: int, local: dict[int, torch.Tensor]) -> dict[int, Snapshot]:
        return self.launch(step, local).wait()

    def close(self) -> None:
        if hasattr(self.inner, "close"):
            self.inner.close()
