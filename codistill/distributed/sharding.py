"""FSDP2 inside a group (topology.strategy=fsdp): the student, its optimizer state and every teacher copy sharded
over the group's R replicas.

`fully_shard(block, mesh=mesh["replica"])` wraps each repeated block, then the root, so a rank holds shard r of
every parameter and all-gathers one block at a time just before it runs. The model's code never sees any of it.
A group's math is unchanged (the reduce-scatter averages the same gradients DDP's all-reduce does), so simulated
mode stays the reference and wraps nothing.

Teacher copies are sharded exactly like the student, so replica r of every group holds the same shard r of each
architecture: the exchange moves those local shards along `mesh["group"]` (1/R of the bytes per rank), and no rank
ever holds a whole teacher. Checkpoints go through torch.distributed.checkpoint per group, so a group can resume
with another R; full state_dicts for the tools are gathered within the group (`full_state_dict`).
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor

from codistill.errors import ConfigError

log = logging.getLogger(__name__)


def enabled(strategy: str, topo: Any) -> bool:
    """Whether this process shards its groups: topology.strategy=fsdp under torchrun (simulated mode never does)."""
    return strategy == "fsdp" and not topo.simulated


def local(t: torch.Tensor) -> torch.Tensor:
    """This rank's part of a tensor: a DTensor's local shard, a plain tensor itself."""
    return t.to_local() if isinstance(t, DTensor) else t


def block_classes(paths: Optional[list[str]]) -> Optional[tuple[type, ...]]:
    """The classes topology.fsdp_blocks names, imported (None: detect them per model); one-line ConfigError if not.

    Runs before any process group, so a typo stops every rank at once.
    """
    if paths is None:
        return None
    from hydra.utils import get_object

    classes = []
    for path in paths:
        try:
            obj = get_object(str(path))
        except Exception as e:  # Hydra wraps ImportError/AttributeError; the cause's first line says which part
            cause = e.__cause__ or e
            raise ConfigError(f"topology.fsdp_blocks: {path} does not resolve: {str(cause).splitlines()[0]}") from None
        if not (isinstance(obj, type) and issubclass(obj, nn.Module)):
            raise ConfigError(f"topology.fsdp_blocks: {path} is not an nn.Module class")
        classes.append(obj)
    if not classes:
        raise ConfigError("topology.fsdp_blocks=[] names no class: list block classes, or null to detect them")
    return tuple(classes)


def repeated_blocks(model: nn.Module) -> list[nn.Module]:
    """The default blocks: the children of the outermost nn.ModuleList / nn.Sequential containers whose class
    repeats there (two or more instances with parameters): a transformer's layers, a ResNet stage's blocks, an MLP's
    Linear layers. Modules outside such containers (embeddings, heads) stay with the root."""
    found: list[nn.Module] = []

    def visit(m: nn.Module) -> None:
        repeated: set[type] = set()
        if isinstance(m, (nn.ModuleList, nn.Sequential)):
            counts = Counter(type(c) for c in m.children() if any(True for _ in c.parameters()))
            repeated = {cls for cls, n in counts.items() if n >= 2}
        for child in m.children():
            if type(child) in repeated:
                found.append(child)
            else:
                visit(child)

    visit(model)
    return found


def blocks_of(model: nn.Module, classes: tuple[type, ...]) -> list[nn.Module]:
    """The outermost submodules of `classes` (a block inside a block is gathered with its parent)."""
    found: list[nn.Module] = []

    def visit(m: nn.Module) -> None:
        for child in m.children():
            if isinstance(child, classes):
                found.append(child)
            else:
                visit(child)

    visit(model)
    return found


def shard(model: nn.Module, mesh: Any, classes: Optional[tuple[type, ...]], reshard_after_forward: bool,
          param_dtype: Optional[torch.dtype] = None, where: str = "the model") -> nn.Module:
    """fully_shard each block of `model`, then its root, over `mesh` (a group's replicas); returns `model`.

    `param_dtype`: the dtype parameters are gathered and run in (trainer.precision=bf16); gradients are reduced
    in float32 and the sharded master weights stay float32.
    """
    blocks = blocks_of(model, classes) if classes is not None else repeated_blocks(model)
    if classes is not None and not blocks:
        names = ", ".join(sorted({type(m).__name__ for m in model.modules() if m is not model})) or "none"
        raise ConfigError(
            f"topology.fsdp_blocks=[{', '.join(c.__qualname__ for c in classes)}] matches no module of {where} "
            f"({type(model).__name__}; its submodules' classes: {names})"
        )
    policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32 if param_dtype else None)
    for block in blocks:
        fully_shard(block, mesh=mesh, reshard_after_forward=reshard_after_forward, mp_policy=policy)
    fully_shard(model, mesh=mesh, reshard_after_forward=reshard_after_forward, mp_policy=policy)
    return model


@dataclass(frozen=True)
class ShardingPlan:
    """How this process shards a group's models over the group's replicas (from the topology section's fsdp keys):
    students and teacher copies alike, so replica r of every group holds the same shard r of each architecture."""

    mesh: Any  # the group's replica mesh, mesh["replica"]
    blocks: Optional[tuple[type, ...]]  # topology.fsdp_blocks, imported (None: detected per model)
    reshard_after_forward: bool = True

    def student(self, model: nn.Module, group: int, param_dtype: Optional[torch.dtype] = None) -> nn.Module:
        return shard(model, self.mesh, self.blocks, self.reshard_after_forward, param_dtype,
                     where=f"group {group}'s model")

    def teacher(self, model: nn.Module, group: int) -> nn.Module:
        """A teacher copy sharded like `group`'s student, gathered block by block and freed after each forward."""
        return shard(model, self.mesh, self.blocks, True, where=f"group {group}'s model")


def numel(model: nn.Module) -> tuple[int, int]:
    """(values of the parameters this rank holds, values of the whole model's parameters)."""
    here = sum(local(p).numel() for p in model.parameters())
    return here, sum(p.numel() for p in model.parameters())


def unique_state(model: nn.Module) -> list[tuple[str, torch.Tensor, bool]]:
    """(name, tensor, is a parameter) of every state_dict entry, a tied tensor (input and output embeddings) once,
    under its first name: what an exchange moves and an outer step updates."""
    params = {id(p) for p in model.parameters()}
    seen: set[int] = set()
    entries = []
    for name, t in model.state_dict(keep_vars=True).items():
        if id(t) not in seen:
            seen.add(id(t))
            entries.append((name, t, id(t) in params))
    return entries


def local_state_size(model: nn.Module, replicas: int, replica: int) -> int:
    """What StateFlattener moves for `model` on replica `replica` once sharded over `replicas`: each parameter's
    dim-0 chunk (FSDP2 shards like torch.chunk) plus every buffer whole. Works on the meta device."""
    total = 0
    for name, t, is_param in unique_state(model):
        if is_param and t.dim() > 0:
            rows = -(-t.shape[0] // replicas)
            total += max(0, min(rows, t.shape[0] - replica * rows)) * (t.numel() // max(t.shape[0], 1))
        else:
            total += t.numel()
    return total


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The whole state_dict on the CPU, gathered within the group (every replica of the group must call it).

    Not get_model_state_dict(full_state_dict=True): that fills only global rank 0, so with one group per sub-mesh
    every other group would get an empty dict.
    """
    return {k: (v.full_tensor() if isinstance(v, DTensor) else v).detach().to("cpu", copy=True)
            for k, v in model.state_dict().items()}


def clip_grad_norm_(params: Iterable[nn.Parameter], max_norm: float) -> torch.Tensor:
    """Clip to a global norm over all shards of the group (the DDP path's norm of the averaged gradient)."""
    params = list(params)
    norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
    if isinstance(norm, DTensor):
        norm = norm.full_tensor()
    torch.nn.utils.clip_grads_with_norm_(params, max_norm, norm)
    return norm


def signature(model: nn.Module) -> list[tuple[str, tuple[int, ...]]]:
    """Names and global shapes of a model's state: what a checkpoint must match to be loaded into it."""
    return [(k, tuple(v.shape)) for k, v in model.state_dict().items()]


def _group_state(model: nn.Module, optimizer: torch.optim.Optimizer, teachers: dict[int, nn.Module]) -> dict:
    model_sd, optim_sd = get_state_dict(model, optimizer)
    return {"model": model_sd, "optimizer": optim_sd, "teachers": {f"group{p}": t.state_dict() for p, t in teachers.items()}}


def save_group(folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer, teachers: dict[int, nn.Module],
               pg: Optional[dist.ProcessGroup]) -> None:
    """One group's sharded state into `folder` (every replica writes its shards; `pg`: the group's replicas)."""
    dcp.save(_group_state(model, optimizer, teachers), checkpoint_id=str(folder), process_group=pg)


def load_group(folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer, teachers: dict[int, nn.Module],
               pg: Optional[dist.ProcessGroup]) -> None:
    """Load `save_group`'s state, resharded to this group's R (DCP reads whichever saved shards cover ours)."""
    state = _group_state(model, optimizer, teachers)
    dcp.load(state, checkpoint_id=str(folder), process_group=pg)
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
    for p, t in teachers.items():  # DCP loaded their shards in place; this only checks every key arrived
        t.load_state_dict(state["teachers"][f"group{p}"])
