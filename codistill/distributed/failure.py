"""Errors anywhere end everywhere: the first failure of any rank is the one line every rank prints.

A rank that fails (any exception, in any phase) records its line in the job's key-value store, first writer wins,
and tears its process groups down at once: peers waiting for it in a collective then fail within moments instead
of after topology.timeout_s, find the record and print it too, so every rank names the rank that failed first and
why. Peers busy with other work meet the torn-down groups at their next collective (at the latest the next stop
check), or the torchrun agent stops them. The store lives in global rank 0's process: rank 0 waits, at most
topology.timeout_s, until every rank has printed the record before it exits.
"""

from __future__ import annotations

import logging
import time
import traceback
from typing import Any, Optional

FAILURE, READ = "codistill/failure", "codistill/failure_read"

# What a rank was doing, from the innermost function of the traceback that names a phase.
PHASES = {
    "build_trainer": "building", "GroupWorker.__init__": "building", "check_classes": "building",
    "Checkpointer.resume": "resuming", "restore_training": "resuming", "train_step": "training",
    "Trainer._exchange": "exchanging", "Trainer._outer_step": "exchanging", "Evaluator.sums": "evaluating",
    "Progress.report": "reporting", "Trainer._stop_agreed": "training", "Checkpointer.save": "checkpointing",
    "save_training": "checkpointing", "Checkpointer.save_final": "saving the final checkpoints",
    "Trainer.fit": "training",
}


def phase_of(error: BaseException) -> str:
    names = [getattr(f.f_code, "co_qualname", f.f_code.co_name) for f, _ in traceback.walk_tb(error.__traceback__)]
    for name in reversed(names):  # innermost first
        for key, phase in PHASES.items():
            if name == key or name.endswith("." + key):
                return phase
    return "running"


def log_traceback(error: BaseException) -> None:
    """The failure's traceback, into this rank's log file only (the console gets the one line)."""
    record = logging.LogRecord("codistill", logging.ERROR, __file__, 0, "this rank failed", None,
                               (type(error), error, error.__traceback__))
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


class FailureBoard:
    """The record of the first failure in a torchrun job (see the module docstring)."""

    def __init__(self, store: Any, rank: int, world_size: int, where: str, timeout_s: float) -> None:
        self.store, self.rank, self.world_size, self.where, self.timeout_s = store, rank, world_size, where, timeout_s

    def first_failure(self, line: str, error: BaseException) -> str:
        """Record this rank's failure unless another is recorded; the line every rank prints (the first one)."""
        mine = f"{line} [first reported by rank {self.rank} ({self.where}) while {phase_of(error)}]"
        try:
            first = self.store.compare_set(FAILURE, "", mine)
        except Exception:  # noqa: BLE001  the store went with its host (rank 0): this rank's own line
            return mine
        return first.decode() if isinstance(first, bytes) else str(first)

    def acknowledge(self) -> None:
        """This rank has printed the line: the store's host need not wait for it any longer."""
        try:
            self.store.add(READ, 1)
        except Exception:  # noqa: BLE001  the host is gone: nobody waits
            pass

    def wait_for_readers(self) -> None:
        """On the store's host: keep the store up until every rank has printed the record, or timeout_s."""
        deadline = time.monotonic() + self.timeout_s
        try:
            while self.store.add(READ, 0) < self.world_size and time.monotonic() < deadline:
                time.sleep(0.05)
        except Exception:  # noqa: BLE001  nothing left to keep up
            pass


def board(store: Optional[Any], layout: Any, timeout_s: float) -> Optional[FailureBoard]:
    if store is None:
        return None
    return FailureBoard(store, layout.rank, layout.world_size, f"group {layout.group}, replica {layout.replica}",
                        timeout_s)
