"""The run's checkpoints, as the training loop sees them: resume at the start, a training checkpoint every
trainer.checkpoint_every steps (and at a preemption), each group's final.pt at the end.

The files themselves (atomic writes, manifests, checksums, pruning, the generators) are codistill/io/checkpoint.py;
this module says what a group's training state is in them (`GroupState`: two formats, a whole state_dict per group
or, with topology.strategy=fsdp, the group's DCP shards plus a small record) and when to write it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional

import torch

from codistill.distributed import sharding
from codistill.distributed.topology import Topology
from codistill.errors import NonFiniteLossError
from codistill.io import checkpoint

log = logging.getLogger("codistill")


class GroupState:
    """One group's training state in a checkpoint: student, optimizer, LR schedule, teacher copies, grad scaler.

    The interface codistill/io/checkpoint.py writes and reads per group (the RNG streams are per process).
    """

    def __init__(self, worker: Any) -> None:
        self.w = worker
        self.sharded, self.rng = worker.sharded, worker.rng

    def sync_buffers(self) -> None:
        self.w.sync_buffers()

    def model_bytes(self) -> int:
        """Bytes of the student's state: the unit of a checkpoint write's I/O budget (codistill/io/checkpoint.py)."""
        return sum(t.numel() * t.element_size() for t in self.w.model.state_dict().values() if isinstance(t, torch.Tensor))

    def state_dict(self) -> dict:
        """The whole state (DDP / simulated). A fixed KD teacher is not saved: it is loaded again from its own file."""
        w = self.w
        return {
            "group": w.group,
            "model": {k: v.detach().cpu().clone() for k, v in w.model.state_dict().items()},
            "optimizer": w.optimizer.state_dict(),
            "lr_schedule": w.lr_schedule.state_dict(),
            "teachers": w.teachers.state_dict(),
            "grad_scaler": w.precision.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        w = self.w
        if state["group"] != w.group:
            raise ValueError(f"the checkpoint holds group {state['group']}, not group {w.group}")
        w.model.load_state_dict(state["model"])
        w.optimizer.load_state_dict(state["optimizer"])
        w.lr_schedule.load_state_dict(state["lr_schedule"])
        w.precision.load_state_dict(state.get("grad_scaler", {}))
        w.teachers.load_state_dict(state["teachers"])

    # --- sharded (topology.strategy=fsdp): DCP shards + this small record ---------------------------------------
    def sharded_record(self) -> dict:
        """What a sharded checkpoint keeps beside the group's DCP shards (written by replica 0)."""
        w = self.w
        return {
            "group": w.group, "signature": sharding.signature(w.model), "teacher_steps": dict(w.teachers.source_step),
            "lr_schedule": w.lr_schedule.state_dict(), "grad_scaler": w.precision.state_dict(),
        }

    def save_sharded(self, folder: Path) -> None:
        """Every replica writes its shards of the student, its optimizer state and its teacher copies."""
        w = self.w
        sharding.save_group(folder, w.model, w.optimizer, w.teachers.models, w.topo.replica_pg)

    def load_sharded(self, folder: Path, record: dict) -> None:
        """Load `save_sharded`'s state at this run's R (which may differ from the R that wrote it)."""
        w = self.w
        if record["group"] != w.group:
            raise ValueError(f"the checkpoint holds group {record['group']}, not group {w.group}")
        mine = sharding.signature(w.model)
        if [(n, tuple(s)) for n, s in record["signature"]] != mine:
            raise ValueError(f"it was written by another model than group {w.group}'s {type(w.model).__name__} "
                             "(parameter names or shapes differ)")
        sharding.load_group(folder, w.model, w.optimizer, w.teachers.models, w.topo.replica_pg)
        w.lr_schedule.load_state_dict(record["lr_schedule"])
        w.precision.load_state_dict(record["grad_scaler"])
        w.teachers.restore_steps(record["teacher_steps"])


class Checkpointer:
    """When and what the loop checkpoints; `last` is the newest complete training checkpoint (None: none yet)."""

    def __init__(self, run_dir: Path, topo: Topology, workers: dict[int, Any], record: dict, every: int, keep: int,
                 outer: Optional[Any] = None) -> None:
        """`record`: the run's resolved config, stored in every file so a checkpoint can be rebuilt without the run.
        `every`, `keep`: trainer.checkpoint_every and trainer.checkpoint_keep."""
        self.run_dir, self.topo, self.workers, self.record = run_dir, topo, workers, record
        self.every, self.keep, self.outer = every, keep, outer
        self.groups = {g: GroupState(w) for g, w in workers.items()}
        self.last: Optional[Path] = None
        self.in_flight: Optional[Any] = None  # the run's ExchangeRunner: exchanges in flight are saved with a checkpoint

    def resume(self, resume: str) -> int:
        """Load the checkpoint trainer.resume names (every rank the same one); return the step to start at."""
        self.last = checkpoint.find_resume(resume, self.run_dir)
        # every rank resumes from the same checkpoint (ranks with different views of the disk would diverge)
        self.topo.check_agree(str(self.last), "checkpoint to resume from")
        if self.last is None:
            return 0
        step = checkpoint.restore_training(self.last, self.groups, self.topo, self.outer)
        log.info("resumed from checkpoint %s at step %d", self.last, step)
        return step

    def extra_state(self, name: str) -> Optional[dict]:
        """This rank's `name` state of the checkpoint resumed from (save_training's `extra`), if it has one."""
        path = None if self.last is None else self.last / f"{name}-rank{self.topo.layout.rank}.pt"
        return checkpoint.load(path) if path is not None and path.is_file() else None

    def due(self, done: int, last_step: bool) -> bool:
        return last_step or (self.every > 0 and done % self.every == 0)

    def save(self, step: int) -> None:
        """Save a training checkpoint, unless a group's parameters are no longer finite (keep the last good one)."""
        bad = torch.zeros(self.topo.groups, dtype=torch.float64)
        for g, w in self.workers.items():
            bad[g] = float(not all(torch.isfinite(p).all() for p in w.model.parameters()))
        self.topo.all_reduce_sum(bad)
        if bad.any():
            groups = [g for g in range(self.topo.groups) if bad[g]]
            raise NonFiniteLossError(f"parameters of group(s) {groups} are not finite at step {step}: lower optim.lr; "
                                     f"{self.kept()}")
        flights = self.in_flight is not None and self.in_flight.flights
        self.last = checkpoint.save_training(self.run_dir, step, self.groups, self.topo, self.record, self.keep,
                                             self.outer, {"exchange": self.in_flight.state_dict()} if flights else None)
        log.info("checkpoint %s", self.last)

    def save_final(self, step: int) -> None:
        """Each group's final.pt: the whole model (a sharded one gathered within its group) and the run's config."""
        error, path = None, self.run_dir / "checkpoints"
        for g, w in self.workers.items():
            w.sync_buffers()
            state = w.full_state()  # sharded: gathered within the group (final.pt stays a whole state_dict)
            log.info("group %d replica(s) %s: parameter fingerprint %s", g, w.local_replicas, w.fingerprint(state))
            if self.topo.is_group_leader(g):
                path = self.run_dir / "checkpoints" / f"group{g}" / "final.pt"
                try:
                    checkpoint.atomic_save(checkpoint.model_checkpoint(state, step, g, self.record), path)
                    log.info("group %d: final checkpoint %s", g, path)
                except OSError as e:
                    error = e
        checkpoint.agree_written(self.topo, path, error)

    def kept(self) -> str:
        """Where a failed run can resume from, for its error line."""
        if self.last is None:
            return "no checkpoint was written before it"
        return f"the last good checkpoint is {self.last} (resume with trainer.resume=auto)"
