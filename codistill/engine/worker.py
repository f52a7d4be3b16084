"""One group's synchronous training step in this process: its local replicas' micro-batches through the forwards,
Algorithm 1's loss and backward, then one optimizer step.

Under torchrun a process holds one GroupWorker running one replica, and DDP averages the gradient over the group's
R ranks. In simulated mode a process holds G workers, each running all R replicas' micro-batches and averaging
their gradients by scaling each loss by 1/R before backward: the same sum DDP's all-reduce computes (BatchNorm
included: see codistill/engine/replicas.py).

A worker is handed what it needs, each part built from its own config section: the group's (placed, possibly
sharded) student, its batches, its teacher source, a loss spec, a precision, an optimizer factory and its replicas'
random streams. It reads no config.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Mapping
from typing import Any, ContextManager, Optional

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from codistill.components.data.pipeline import GroupBatches, to_device
from codistill.components.rng import ReplicaRNG
from codistill.distributed import sharding
from codistill.distributed.topology import Topology
from codistill.engine import fused_head, weighting
from codistill.engine.algorithm import LossParts, LossSpec, Schedule
from codistill.engine.chunked import Prediction
from codistill.engine.optim import OptimizerFactory
from codistill.engine.precision import Precision
from codistill.engine.replicas import ddp_buffer_semantics
from codistill.engine.teachers import StateFlattener, TeacherSource
from codistill.errors import ConfigError


def micro_batches(x: Any, y: torch.Tensor, n: int) -> list[tuple[Any, torch.Tensor]]:
    """A replica's batch as n equal micro-batches (trainer.grad_accum), in order: tensors, or dicts, tuples and
    lists of them (Hugging Face style inputs), split along their first (batch) dimension."""
    if n == 1:
        return [(x, y)]
    return list(zip(split_batch(x, n), y.chunk(n)))


def split_batch(x: Any, n: int, dim: int = 0) -> list[Any]:
    """`x` in n chunks along `dim` (the batch's; 1 for the vectorised mode's stacked groups)."""
    if isinstance(x, torch.Tensor):
        return list(x.chunk(n, dim))
    if isinstance(x, Mapping):
        parts = {k: split_batch(v, n, dim) for k, v in x.items()}
        return [{k: parts[k][i] for k in x} for i in range(n)]
    if isinstance(x, (tuple, list)):
        columns = [split_batch(v, n, dim) for v in x]
        return [type(x)(c[i] for c in columns) for i in range(n)]
    raise ConfigError(f"trainer.grad_accum={n} splits tensors (and dicts, tuples, lists of them) along the batch; "
                      f"this dataset's inputs hold a {type(x).__name__}")


class GroupWorker:
    def __init__(
        self,
        group: int,
        model: nn.Module,
        topo: Topology,
        batches: GroupBatches,
        schedule: Schedule,
        teachers: TeacherSource,
        loss: LossSpec,
        precision: Precision,
        optimizer: OptimizerFactory,
        rng: ReplicaRNG,
        *,
        grad_accum: int = 1,
        compile: bool = False,
        state_dtype: torch.dtype = torch.float32,
        sharded: bool = False,
        head: Optional[str] = None,
    ) -> None:
        """`model`: the group's student (engine/students.py). `teachers`: the copies of the peers it distils from (or
        mode=kd's fixed teacher). `state_dtype`: the dtype its state is exchanged in (distill.teacher_dtype).
        `sharded`: the model is sharded over the group's replicas (FSDP2, codistill/distributed/sharding.py).
        `head`: the output layer fused into the chunked loss (loss.output_layer, resolved by fused_head.resolve)."""
        self.group, self.topo, self.schedule, self.teachers = group, topo, schedule, teachers
        self.batches, self.loss, self.precision, self.rng = batches, loss, precision, rng
        self.device = topo.device
        self.local_replicas = topo.local_replicas  # the replica indices this process runs (topo.replicas: R)
        self.model, self.sharded = model, sharded
        self.flattener = StateFlattener(self.model, state_dtype)  # what moves
        self.has_buffers = any(True for _ in self.model.buffers())
        use_ddp = not topo.simulated and topo.replicas > 1 and not self.sharded
        self.ddp: Optional[DDP] = (
            DDP(self.model, process_group=topo.replica_pg, device_ids=[self.device.index] if self.device.type == "cuda" else None)
            if use_ddp
            else None
        )
        self.module: nn.Module = self.ddp or self.model
        if compile:
            self.module = torch.compile(self.module)  # checkpoints and evaluation keep using the plain self.model
        self.compiled = compile
        self.accum = grad_accum
        # A micro-batch's loss is scaled by its share of the group's step (codistill/engine/weighting.py) times R /
        # (replicas in this process): DDP (and FSDP) divide the sum over the R ranks by R; simulated mode sums here.
        self.replica_factor = topo.replicas / len(self.local_replicas)
        self.grad_clip, self.optimizer_factory = optimizer.grad_clip, optimizer
        self.optimizer, self.lr_schedule = optimizer(self.model.parameters())
        self._first_step = True  # the step on which rng checks for draws no replica stream holds
        self.head = head  # None: the forwards give logits
        self.gathered_head = (fused_head.GatheredHead(self.model, head, topo.replica_pg)
                              if sharded and head is not None else None)

    # --- Algorithm 1, one step ------------------------------------------------------------------------------------
    def train_step(self, step: int) -> torch.Tensor:
        """Run one synchronous step of this group; return [loss, ce, distill, grad norm] / R summed over local
        replicas.

        Summed over all R replicas (all ranks of the group under torchrun) this is the group's mean loss and its
        pre-clip gradient norm (0 without optim.grad_clip).
        """
        self.module.train()
        distilling = self.schedule.distilling(step)
        parts_sum = torch.zeros(4, device=self.device)
        batches = {r: self._batch(step, r) for r in self.local_replicas}
        ignore = self.loss.ignore_index
        total = None if ignore is None else weighting.step_total(
            [y for _, y in batches.values()], ignore, None if self.topo.simulated else self.topo.replica_pg)
        emulate = self.topo.simulated and self.has_buffers and len(self.local_replicas) > 1
        with ddp_buffer_semantics(self.model, emulate) as before_replica:
            for r in self.local_replicas:
                before_replica(r)
                x, y = batches[r]
                with self.rng.use(r, check=self._first_step):  # every draw of r's forwards and backward
                    for i, (xm, ym) in enumerate(micro_batches(x, y, self.accum)):
                        share = weighting.weight(ym, ignore, total, 1.0 / (self.topo.replicas * self.accum))
                        with self._grad_sync(last=i == self.accum - 1):
                            parts = self._loss(xm, ym, distilling)
                            self.precision.backward(parts.total * share * self.replica_factor)
                        parts_sum[:3] += torch.stack([parts.total.detach(), parts.ce, parts.distill]) * share
        self._first_step = False
        if self.gathered_head is not None:
            self.gathered_head.finish()  # the fused head's gradient, averaged over replicas, into its shards
        clip = self.grad_clip
        if clip is not None:
            self.precision.unscale(self.optimizer)
            clip_grad_norm = sharding.clip_grad_norm_ if self.sharded else torch.nn.utils.clip_grad_norm_
            norm = clip_grad_norm(self.model.parameters(), clip)
            parts_sum[3] = norm * (len(self.local_replicas) / self.topo.replicas)
        self.precision.step(self.optimizer)
        self.lr_schedule.step()
        self.optimizer.zero_grad(set_to_none=True)
        return parts_sum

    def _loss(self, x: Any, y: torch.Tensor, distilling: bool) -> LossParts:
        """Algorithm 1's loss on one micro-batch: forwards under autocast, the loss itself in float32.

        With a fused output layer the forwards stop at the hidden states and the chunked loss projects them
        (codistill/engine/fused_head.py, chunked.py).
        """
        gathered = self.gathered_head.get if self.gathered_head is not None else None
        with self.precision.autocast():
            teachers = self.teachers.predict(x, self.head) if distilling else []
            student = fused_head.predict(self.module, self.model, self.head, x, gathered)
        return self.loss(student, teachers, y)

    def _grad_sync(self, last: bool) -> ContextManager:
        """DDP all-reduces (FSDP reduce-scatters) the gradient on the last micro-batch of a step only."""
        if self.sharded:
            self.model.set_requires_gradient_sync(last)
            return contextlib.nullcontext()
        return self.ddp.no_sync() if self.ddp is not None and not last else contextlib.nullcontext()

    def _batch(self, step: int, replica: int) -> tuple[Any, torch.Tensor]:
        """`replica`'s batch of this step, on this worker's device (steps must be consecutive)."""
        return self.batches.get(step, replica)

    # --- what exchanges, evaluation and checkpoints (engine/checkpointing.py) read --------------------------------
    def sync_buffers(self) -> None:
        """Make every replica's buffers replica 0's (DDP only does so at the next forward)."""
        if self.topo.simulated or self.topo.replicas == 1 or not self.has_buffers:
            return
        for b in self.model.buffers():
            dist.broadcast(b, src=self.topo.group_leader_rank(), group=self.topo.replica_pg)

    def flat_state(self) -> torch.Tensor:
        self.sync_buffers()
        return self.flattener.flatten(self.model)

    def full_state(self) -> dict[str, torch.Tensor]:
        """The whole model's state_dict on the CPU (sharded: gathered within the group; every replica calls it)."""
        if self.sharded:
            return sharding.full_state_dict(self.model)
        return {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}

    def fingerprint(self, state: Optional[dict[str, torch.Tensor]] = None) -> str:
        """SHA-256 of the parameters' bytes: equal on every replica of a group, different between groups.

        `state`: `full_state()`, when the caller already has it (gathering a sharded model is a collective).
        """
        digest = hashlib.sha256()
        params = {name for name, _ in self.model.named_parameters()}
        for name, t in (state if state is not None else self.full_state()).items():
            if name in params:
                digest.update(t.contiguous().numpy().tobytes())
        return digest.hexdigest()[:16]

    @torch.no_grad()
    def predict(self, x: Any) -> Prediction:
        """The student's prediction (eval mode) on one held-out batch: logits, or hidden states and the fused head."""
        self.model.eval()
        out = fused_head.predict(self.model, self.model, self.head, to_device(x, self.device))
        if self.sharded:
            self.model.reshard()  # the root stays gathered after a forward without backward; free it
        return out

    def staleness(self, step: int) -> int:
        s = self.teachers.staleness(step)
        return -1 if s is None else s

    def release(self) -> None:
        """Drop DDP (its reducer holds process-group work) before the process group is destroyed, and stop the
        loaders' worker processes."""
        self.module, self.ddp = self.model, None
        self.batches.close()
