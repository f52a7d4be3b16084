"""Vectorised simulated mode: the G groups of one architecture trained as one stacked model with torch.func.

In simulated mode the loop runs G small models one after the other, so for small models the step is dominated by
per-operation overhead paid G times. Here the groups' parameters are stacked along a leading group dimension
(as torch.func.stack_module_state does), so a step is one `vmap(functional_call)` for every group's teachers,
one for the students, the loss on [G, ...] tensors (the workers' LossSpec), one backward and one
optimizer step over the stacked tensors. The arithmetic is the loop's, group by group, so the parameters agree with the loop (and
hence with torchrun) to float rounding.

Each group's module keeps working unchanged: its parameters become views of its slice of the stacked tensors, so
evaluation, exchanges and checkpoints read the live values. The groups share one optimizer and schedule over the
stacked tensors (element-wise optimizers such as SGD and Adam treat each slice as the loop treats each group).

Supported when the groups share an architecture and the model has no randomness or buffers to keep per group:
dropout's per-replica random streams and BatchNorm's in-place running statistics cannot be reproduced inside vmap,
so such models (and torchrun, where a process holds one group) fall back to the loop with a logged reason.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn
from torch.func import functional_call, vmap
from torch.utils._pytree import tree_map

from codistill.engine import fused_head, weighting
from codistill.engine.chunked import Head, Prediction
from codistill.engine.logits import as_logits
from codistill.engine.precision import teacher_autocast
from codistill.distributed.topology import Topology
from codistill.engine.worker import GroupWorker, split_batch

log = logging.getLogger("codistill")

Params = dict[str, torch.Tensor]


@dataclass(frozen=True)
class StepOptions:
    """The settings that decide whether groups can run stacked: trainer.precision, trainer.compile, distill.mode and
    distill.exchange, and whether the data gives dict batches (the students' probe batch)."""

    precision: str = "fp32"
    compile: bool = False
    mode: str = "codistill"
    exchange: str = "collective"
    dict_batches: bool = False


def unsupported_reason(topo: Topology, workers: dict[int, GroupWorker], options: StepOptions = StepOptions()
                       ) -> Optional[str]:
    """Why these groups cannot run stacked, or None when they can."""
    if not topo.simulated:
        return "it needs topology.mode=simulated (under torchrun a process holds one group)"
    if len(workers) < 2:
        return "there is only one group"
    if options.precision == "fp16":
        return "fp16's GradScaler steps each group's optimizer on its own"
    if options.compile:
        return "trainer.compile compiles each group's module, not the stacked functional step"
    if options.mode == "kd":
        return "distill.mode=kd's fixed teacher is not a stack of exchanged peer copies"
    exchange = options.exchange
    if exchange != "collective":
        return f"distill.exchange={exchange} may leave groups with different teacher copies"
    models = [w.model for w in workers.values()]
    shapes = [(type(m), [(n, p.shape) for n, p in m.named_parameters()]) for m in models]
    if any(s != shapes[0] for s in shapes):
        return "the groups have different architectures"
    if any(True for _ in models[0].buffers()):
        return "the model has buffers (e.g. BatchNorm), whose in-place updates vmap cannot keep per group"
    if any(isinstance(m, nn.RNNBase) for m in models[0].modules()):
        return "the model has a recurrent layer (LSTM/GRU/RNN), for which torch.func's vmap has no batching rule"
    if any(isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0 for m in models[0].modules()):
        return "the model uses dropout, whose per-replica random streams the stacked step cannot reproduce"
    if options.dict_batches:
        return "the batches are dicts (model(**inputs)), which the stacked step does not map over"
    return None


def build(topo: Topology, workers: dict[int, GroupWorker], options: StepOptions) -> Optional["VectorizedGroups"]:
    """The stacked engine (topology.vectorize) when the groups allow it; else None (the loop), with the reason."""
    reason = unsupported_reason(topo, workers, options)
    if reason is not None:
        log.warning("topology.vectorize: running the groups one by one because %s", reason)
        return None
    log.info("topology.vectorize: %d groups run as one stacked model", len(workers))
    return VectorizedGroups(workers)


def clip_stacked(params: list[torch.Tensor], max_norm: float) -> torch.Tensor:
    """clip_grad_norm_ of every group at once over stacked [G, ...] parameters; returns the G pre-clip norms."""
    grads = [p.grad for p in params if p.grad is not None]
    norms = torch.stack([g.reshape(g.shape[0], -1).norm(dim=1) for g in grads]).norm(dim=0)  # [G]
    scale = (max_norm / (norms + 1e-6)).clamp(max=1.0)  # the formula of torch.nn.utils.clip_grad_norm_
    for g in grads:
        g.mul_(scale.view(-1, *([1] * (g.dim() - 1))))
    return norms


class VectorizedGroups:
    def __init__(self, workers: dict[int, GroupWorker]) -> None:
        """Every group keeps its worker (batches, teacher copies, loss spec); the stack shares one optimizer built by
        the workers' optimizer factory."""
        self.workers = [workers[g] for g in sorted(workers)]
        self.base = self.workers[0].model  # the module functional_call runs with stacked parameters swapped in
        self.names = [n for n, _ in self.base.named_parameters()]
        self.params: Params = {
            n: torch.stack([w.model.get_parameter(n).detach() for w in self.workers]).requires_grad_()
            for n in self.names
        }
        for g, w in enumerate(self.workers):
            for n, p in w.model.named_parameters():
                p.data = self.params[n].data[g]  # the group's module now reads and writes its stacked slice
        self.optimizer, self.lr_schedule = self.workers[0].optimizer_factory(self.params.values())
        for w in self.workers:  # every group reports (and checkpoints) the one shared optimizer and schedule
            w.optimizer, w.lr_schedule = self.optimizer, self.lr_schedule
        self._teacher_key: Optional[tuple] = None
        self._teachers: tuple[int, Params] = (0, {})
        # a fused output layer (loss.output_layer): the names of its stacked weight and bias (tied: the embedding's)
        self.head = self.workers[0].head
        layer = self.base.get_submodule(self.head) if self.head is not None else None
        by_tensor = {id(p): n for n, p in self.base.named_parameters()}
        self.head_params = [by_tensor[id(t)] for t in (layer.weight, layer.bias) if t is not None] if layer else []

    def train_step(self, step: int) -> torch.Tensor:
        """One step of every group; returns [G, 4] rows as GroupWorker.train_step returns them, stacked."""
        w0, G = self.workers[0], len(self.workers)
        teachers = self._teacher_stack() if w0.schedule.distilling(step) else None
        sums = torch.zeros(G, 4, device=w0.device)
        ignore = w0.loss.ignore_index
        stacked = {}
        for r in w0.local_replicas:
            batches = [w._batch(step, r) for w in self.workers]
            stacked[r] = tree_map(lambda *t: torch.stack(t), *[b[0] for b in batches]), torch.stack([b[1] for b in batches])
        total = None if ignore is None else weighting.step_total([y for _, y in stacked.values()], ignore, groups=G)
        for r in w0.local_replicas:
            x, y = stacked[r]
            for xm, ym in zip(split_batch(x, w0.accum, dim=1), y.chunk(w0.accum, dim=1)):  # trainer.grad_accum
                share = weighting.weight(ym, ignore, total, 1.0 / (len(w0.local_replicas) * w0.accum), groups=G)
                with w0.precision.autocast():
                    teacher_logits = self._teacher_logits(teachers, xm) if teachers is not None else []
                    logits = self._predict(self.params, xm)
                parts = w0.loss(logits, teacher_logits, ym, groups=G)
                (parts.total * share).sum().backward()
                sums[:, :3] += torch.stack([parts.total.detach(), parts.ce, parts.distill], dim=1) * (
                    share[:, None] if isinstance(share, torch.Tensor) else share)
        if w0.grad_clip is not None:
            sums[:, 3] = clip_stacked(list(self.params.values()), w0.grad_clip)
        self.optimizer.step()
        self.lr_schedule.step()
        self.optimizer.zero_grad(set_to_none=True)
        return sums

    def _forward(self, params: Params, x: torch.Tensor) -> torch.Tensor:
        """The stacked groups' outputs: logits, or hidden states with a fused output layer."""
        with fused_head.headless(self.base, self.head):
            return vmap(lambda p, xb: as_logits(functional_call(self.base, p, (xb,))))(params, x)

    def _predict(self, params: Params, x: torch.Tensor) -> Prediction:
        if self.head is None:
            return self._forward(params, x)
        return self._forward(params, x), Head(*(params[n] for n in self.head_params))

    @torch.no_grad()
    def _teacher_logits(self, teachers: tuple[int, Params], x: torch.Tensor) -> list[Prediction]:
        """All G x n teacher forwards in one vmap: the j-th teacher of every group, for every j."""
        n, params = teachers
        if n == 0:
            return []
        G = len(self.workers)
        per_teacher = {name: t.view(n, G, *t.shape[1:]) for name, t in params.items()}
        w0 = self.workers[0]
        with teacher_autocast(w0.teachers.pool.dtype, w0.device):
            out = list(vmap(self._forward, in_dims=(0, None))(per_teacher, x))  # x shared by the n teachers
        if self.head is None:
            return out
        return [(h, Head(*(per_teacher[name][j] for name in self.head_params))) for j, h in enumerate(out)]

    def _teacher_stack(self) -> tuple[int, Params]:
        """n, and the copies stacked [n * G, ...]: row j * G + g is group g's j-th ready teacher copy (peers in
        ascending order, as the loop uses them).

        Rebuilt only when an exchange has changed the copies, so between exchanges the step copies nothing.
        """
        key = tuple(tuple(w.teachers.source_step.values()) for w in self.workers)
        if key != self._teacher_key:
            ready = [w.teachers.ready for w in self.workers]
            if len({len(r) for r in ready}) != 1:
                raise RuntimeError("vectorised groups hold different numbers of teacher copies")
            n = len(ready[0])  # 0 from burn-in's end until the first exchange lands (distill.exchange_delay)
            copies = [w.teachers.models[peers[j]] for j in range(n) for w, peers in zip(self.workers, ready)]
            self._teachers = (n, {name: torch.stack([m.get_parameter(name) for m in copies]) for name in self.names}
                              if n else {})
            self._teacher_key = key
        return self._teachers
