"""One group's training state in this process: the student, its optimizer, its teacher copies, its batch stream.

Under torchrun a process holds one GroupWorker running one replica, and DDP averages the gradient over the group's
R ranks. In simulated mode a process holds G workers, each running all R replicas' micro-batches and averaging
their gradients by scaling each loss by 1/R before backward: the same sum DDP's all-reduce computes. BatchNorm
follows DDP too: each replica normalises with its own micro-batch statistics, and the running statistics kept are
replica 0's (DDP broadcasts rank 0's buffers at every forward).
"""

from __future__ import annotations

import contextlib
import hashlib
from pathlib import Path
from typing import Any, Callable, ContextManager, Iterator, Mapping, Optional

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from codistill.engine import weighting
from codistill.engine.algorithm import LossParts, Schedule, loss_from_logits
from codistill.components.data import GroupStream
from codistill.components.data.pipeline import TrainingData, to_device
from codistill.errors import ConfigError
from codistill.engine.kd import FixedTeacher
from codistill.engine.logits import as_logits
from codistill.engine.optim import build_optimizer, build_schedule
from codistill.components.rng import ReplicaRNG, derive_seed
from codistill.engine.precision import PRECISIONS, Precision
from codistill.engine.teachers import StateFlattener, TeacherCopies, TeacherPool
from codistill.distributed.topology import Topology
from codistill.distributed import sharding


def shard_like_student(model: nn.Module, cfg: Any, topo: Topology, group: int, param_dtype: Optional[torch.dtype] = None,
                       reshard_after_forward: Optional[bool] = None) -> nn.Module:
    """fully_shard a group's model (student or teacher copy) over the group's replicas, blocks as configured."""
    t = cfg.topology
    reshard = t.reshard_after_forward if reshard_after_forward is None else reshard_after_forward
    return sharding.shard(model, topo.mesh["replica"], sharding.block_classes(t.fsdp_blocks), reshard, param_dtype,
                          where=f"group {group}'s model")


def shard_teacher(model: nn.Module, cfg: Any, topo: Topology, group: int) -> nn.Module:
    """A teacher copy sharded like `group`'s student, gathered block by block and freed after each forward."""
    return shard_like_student(model, cfg, topo, group, reshard_after_forward=True)


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
        cfg: Any,
        topo: Topology,
        data: TrainingData,
        build_model: Callable[[int], nn.Module],
        schedule: Schedule,
        pool: TeacherPool,
        teachers: Optional[FixedTeacher] = None,
    ) -> None:
        """`pool`: this process's teacher copies (shared by its groups). `teachers`: a fixed teacher source (mode=kd)
        used instead of exchanged copies of the peers."""
        self.group, self.cfg, self.topo, self.data, self.schedule = group, cfg, topo, data, schedule
        self.device = topo.device
        self.replicas = topo.local_replicas
        torch.manual_seed(derive_seed(cfg.seed, "init", group))  # same init on every replica of the group
        self.model = build_model(group).to(self.device)
        self.sharded = sharding.enabled(cfg, topo)  # FSDP2: this rank holds 1/R of the model (codistill/distributed/sharding.py)
        if self.sharded:
            self.model = shard_like_student(self.model, cfg, topo, group, PRECISIONS[cfg.trainer.precision])
        self.flattener = StateFlattener(self.model, pool.dtype if schedule.enabled else torch.float32)  # what moves
        self.has_buffers = any(True for _ in self.model.buffers())
        use_ddp = not topo.simulated and topo.replicas > 1 and not self.sharded
        self.ddp: Optional[DDP] = (
            DDP(self.model, process_group=topo.replica_pg, device_ids=[self.device.index] if self.device.type == "cuda" else None)
            if use_ddp
            else None
        )
        tr = cfg.trainer
        self.module: nn.Module = self.ddp or self.model
        if tr.compile:
            self.module = torch.compile(self.module)  # checkpoints and evaluation keep using the plain self.model
        self.precision = Precision(tr.precision, self.device)
        self.accum = tr.grad_accum
        # A micro-batch's loss is scaled by its share of the group's step (codistill/engine/weighting.py) times R /
        # (replicas in this process): DDP (and FSDP) divide the sum over the R ranks by R; simulated mode sums here.
        self.replica_factor = topo.replicas / len(self.replicas)
        self.optimizer = build_optimizer(self.model.parameters(), cfg.optim)
        self.lr_schedule = build_schedule(self.optimizer, cfg.optim, cfg.trainer.max_steps)
        peers = [p for p in range(topo.groups) if p != group] if schedule.enabled else []
        self.teachers = teachers if teachers is not None else TeacherCopies(peers, pool)
        self.stream = GroupStream(
            data.num_examples, group, topo.groups, topo.replicas, cfg.trainer.batch_size, cfg.seed, cfg.data.partition
        )
        self._batches: dict[int, Iterator[tuple[int, Any, torch.Tensor]]] = {}  # replica -> its loader
        self.rng = ReplicaRNG(cfg.seed, group, self.replicas, self.device)

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
        batches = {r: self._batch(step, r) for r in self.replicas}
        ignore = self.cfg.loss.ignore_index
        total = None if ignore is None else weighting.step_total(
            [y for _, y in batches.values()], ignore, None if self.topo.simulated else self.topo.replica_pg)
        with self._ddp_buffer_semantics() as before_replica:
            for r in self.replicas:
                before_replica(r)
                x, y = batches[r]
                for i, (xm, ym) in enumerate(micro_batches(x, y, self.accum)):
                    share = weighting.weight(ym, ignore, total, 1.0 / (self.topo.replicas * self.accum))
                    with self._grad_sync(last=i == self.accum - 1):
                        parts = self._loss(xm, ym, distilling, r)
                        self.precision.backward(parts.total * share * self.replica_factor)
                    parts_sum[:3] += torch.stack([parts.total.detach(), parts.ce, parts.distill]) * share
        clip = self.cfg.optim.grad_clip
        if clip is not None:
            self.precision.unscale(self.optimizer)
            clip_grad_norm = sharding.clip_grad_norm_ if self.sharded else torch.nn.utils.clip_grad_norm_
            norm = clip_grad_norm(self.model.parameters(), clip)
            parts_sum[3] = norm * (len(self.replicas) / self.topo.replicas)
        self.precision.step(self.optimizer)
        self.lr_schedule.step()
        self.optimizer.zero_grad(set_to_none=True)
        return parts_sum

    def _loss(self, x: Any, y: torch.Tensor, distilling: bool, replica: int) -> LossParts:
        """Algorithm 1's loss on one micro-batch: forwards under autocast, the loss itself in float32."""
        d = self.cfg.distill
        with self.precision.autocast():
            teacher_logits = self.teachers.predict(x) if distilling else []
            with self.rng.use(replica):
                logits = as_logits(self.module(x))
        return loss_from_logits(logits.float(), [t.float() for t in teacher_logits], y, d.alpha, d.temperature, d.psi,
                                d.aggregate, ignore_index=self.cfg.loss.ignore_index)

    def _grad_sync(self, last: bool) -> ContextManager:
        """DDP all-reduces (FSDP reduce-scatters) the gradient on the last micro-batch of a step only."""
        if self.sharded:
            self.model.set_requires_gradient_sync(last)
            return contextlib.nullcontext()
        return self.ddp.no_sync() if self.ddp is not None and not last else contextlib.nullcontext()

    def _batch(self, step: int, replica: int) -> tuple[Any, torch.Tensor]:
        """`replica`'s batch of this step from its DataLoader (started at the first step run: a resume's step).

        Steps must be consecutive: the loader prefetches them in order.
        """
        if replica not in self._batches:
            loader = self.data.train_loader(self.stream, self.group, replica, step, self.cfg.trainer.max_steps)
            self._batches[replica] = iter(loader)
        got, x, y = next(self._batches[replica])
        if got != step:
            raise RuntimeError(f"group {self.group} replica {replica}: asked for step {step}'s batch, the loader is at {got}")
        return to_device(x, self.device), y.to(self.device, non_blocking=True)

    @contextlib.contextmanager
    def _ddp_buffer_semantics(self) -> Iterator[Callable[[int], None]]:
        """In simulated mode with buffers, give every replica the step's starting buffers; keep replica 0's result."""
        if not (self.topo.simulated and self.has_buffers and len(self.replicas) > 1):
            yield lambda r: None
            return
        buffers = list(self.model.buffers())
        start = [b.detach().clone() for b in buffers]
        after_replica0: list[torch.Tensor] = []

        def before_replica(r: int) -> None:
            if r == 1:
                after_replica0.extend(b.detach().clone() for b in buffers)
            if r >= 1:
                for b, s in zip(buffers, start):
                    b.copy_(s)

        yield before_replica
        for b, s in zip(buffers, after_replica0):
            b.copy_(s)

    # --- exchange, evaluation, checkpoints ------------------------------------------------------------------------
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
    def predict_probs(self, x: Any) -> torch.Tensor:
        """Predicted probabilities of the student (eval mode) on one batch, on the CPU."""
        self.model.eval()
        probs = torch.softmax(as_logits(self.model(to_device(x, self.device))).float(), -1).cpu()
        if self.sharded:
            self.model.reshard()  # the root stays gathered after a forward without backward; free it
        return probs

    def staleness(self, step: int) -> int:
        s = self.teachers.staleness(step)
        return -1 if s is None else s

    def release(self) -> None:
        """Drop DDP (its reducer holds process-group work) before the process group is destroyed, and stop the
        loaders' worker processes."""
        self.module, self.ddp = self.model, None
        self._batches.clear()

    def state_dict(self) -> dict:
        """This group's training state for a checkpoint (the RNG streams are per process: see checkpoint.py).

        A fixed KD teacher is not saved: it is loaded again from its own checkpoint.
        """
        copies = self.teachers.state_dict() if isinstance(self.teachers, TeacherCopies) else {}
        return {
            "group": self.group,
            "model": {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "lr_schedule": self.lr_schedule.state_dict(),
            "teachers": copies,
            "grad_scaler": self.precision.state_dict(),
        }

    # --- sharded checkpoints (topology.strategy=fsdp): DCP shards + this small record --------------------------------
    def _teacher_models(self) -> dict[int, nn.Module]:
        return self.teachers.models if isinstance(self.teachers, TeacherCopies) else {}

    def sharded_record(self) -> dict:
        """What a sharded checkpoint keeps beside the group's DCP shards (written by replica 0)."""
        steps = self.teachers.source_step if isinstance(self.teachers, TeacherCopies) else {}
        return {
            "group": self.group, "signature": sharding.signature(self.model), "teacher_steps": dict(steps),
            "lr_schedule": self.lr_schedule.state_dict(), "grad_scaler": self.precision.state_dict(),
        }

    def save_sharded(self, folder: Path) -> None:
        """Every replica writes its shards of the student, its optimizer state and its teacher copies."""
        sharding.save_group(folder, self.model, self.optimizer, self._teacher_models(), self.topo.replica_pg)

    def load_sharded(self, folder: Path, record: dict) -> None:
        """Load `save_sharded`'s state at this run's R (which may differ from the R that wrote it)."""
        if record["group"] != self.group:
            raise ValueError(f"the checkpoint holds group {record['group']}, not group {self.group}")
        mine = sharding.signature(self.model)
        if [(n, tuple(s)) for n, s in record["signature"]] != mine:
            raise ValueError(f"it was written by another model than group {self.group}'s {type(self.model).__name__} "
                             "(parameter names or shapes differ)")
        sharding.load_group(folder, self.model, self.optimizer, self._teacher_models(), self.topo.replica_pg)
        self.lr_schedule.load_state_dict(record["lr_schedule"])
        self.precision.load_state_dict(record["grad_scaler"])
        for p, step in record["teacher_steps"].items():
            self.teachers.source_step[p] = step
            self.teachers.pool.loaded_step[p] = step

    def load_state_dict(self, state: dict) -> None:
        if state["group"] != self.group:
            raise ValueError(f"the checkpoint holds group {state['group']}, not group {self.group}")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.lr_schedule.load_state_dict(state["lr_schedule"])
        self.precision.load_state_dict(state.get("grad_scaler", {}))
        if isinstance(self.teachers, TeacherCopies):
            self.teachers.load_state_dict(state["teachers"])
