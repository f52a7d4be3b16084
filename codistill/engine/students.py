"""The groups' students before training: each built under its group's seed, placed and sharded, then checked.

Every student (and a KD teacher) runs on two training examples before anything trains: each must return logits
[*label shape, C] with one C for all, which fixes what a label may be (`Labels`). The ranks agree on C, so every
group is checked on some rank; teacher copies are built like the students.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch
from torch import nn

from codistill.components.data.pipeline import to_device
from codistill.components.rng import derive_seed
from codistill.distributed.sharding import ShardingPlan
from codistill.distributed.topology import Topology
from codistill.engine.logits import as_logits, call
from codistill.errors import ConfigError, ModelOutputError


def build_student(build: Callable[[int], nn.Module], group: int, seed: int, device: torch.device,
                  plan: Optional[ShardingPlan], param_dtype: Optional[torch.dtype] = None) -> nn.Module:
    """Group `group`'s student: initialised under the group's seed (the same on every replica), on `device`, sharded
    over the group's replicas when `plan` says so (topology.strategy=fsdp)."""
    torch.manual_seed(derive_seed(seed, "init", group))
    model = build(group).to(device)
    return plan.student(model, group, param_dtype) if plan is not None else model


@torch.no_grad()
def probe_classes(model: nn.Module, x: Any, y: torch.Tensor, device: torch.device, name: str) -> int:
    """C of `model`'s logits on inputs `x`, checked against labels `y`: logits must be [*y.shape, C]."""
    was_training = model.training
    model.eval()
    try:
        output = call(model, to_device(x, device))
    except Exception as e:  # a model may raise anything on inputs it cannot take
        raise ConfigError(f"{name} fails on a batch of the training set: {type(e).__name__}: "
                          f"{str(e).splitlines()[0] if str(e) else ''}") from None
    finally:
        model.train(was_training)
    try:
        logits = as_logits(output)
    except ModelOutputError as e:
        raise ConfigError(f"{name}: {e}") from None
    if logits.dim() < 1 or tuple(logits.shape[:-1]) != tuple(y.shape):
        raise ConfigError(
            f"{name} returned logits of shape {tuple(logits.shape)} for labels of shape {tuple(y.shape)}: logits must "
            f"have the labels' shape plus one dimension of classes, {tuple(y.shape)} + (C,)"
        )
    return int(logits.shape[-1])


def check_classes(models: dict[str, nn.Module], x: Any, y: torch.Tensor, topo: Topology) -> int:
    """The one C every model in `models` (by name, for messages) predicts, agreed by every rank."""
    classes = {name: probe_classes(model, x, y, topo.device, name) for name, model in models.items()}
    if len(set(classes.values())) > 1:
        raise ConfigError(f"the models predict different numbers of classes ({classes}): every group of a cohort "
                          "must predict the same classes")
    num_classes = next(iter(classes.values()))
    topo.check_agree(str(num_classes), "number of classes the models predict")
    return num_classes
