"""The training loop shared by simulated mode and torchrun.

    for step in range(start, max_steps):
        if schedule.exchange_before(step): exchange()      # refresh every group's teacher copies (or an outer step)
        for worker in local groups: worker.train_step(step)
        report / evaluate / checkpoint at their intervals; stop early when the ranks agree on a signal
    save each group's final checkpoint

The Trainer is handed its parts ready-made (codistill/build.py builds each from its own config section): the
workers (one group's step each), the exchange transport, the evaluator, the checkpointer and the metric sinks. The
two modes differ only inside Topology (which groups/replicas are local), GroupWorker (DDP vs 1/R-scaled
micro-batches) and the Exchange transport.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, TYPE_CHECKING

import torch

from codistill.components.data.pipeline import TrainingData
from codistill.distributed.exchange import Exchange, Snapshot
from codistill.distributed.preemption import StopFlag
from codistill.distributed.topology import Topology
from codistill.engine.algorithm import Schedule
from codistill.engine.checkpointing import Checkpointer
from codistill.engine.evaluation import Evaluator
from codistill.engine.outer import OuterStep
from codistill.engine.worker import GroupWorker
from codistill.errors import NonFiniteLossError, Preempted
from codistill.io import metrics
from codistill.io.loggers import Sinks
from codistill.io.reporting import format_progress

if TYPE_CHECKING:
    from codistill.config import DistillConfig, OptimConfig, TrainerConfig

log = logging.getLogger("codistill")


@dataclass(frozen=True)
class LoopSettings:
    """The loop's intervals (the trainer section's), and what its log lines name."""

    max_steps: int
    log_every: int = 50
    eval_every: int = 0
    stop_check_every: int = 10
    log_grad_norm: bool = False  # optim.grad_clip is set: records carry train/grad_norm
    mode: str = "codistill"  # distill.mode, for the opening log line

    @classmethod
    def from_config(cls, trainer: TrainerConfig, distill: DistillConfig, optim: OptimConfig) -> "LoopSettings":
        """From the `trainer`, `distill` and `optim` config sections."""
        return cls(trainer.max_steps, trainer.log_every, trainer.eval_every, trainer.stop_check_every,
                   optim.grad_clip is not None, distill.mode)


class Trainer:
    """Runs the loop: exchanges on the schedule, every local group's step, then reports, evaluation and checkpoints
    at their intervals, until max_steps or a stop the ranks agree on."""

    def __init__(
        self,
        loop: LoopSettings,
        topo: Topology,
        run_dir: Path,
        workers: dict[int, GroupWorker],
        schedule: Schedule,
        exchange: Exchange,
        evaluator: Evaluator,
        checkpoints: Checkpointer,
        sinks: Sinks,
        *,
        data: TrainingData,
        num_classes: int,
        start_step: int = 0,
        vectorized: Optional[Any] = None,
        outer: Optional[OuterStep] = None,
        stop_flag: Optional[StopFlag] = None,
    ) -> None:
        """`data`: the run's data (labelled); `num_classes`: C of the models' logits. `vectorized`: the stacked
        engine stepping every group at once (topology.vectorize), else None. `outer`: the outer step of
        distill.mode=average/diloco, else None."""
        self.loop, self.topo, self.run_dir, self.workers, self.schedule = loop, topo, run_dir, workers, schedule
        self.exchange, self.evaluator, self.checkpoints, self.metrics = exchange, evaluator, checkpoints, sinks
        self.data, self.num_classes, self.start_step = data, num_classes, start_step
        self.vectorized, self.outer = vectorized, outer
        self.stop_flag = stop_flag or StopFlag([])
        self.preempted: Optional[Preempted] = None  # set when fit() stopped early for a signal
        self.final_eval: Optional[tuple[list[dict], dict]] = None
        self._train_sums = torch.zeros(topo.groups, 4, device=topo.device)
        self._window = 0
        self._clock = (time.perf_counter(), start_step)

    @property
    def last_checkpoint(self) -> Optional[Path]:
        return self.checkpoints.last

    # --- train ------------------------------------------------------------------------------------------------
    def fit(self) -> None:
        lp = self.loop
        log.info(
            "codistill: %d groups x %d replicas (%s, %s), %d steps, distill.mode=%s (burn-in %d steps), run dir %s",
            self.topo.groups, self.topo.replicas, self.topo.layout.mode, self.topo.device, lp.max_steps,
            lp.mode, self.schedule.burn_in_steps, self.run_dir,
        )
        for step in range(self.start_step, lp.max_steps):
            if self.schedule.exchange_before(step):
                self._exchange(step)
            if self.vectorized is not None:
                self._train_sums += self.vectorized.train_step(step)
            else:
                for g, w in self.workers.items():
                    self._train_sums[g] += w.train_step(step)
            self._window += 1
            done = step + 1
            last = done == lp.max_steps
            evaluate = last or (lp.eval_every > 0 and done % lp.eval_every == 0)
            save = self.checkpoints.due(done, last)
            stop = False
            if last or done % lp.log_every == 0 or evaluate or save:  # a report checks the loss is finite
                stop = self._report(done, evaluate)  # and the stop flags, on the same all-reduce
            elif self.topo.simulated or done % lp.stop_check_every == 0:
                stop = self._stop_agreed()
            if save or (stop and not last):
                self.checkpoints.save(done)
            if stop and not last:  # the filesystem exchange's pending snapshot is written by close()
                name = self.stop_flag.received.name if self.stop_flag.received else "a signal to another rank"
                self.preempted = Preempted(done, self.checkpoints.last, name)
                log.warning("preempted: %s", self.preempted)
                return
        self.checkpoints.save_final(lp.max_steps)

    def _loss_parts(self, window: torch.Tensor, step: int) -> str:
        """What to lower after a non-finite loss: the learning rate, and alpha when the distillation term was on."""
        if not self.schedule.distilling(step - 1):
            return ": lower optim.lr"
        return (f" (label loss {window[1].item():.4g}, distillation term {window[2].item():.4g}): lower optim.lr or "
                f"distill.alpha (at a high distill.temperature the term regresses the teacher's logits and its "
                f"curvature can outgrow the learning rate)")

    def _stop_agreed(self) -> bool:
        """Whether any rank has received a preemption signal: a one-element all-reduce (none in simulated mode)."""
        flag = torch.tensor([float(self.stop_flag.received is not None)], dtype=torch.float64)
        return bool(self.topo.all_reduce_sum(flag).item() > 0)

    def _exchange(self, step: int) -> None:
        local = {g: w.flat_state() for g, w in self.workers.items()}
        if self.outer is not None:
            local = self.outer.payload(local)  # the pseudo-gradients (before step 0: the states themselves)
        snapshots = self.exchange.exchange(step, local)
        line = self.exchange.traffic_line(step)
        if line is not None:
            log.info("%s", line)
        if self.outer is not None:
            self._outer_step(step, snapshots)
            return
        for g, w in self.workers.items():
            for peer in w.teachers.models:
                if peer in snapshots:  # else: no (newer) snapshot of that peer; its copy stays as it is
                    w.teachers.load(peer, snapshots[peer].flat, snapshots[peer].step)
        log.debug("exchange at step %d", step)

    def _outer_step(self, step: int, snapshots: dict[int, Snapshot]) -> None:
        """diloco, average: every group continues from the new outer state (its inner optimizer state stays its own,
        as in DiLoCo and PeriodicModelAverager); before step 0 from group 0's, as DDP starts from rank 0's."""
        assert self.outer is not None
        state = self.outer.update([snapshots[g].flat for g in sorted(snapshots)])
        for w in self.workers.values():
            w.flattener.load(w.model, state)
        log.debug("outer step before step %d", step)

    # --- report -------------------------------------------------------------------------------------------------
    def _report(self, step: int, evaluate: bool) -> bool:
        """Log the window's losses (and evaluate); return whether any rank has received a preemption signal."""
        G = self.topo.groups
        stats = torch.zeros(G, 7, dtype=torch.float64)  # column 6: stop flags, summed over the ranks
        stats[0, 6] = float(self.stop_flag.received is not None)
        stats[:, :4] = self._train_sums.double().cpu() / self._window
        for g, w in self.workers.items():
            if self.topo.is_group_leader(g):
                stats[g, 4] = w.staleness(step)
                stats[g, 5] = w.lr_schedule.get_last_lr()[0]
        self.topo.all_reduce_sum(stats)
        self._train_sums.zero_()
        self._window = 0
        records = [
            {
                "step": step, "group": g, "train/loss": stats[g, 0].item(), "train/ce": stats[g, 1].item(),
                "train/distill": stats[g, 2].item(), "staleness": int(stats[g, 4].item()),
                "lr": stats[g, 5].item(),
                **({"train/grad_norm": stats[g, 3].item()} if self.loop.log_grad_norm else {}),
            }
            for g in self.topo.job_groups
        ]
        bad = [g for g in self.topo.job_groups if not torch.isfinite(stats[g, 0])]
        if bad:
            raise NonFiniteLossError(f"training loss of group(s) {bad} is not finite at step {step}"
                                     f"{self._loss_parts(stats[bad[0]], step)}; {self.checkpoints.kept()}")
        run_record = None
        if evaluate:
            per_group, run_record = metrics.summarise(self.evaluator.sums())
            for rec, ev in zip(records, per_group):
                rec.update(ev)
            run_record = {"step": step, "group": None, **run_record}
            self.final_eval = (per_group, run_record)
        for rec in records:
            self.metrics.write(rec)
        if run_record is not None:
            self.metrics.write(run_record)
        now = time.perf_counter()
        rate = (step - self._clock[1]) / max(now - self._clock[0], 1e-9)
        self._clock = (now, step)
        line = format_progress(step, self.loop.max_steps, records, rate)
        if run_record is not None:
            line += f" | ensemble acc {run_record['ensemble/acc']:.4f}"
        log.info(line)
        return bool(stats[0, 6] > 0)

    def close(self) -> None:
        self.exchange.close()  # the filesystem exchange finishes its pending snapshot write: peers may still read it
        self.metrics.close()
        self.evaluator.close()
        for w in self.workers.values():
            w.release()
