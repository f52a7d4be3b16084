"""Sinks for a run's records: metrics.jsonl, the console progress display, and wandb (one interface).

The trainer hands every record to `Sinks.write` on every rank. Every rank holds the same records (the training
statistics and the evaluation sums are all-reduced), so each sink keeps what its rank owns: metrics.jsonl and the
progress display live on global rank 0; the wandb run of group g lives on replica 0 of group g and receives that
group's records, and group 0's run also receives the run-level records (ensemble, churn).
"""

from __future__ import annotations

import logging
import re
import sys
from pathlib import Path
from typing import Any, Optional, Protocol, TYPE_CHECKING, TextIO

from codistill.io.reporting import MetricsWriter

if TYPE_CHECKING:
    from codistill.config import LoggerConfig

log = logging.getLogger("codistill")


class Sink(Protocol):
    def write(self, record: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


class Sinks:
    """Fans one record out to every sink of this rank."""

    def __init__(self, sinks: list[Sink]) -> None:
        self.sinks = sinks

    def write(self, record: dict[str, Any]) -> None:
        for s in self.sinks:
            s.write(record)

    def close(self) -> None:
        for s in self.sinks:
            s.close()


def run_id(run_dir: Path) -> str:
    """The id every rank of a run agrees on: its directory's name (a sweep point adds its job number)."""
    return f"{run_dir.parent.name}-{run_dir.name}" if run_dir.name.isdigit() else run_dir.name


class ProgressBar:
    """A live progress bar for a terminal: step, per-group loss/accuracy, staleness, steps/s.

    `open_sinks` adds it only when stdout is a TTY, so log files and pipes get the plain log lines alone. It
    advances at log steps (the records it receives).
    """

    def __init__(self, max_steps: int, stream: TextIO = sys.stdout) -> None:
        from tqdm import tqdm
        from tqdm.contrib.logging import logging_redirect_tqdm

        self.latest: dict[str, str] = {}
        self.bar = tqdm(total=max_steps, unit="step", file=stream, dynamic_ncols=True, leave=True)
        self._redirect = logging_redirect_tqdm()  # log lines print above the bar instead of through it
        self._redirect.__enter__()

    def write(self, record: dict[str, Any]) -> None:
        g = record.get("group")
        if g is None:
            if "ensemble/acc" in record:
                self.latest["ens"] = f"{record['ensemble/acc']:.3f}"
        else:
            text = f"{record['train/loss']:.3f}"
            if "eval/acc" in record:
                text += f"/{record['eval/acc']:.3f}"
            self.latest[f"g{g}"] = text
            if record.get("staleness", -1) >= 0:
                self.latest["stale"] = str(record["staleness"])
        self.bar.update(record["step"] - self.bar.n)
        self.bar.set_postfix(self.latest, refresh=False)

    def close(self) -> None:
        self._redirect.__exit__(None, None, None)
        self.bar.close()


class WandbRun:
    """One wandb run per group, on that group's replica 0. Any wandb failure becomes a warning, never an error.

    The wandb run id is derived from the run id and the group, so a run resumed in its directory continues the
    same wandb runs instead of starting new ones.
    """

    def __init__(self, logger: LoggerConfig, run_name: str, group: int, run_dir: Path, config: dict, with_run_records: bool
                 ) -> None:
        """`logger`: the logger config section; `config`: the run's resolved config, recorded with the run."""
        self.group, self.with_run_records = group, with_run_records
        self.run: Any = None
        lc = logger
        wandb_group = lc.group or run_id(run_dir)
        try:
            import wandb

            self.run = wandb.init(
                project=lc.project, entity=lc.entity, name=f"{run_name}-g{group}", group=wandb_group,
                id=re.sub(r"[^\w.-]", "-", f"{run_name}-{wandb_group}-g{group}"), resume="allow",
                job_type=lc.job_type, tags=list(lc.tags), config={**config, "group": group},
                dir=str(run_dir), mode=lc.mode, reinit="create_new",
                settings=wandb.Settings(quiet=True, console="off"),
            )
        except Exception as e:  # wandb raises many types (network, auth, usage); none may stop training
            log.warning("wandb disabled for group %d: %s: %s", group, type(e).__name__, e)

    def write(self, record: dict[str, Any]) -> None:
        if self.run is None:
            return
        g = record.get("group")
        if g != self.group and not (g is None and self.with_run_records):
            return
        data = {k: v for k, v in record.items() if k not in ("step", "group", "time_s")}
        try:
            self.run.log(data, step=record["step"])
        except Exception as e:
            log.warning("wandb logging stopped for group %d: %s: %s", self.group, type(e).__name__, e)
            self.run = None

    def close(self) -> None:
        if self.run is None:
            return
        try:
            self.run.finish()
        except Exception as e:
            log.warning("wandb finish failed for group %d: %s: %s", self.group, type(e).__name__, e)
        self.run = None


def open_sinks(logger: LoggerConfig, run_name: str, max_steps: int, topo: Any, run_dir: Path, config: dict,
               stream: Optional[TextIO] = None) -> Sinks:
    """The sinks this rank owns (see the module docstring). `logger`: the logger config section; `config`: the run's
    resolved config, recorded with each wandb run."""
    stream = stream or sys.stdout
    sinks: list[Sink] = [MetricsWriter(run_dir / "metrics.jsonl" if topo.is_main else None)]
    if topo.is_main and stream.isatty():
        sinks.append(ProgressBar(max_steps, stream))
    if logger.name == "wandb":
        sinks += [WandbRun(logger, run_name, g, run_dir, config, g == 0)
                  for g in topo.local_groups if topo.is_group_leader(g)]
    return Sinks(sinks)
