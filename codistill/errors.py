"""The error types of codistill, in one place that imports nothing heavy.

Every layer raises them (a config value, a dataset's sample, a disk, a rank that never arrived) and the entry points
turn them into one `codistill: error:` line, so they sit below everything else: importing an error type never pulls
in the schema, torch or Hydra, and no import can circle through them. Each message is one line that says what to do.
"""

from __future__ import annotations

from typing import Any


class ConfigError(ValueError):
    """A user-facing configuration mistake; its message is one line that says what to do."""


class StartupError(RuntimeError):
    """A start-up wait (process group, mesh, an agreement of the ranks) ran out of topology.timeout_s. One line."""


class StorageError(OSError):
    """A checkpoint or snapshot could not be written (disk full, directory gone or unwritable)."""


class ExchangeWriteError(StorageError):
    """Publishing a snapshot failed (disk full, directory gone or unwritable)."""


class DataFormatError(ValueError):
    """Samples that are not (input, target) pairs, or labels outside [0, C): one line that says what came."""

    @staticmethod
    def line(e: Exception) -> str:
        """The one-line message, also of an error a DataLoader worker raised (re-raised with its traceback)."""
        last = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        return last.split("DataFormatError: ", 1)[-1]


class DataMissingError(FileNotFoundError):
    """A dataset's files are absent; the message names the command that installs them."""


class ModelOutputError(TypeError):
    """A model returned something that holds no logits tensor."""


class NonFiniteLossError(RuntimeError):
    """The training loss or the parameters stopped being finite; the message says what to lower."""


class RunError(RuntimeError):
    """A run that stopped: bad input, a non-finite loss, a full disk. Its message is one line that says what to do.

    `printed`: the line is already on stderr (a failed torchrun rank prints it before it may be signalled)."""

    def __init__(self, message: str, printed: bool = False) -> None:
        super().__init__(message)
        self.printed = printed


class LocalWorkTimeout(RuntimeError):
    """Some rank did not finish its rank-local work within the budget its bytes allow. One line."""


class PeerFailed(RuntimeError):
    """Another rank recorded a failure while this one waited for it (the first failure names it)."""


class Preempted(Exception):
    """The run stopped early for a preemption signal; `checkpoint` resumes it (`trainer.resume=auto`)."""

    def __init__(self, step: int, checkpoint: Any, signal_name: str) -> None:
        super().__init__(f"stopped by {signal_name} after step {step}; checkpoint {checkpoint}: run the same command "
                         "again (trainer.resume=auto) to continue")
        self.step, self.checkpoint, self.signal_name = step, checkpoint, signal_name
