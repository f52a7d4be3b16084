"""What the loop reports: the window's training losses, all-reduced over the ranks at log steps, checked finite,
joined by the held-out metrics at evaluation steps, and written to the sinks and the console.

The preemption stop flags ride on the same all-reduce, so a report step costs no extra collective for the stop
agreement.
"""

from __future__ import annotations

import logging
import time
from typing import Callable, Optional

import torch

from codistill.distributed.topology import Topology
from codistill.engine.algorithm import Schedule
from codistill.engine.evaluation import Evaluator
from codistill.errors import NonFiniteLossError
from codistill.io import metrics
from codistill.io.loggers import Sinks
from codistill.io.reporting import format_progress

log = logging.getLogger("codistill")


class Progress:
    def __init__(self, topo: Topology, workers: dict, schedule: Schedule, evaluator: Evaluator, sinks: Sinks,
                 max_steps: int, log_grad_norm: bool, start_step: int, kept: Callable[[], str],
                 tokens_per_step: int = 0) -> None:
        """`log_grad_norm`: records carry train/grad_norm (optim.grad_clip is set). `kept()`: where a failed run can
        resume from, for the error line of a non-finite loss. `tokens_per_step`: a language model's positions per
        group step (batch_size x labelled positions per example); records then add perplexities and tokens/s."""
        self.topo, self.workers, self.schedule, self.evaluator, self.sinks = topo, workers, schedule, evaluator, sinks
        self.max_steps, self.log_grad_norm, self.kept = max_steps, log_grad_norm, kept
        self.tokens_per_step = tokens_per_step
        self.sums = torch.zeros(topo.groups, 4, device=topo.device)  # the window's [loss, ce, distill, grad norm]
        self.window = 0
        self.final_eval: Optional[tuple[list[dict], dict]] = None
        self._clock = (time.perf_counter(), start_step)

    def add(self, step_sums: torch.Tensor, group: Optional[int] = None) -> None:
        """A step's [4] sums of `group` (or [G, 4] of every group at once)."""
        if group is None:
            self.sums += step_sums
        else:
            self.sums[group] += step_sums

    def step_done(self) -> None:
        self.window += 1

    def _loss_parts(self, window: torch.Tensor, step: int) -> str:
        """What to lower after a non-finite loss: the learning rate, and alpha when the distillation term was on."""
        if not self.schedule.distilling(step - 1):
            return ": lower optim.lr"
        return (f" (label loss {window[1].item():.4g}, distillation term {window[2].item():.4g}): lower optim.lr or "
                f"distill.alpha (at a high distill.temperature the term regresses the teacher's logits and its "
                f"curvature can outgrow the learning rate)")

    def report(self, step: int, evaluate: bool, stop_received: bool) -> bool:
        """Log the window's losses (and evaluate); return whether any rank has received a preemption signal."""
        G = self.topo.groups
        stats = torch.zeros(G, 7, dtype=torch.float64)  # column 6: stop flags, summed over the ranks
        stats[0, 6] = float(stop_received)
        stats[:, :4] = self.sums.double().cpu() / self.window
        for g, w in self.workers.items():
            if self.topo.is_group_leader(g):
                stats[g, 4] = w.staleness(step)
                stats[g, 5] = w.lr_schedule.get_last_lr()[0]
        self.topo.all_reduce_sum(stats)
        self.sums.zero_()
        self.window = 0
        records = [
            {
                "step": step, "group": g, "train/loss": stats[g, 0].item(), "train/ce": stats[g, 1].item(),
                "train/distill": stats[g, 2].item(), "staleness": int(stats[g, 4].item()),
                "lr": stats[g, 5].item(),
                **({"train/grad_norm": stats[g, 3].item()} if self.log_grad_norm else {}),
            }
            for g in self.topo.job_groups
        ]
        bad = [g for g in self.topo.job_groups if not torch.isfinite(stats[g, 0])]
        if bad:
            raise NonFiniteLossError(f"training loss of group(s) {bad} is not finite at step {step}"
                                     f"{self._loss_parts(stats[bad[0]], step)}; {self.kept()}")
        now = time.perf_counter()
        rate = (step - self._clock[1]) / max(now - self._clock[0], 1e-9)
        self._clock = (now, step)
        run_record = None
        if evaluate:
            per_group, run_record = metrics.summarise(self.evaluator.sums())
            for rec, ev in zip(records, per_group):
                rec.update(ev)
            run_record = {"step": step, "group": None, **run_record}
            self.final_eval = (per_group, run_record)
        if self.tokens_per_step:  # a language model's records: perplexities and tokens per second
            for rec in [*records, *([run_record] if run_record else [])]:
                metrics.add_token_metrics(rec, rate * self.tokens_per_step)
        for rec in records:
            self.sinks.write(rec)
        if run_record is not None:
            self.sinks.write(run_record)
        line = format_progress(step, self.max_steps, records, rate)
        if run_record is not None:
            line += (f" | ensemble ppl {run_record['ensemble/ppl']:.2f}" if "ensemble/ppl" in run_record
                     else f" | ensemble acc {run_record['ensemble/acc']:.4f}")
        log.info(line)
        return bool(stats[0, 6] > 0)
