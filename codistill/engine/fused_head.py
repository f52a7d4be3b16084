"""The output layer fused into the chunked loss: forwards stop at the hidden states, the head runs chunk by chunk.

`loss.output_layer` names the model's output layer: `auto` takes a Hugging Face model's `get_output_embeddings()`,
any other value is a module path inside the model (e.g. `head`, `lm_head`). The layer must be a plain nn.Linear
whose output is the model's output: during a fused forward its `forward` is swapped for the identity, so the model
returns the hidden states it would have projected, and codistill.engine.chunked projects them chunk by chunk. Its
weight stays the model's parameter (tied embeddings keep their one tensor) and receives its gradient from the loss.

A layer that is not a plain linear map (a subclass, a missing path) or a model that post-processes its logits
(Hugging Face's `final_logit_softcapping`) is not fused: the loss falls back to chunking the full logits, and one
logged line says why.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any, Callable, Iterator, Optional

import torch
from torch import nn
import torch.distributed as dist
from torch.distributed.tensor import DTensor, Replicate

from codistill.engine.chunked import Head, Prediction
from codistill.engine.logits import as_logits, call

log = logging.getLogger("codistill")


def _identity(hidden: torch.Tensor) -> torch.Tensor:
    return hidden


def layer_name(model: nn.Module, setting: Optional[str]) -> tuple[Optional[str], Optional[str]]:
    """(the output layer's module path, None), or (None, why it cannot be fused). `setting`: loss.output_layer."""
    if setting == "auto":
        get = getattr(model, "get_output_embeddings", None)
        layer = get() if callable(get) else None
        if layer is None:
            return None, "the model has no get_output_embeddings() (name its layer: loss.output_layer=<module path>)"
        name = next((n for n, m in model.named_modules() if m is layer), None)
    else:
        name = setting
        try:
            layer = model.get_submodule(name)
        except AttributeError:
            return None, f"the model has no module {name!r}"
    if type(layer) is not nn.Linear:
        return None, f"its output layer {name!r} is a {type(layer).__name__}, not a plain nn.Linear"
    capping = getattr(getattr(model, "config", None), "final_logit_softcapping", None)
    if capping:
        return None, f"the model soft-caps its logits (final_logit_softcapping={capping})"
    return name, None


def resolve(model: nn.Module, setting: Optional[str], blocker: Optional[str] = None,
            report: bool = True) -> Optional[str]:
    """The layer to fuse for `loss.output_layer=setting`, or None (logging one line why, when fusion was asked for).

    `blocker`: a reason from the run's setup (e.g. sharding) that rules fusion out. `report`: log the outcome (one
    line per process: its first group's).
    """
    if setting is None:
        return None
    name, reason = (None, blocker) if blocker else layer_name(model, setting)
    if not report:
        return name
    if name is None:
        log.warning("loss.output_layer=%s: not fused, the loss chunks the full logits instead, because %s",
                    setting, reason)
    else:
        log.info("loss.output_layer=%s: %s runs inside the chunked loss (forwards stop at the hidden states)",
                 setting, name)
    return name


def head_of(model: nn.Module, name: str) -> Head:
    """The layer's weight and bias; of a sharded model (FSDP2), gathered whole and graph-free (teacher copies,
    evaluation: a training student's goes through GatheredHead)."""
    layer = model.get_submodule(name)
    if isinstance(layer.weight, DTensor):
        return Head(layer.weight.full_tensor(), None if layer.bias is None else layer.bias.full_tensor())
    return Head(layer.weight, layer.bias)


class GatheredHead:
    """A sharded (FSDP2) student's output layer, gathered once per step for the fused loss.

    The full weight (and bias) is a leaf of its own: the chunked loss accumulates its gradient over the step's
    micro-batches, and `finish` averages that over the group's replicas (as FSDP's reduce-scatter averages every
    other gradient) and adds this rank's shard of it to the parameter's sharded gradient. Tied embeddings get the sum
    of both uses, as unsharded.
    """

    def __init__(self, model: nn.Module, name: str, group: dist.ProcessGroup) -> None:
        self.layer, self.group = model.get_submodule(name), group
        self.full: list[torch.Tensor] = []

    def get(self) -> Head:
        if not self.full:
            params = [self.layer.weight] + ([self.layer.bias] if self.layer.bias is not None else [])
            self.full = [p.full_tensor().detach().requires_grad_() for p in params]
        return Head(*self.full)

    @torch.no_grad()
    def finish(self) -> None:
        params = [self.layer.weight] + ([self.layer.bias] if self.layer.bias is not None else [])
        for param, full in zip(params, self.full):
            if full.grad is None:
                continue
            dist.all_reduce(full.grad, group=self.group)
            full.grad.div_(dist.get_world_size(self.group))
            shard = DTensor.from_local(full.grad, param.device_mesh, [Replicate()]).redistribute(
                param.device_mesh, param.placements)
            if param.grad is None:
                param.grad = shard
            else:
                param.grad.to_local().add_(shard.to_local())
        self.full = []


@contextlib.contextmanager
def headless(model: nn.Module, name: Optional[str]) -> Iterator[None]:
    """Within: `model`'s layer `name` returns its input (no-op for name None)."""
    if name is None:
        yield
        return
    layer = model.get_submodule(name)
    layer.forward = _identity
    try:
        yield
    finally:
        del layer.forward


def predict(forward: nn.Module, model: nn.Module, name: Optional[str], x: Any,
            head: Optional[Callable[[], Head]] = None) -> Prediction:
    """`forward`'s prediction on the batch inputs x (`model`, possibly wrapped or compiled): hidden states and head
    when `model` has a fusable layer `name`, else logits.

    A teacher of another architecture (heterogeneous cohorts, a KD teacher) without that layer gives its logits.
    `head`: where the layer's weights come from (default: the model's own, head_of).
    """
    if name is not None and layer_name(model, name)[0] == name:
        with headless(model, name):
            hidden = as_logits(call(forward, x))
        return hidden, head() if head is not None else head_of(model, name)
    return as_logits(call(forward, x))
