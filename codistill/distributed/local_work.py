"""Rank-local work before a collective (writing or hashing a checkpoint, a group leader reading snapshots), waited
for with a budget that grows with its bytes instead of inside the collective's fixed topology.timeout_s.

Every rank taking part announces the bytes its part will move (0 for a rank that only waits), does its part, and
counts itself done in the job's store. Then each waits, polling the store, until all are done: the budget is
topology.timeout_s + (bytes announced by all) / topology.io_bandwidth_mb_s, so a multi-GB checkpoint on a slow disk
does not end the job, while a rank that died is still found out in bounded time. The collective that follows then
starts with every rank ready. A failure recorded by any rank (codistill/distributed/failure.py) ends the wait at
once.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any, Iterator

from codistill.distributed.failure import FAILURE
from codistill.errors import LocalWorkTimeout, PeerFailed

_POLL_S = 0.02


@contextlib.contextmanager
def local_work(store: Any, key: str, ranks: int, nbytes: int, timeout_s: float, bandwidth_mb_s: float,
               what: str) -> Iterator[None]:
    """Announce `nbytes`, run the body (this rank's part), then wait until all `ranks` are done (see the module)."""
    store.add(f"{key}/bytes", int(nbytes))
    yield
    store.add(f"{key}/done", 1)
    start = time.monotonic()
    while True:
        if store.add(f"{key}/done", 0) >= ranks:
            return
        if store.check([FAILURE]):
            raise PeerFailed(f"another rank failed while this one waited for {what}")
        announced = store.add(f"{key}/bytes", 0)
        budget = timeout_s + announced / (bandwidth_mb_s * 1e6)
        if time.monotonic() - start > budget:
            raise LocalWorkTimeout(
                f"the ranks did not finish {what} ({announced} bytes) within {budget:.1f} s (topology.timeout_s="
                f"{timeout_s:g} + bytes / topology.io_bandwidth_mb_s={bandwidth_mb_s:g}): a rank is stuck, or its "
                "disk is slower than that (lower topology.io_bandwidth_mb_s)")
        time.sleep(_POLL_S)
