"""Preemption: a scheduler's signal becomes a flag; the ranks agree on a step, checkpoint it and exit.

Slurm sends SIGTERM (or the `--signal` a job asks for) some time before it kills a job, and torchrun forwards the
signals it handles to its workers. A handler may run between any two bytecodes, also in the middle of a
collective, so it only records the signal; the training loop reads the flag at its stop checks
(`trainer.stop_check_every`, and every report step, where the flag rides on the report's all-reduce), so all ranks
stop after the same step and write one complete checkpoint.
"""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType, TracebackType
from typing import Any, Optional, Sequence

from codistill.config import parse_signals  # noqa: F401  (re-exported: it checks trainer.preempt_signals)
from codistill.errors import Preempted  # noqa: F401  (re-exported)

log = logging.getLogger(__name__)

# Exit code of a process that stopped for a signal after writing its checkpoint (2 is a failed run, 0 a finished one)
EXIT_PREEMPTED = 3


class StopFlag:
    """While entered, the given signals set `received` instead of ending the process; the old handlers come back
    on exit. Outside the main thread (where Python cannot install handlers) it stays inert and says so."""

    def __init__(self, signals: Sequence[signal.Signals]) -> None:
        self.signals = list(signals)
        self.received: Optional[signal.Signals] = None
        self._previous: dict[signal.Signals, Any] = {}

    def _handle(self, signum: int, frame: Optional[FrameType]) -> None:
        if self.received is None:
            self.received = signal.Signals(signum)

    def __enter__(self) -> "StopFlag":
        if self.signals and threading.current_thread() is not threading.main_thread():
            log.warning("not the main thread: trainer.preempt_signals are not caught in this run")
            return self
        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, kind: Optional[type], value: Optional[BaseException], tb: Optional[TracebackType]) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()
