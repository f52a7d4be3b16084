"""Rank-local work before a collective is waited for through a real TCPStore within timeout_s + bytes / bandwidth:
a slow rank with many bytes is waited for, one with few bytes is not, and a recorded failure ends the wait."""

from __future__ import annotations

import threading
import time

import pytest
from torch.distributed import TCPStore

from codistill.distributed.failure import FAILURE
from codistill.distributed.local_work import LocalWorkTimeout, PeerFailed, local_work


def slow_peer(store: TCPStore, key: str, nbytes: int, seconds: float) -> threading.Thread:
    """The other rank: announces its bytes, works `seconds`, counts itself done."""
    def run() -> None:
        with local_work(store, key, 2, nbytes, 600, 1.0, "the test's work"):
            time.sleep(seconds)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_the_budget_grows_with_the_bytes_announced() -> None:
    store = TCPStore("127.0.0.1", 0, 1, is_master=True, wait_for_workers=False)
    # 4 MB at 1 MB/s: a budget of 0.5 + 4 s, and the peer takes 2 s: waited for
    peer = slow_peer(store, "big", 4_000_000, 2.0)
    with local_work(store, "big", 2, 0, 0.5, 1.0, "the test's work"):
        pass
    peer.join()
    # no bytes: a budget of 0.5 s, the peer takes 2 s: one line naming the budget
    peer = slow_peer(store, "small", 0, 2.0)
    with pytest.raises(LocalWorkTimeout, match=r"did not finish the test's work \(0 bytes\) within 0.5 s \(topology.timeout_s=0.5"):
        with local_work(store, "small", 2, 0, 0.5, 1.0, "the test's work"):
            pass
    peer.join()


def test_a_recorded_failure_ends_the_wait() -> None:
    store = TCPStore("127.0.0.1", 0, 1, is_master=True, wait_for_workers=False)
    store.set(FAILURE, "boom [first reported by rank 1 (group 0, replica 1) while checkpointing]")
    with pytest.raises(PeerFailed):
        with local_work(store, "w", 2, 0, 600, 1.0, "the test's work"):
            pass
