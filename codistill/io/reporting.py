"""Where a run's numbers go: per-rank log files, the rank-0 console, and metrics.jsonl (one JSON object per line).

metrics.jsonl is the single source of truth for plots and reports. Records carry "step" (completed steps) and
"group" (an int for a group's record, null for run-level records such as the ensemble and churn).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, Optional

log = logging.getLogger("codistill")


def setup_logging(run_dir: Path, rank: int, console: bool) -> Path:
    """One log file per rank under run_dir/logs; the console only on global rank 0."""
    log_dir = run_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    path = log_dir / f"rank{rank}.log"
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.setLevel(logging.INFO)
    file_handler = logging.FileHandler(path)
    file_handler.setFormatter(logging.Formatter(f"%(asctime)s [rank{rank}] %(levelname)s %(name)s: %(message)s"))
    root.addHandler(file_handler)
    if console:
        stream = logging.StreamHandler(sys.stdout)
        stream.setFormatter(logging.Formatter("%(message)s"))
        root.addHandler(stream)
    return path


class MetricsWriter:
    """Appends records to metrics.jsonl (on global rank 0 only; other ranks hold a disabled writer)."""

    def __init__(self, path: Optional[Path]) -> None:
        self.path = path
        self._file = open(path, "a", buffering=1) if path is not None else None
        self._start = time.perf_counter()

    def write(self, record: dict[str, Any]) -> None:
        if self._file is None:
            return
        record = {"time_s": round(time.perf_counter() - self._start, 3), **record}
        self._file.write(json.dumps(record, allow_nan=True) + "\n")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def format_progress(step: int, max_steps: int, per_group: list[dict], steps_per_s: float) -> str:
    """One console line: step, per-group loss (and accuracy when evaluated), staleness, speed."""
    parts = [f"step {step}/{max_steps}"]
    for rec in per_group:  # a job running one group of a separate-jobs run has one record, not group 0's
        text = f"g{rec['group']} loss {rec['train/loss']:.4f}"
        if rec.get("train/distill"):
            text += f" (distill {rec['train/distill']:.4f})"
        if "eval/ppl" in rec:
            text += f" ppl {rec['eval/ppl']:.2f}"
        elif "eval/acc" in rec:
            text += f" acc {rec['eval/acc']:.4f}"
        if rec.get("staleness", -1) >= 0:
            text += f" stale {rec['staleness']}"
        parts.append(text)
    tokens = per_group[0].get("train/tokens_per_s") if per_group else None
    parts.append(f"{steps_per_s:.1f} steps/s" + (f" ({tokens:.0f} tokens/s per group)" if tokens else ""))
    return " | ".join(parts)
