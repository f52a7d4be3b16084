"""The training loop shared by simulated mode and torchrun.

    for step in range(start, max_steps):
        if schedule.exchange_before(step): exchange()      # refresh every group's teacher copies (or an outer step)
        for worker in local groups: worker.train_step(step)
        report / evaluate / checkpoint at their intervals; stop early when the ranks agree on a signal
    save each group's final checkpoint

The Trainer is handed its parts ready-made (codistill/build.py builds each from its own config section): the
workers (one group's step each), the exchange transport, the evaluator, the checkpointer and the metric sinks
(reported through engine/progress.py). The
two modes differ only inside Topology (which groups/replicas are local), GroupWorker (DDP vs 1/R-scaled
micro-batches) and the Exchange transport.
"""

from __future__ import annotations

import logging
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
from codistill.engine.progress import Progress
from codistill.engine.worker import GroupWorker
from codistill.errors import Preempted
from codistill.io.loggers import Sinks

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
    tokens_per_step: int = 0  # a language model's: positions a group computes per step (records add ppl, tokens/s)

    @classmethod
    def from_config(cls, trainer: TrainerConfig, distill: DistillConfig, optim: OptimConfig, positions: int = 0
                    ) -> "LoopSettings":
        """From the `trainer`, `distill` and `optim` config sections; `positions`: labelled positions per example of
        a sequence model (0 for one label per example)."""
        return cls(trainer.max_steps, trainer.log_every, trainer.eval_every, trainer.stop_check_every,
                   optim.grad_clip is not None, distill.mode, trainer.batch_size * positions)


class Trainer:
    """Runs the loop: exchanges on the schedule, every local group's step, then reports (engine/progress.py),
    evaluations and checkpoints at their intervals, until max_steps or a stop the ranks agree on."""

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
        self.progress = Progress(topo, workers, schedule, evaluator, sinks, loop.max_steps, loop.log_grad_norm,
                                 start_step, checkpoints.kept, loop.tokens_per_step)

    @property
    def last_checkpoint(self) -> Optional[Path]:
        return self.checkpoints.last

    @property
    def final_eval(self) -> Optional[tuple[list[dict], dict]]:
        """The last evaluation: (per-group records, the run-level record); the run's final one after fit()."""
        return self.progress.final_eval

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
                self.progress.add(self.vectorized.train_step(step))
            else:
                for g, w in self.workers.items():
                    self.progress.add(w.train_step(step), g)
            self.progress.step_done()
            done = step + 1
            last = done == lp.max_steps
            evaluate = last or (lp.eval_every > 0 and done % lp.eval_every == 0)
            save = self.checkpoints.due(done, last)
            stop = False
            if last or done % lp.log_every == 0 or evaluate or save:  # a report checks the loss is finite
                stop = self.progress.report(done, evaluate, self.stop_flag.received is not None)  # and the stop flags
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

    def close(self) -> None:
        self.exchange.close()  # the filesystem exchange finishes its pending snapshot write: peers may still read it
        self.metrics.close()
        self.evaluator.close()
        for w in self.workers.values():
            w.release()
