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

from codistill.engine.chunked import Head, Prediction
from codistill.engine.logits import as_logits

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
    layer = model.get_submodule(name)
    return Head(layer.weight, layer.bias)


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


def predict(forward: Callable[[Any], Any], model: nn.Module, name: Optional[str], x: Any) -> Prediction:
    """`forward(x)`'s prediction: hidden states and head when `model` has a fusable layer `name`, else logits.

    A teacher of another architecture (heterogeneous cohorts, a KD teacher) without that layer gives its logits.
    """
    if name is not None and layer_name(model, name)[0] == name:
        with headless(model, name):
            return as_logits(forward(x)), head_of(model, name)
    return as_logits(forward(x))
