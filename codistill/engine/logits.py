"""A model's output, normalised once: the engine never looks inside a model, only at its logits.

A batch's inputs are passed as they come: a tensor (or anything else) as `model(x)`, a dict (Hugging Face rows and
collators) as `model(**inputs)` with the keys the model's forward names (`use_cache=False` when it takes one:
training never decodes, and a cache only costs memory). Accepted outputs: a logits tensor; a tuple or list (its first element); a mapping with "logits"; an object with a
`.logits` attribute (Hugging Face's ModelOutput). Anything else is a one-line ModelOutputError naming what came.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Mapping
from typing import Any

import torch

from codistill.errors import ModelOutputError


def unwrap(module: torch.nn.Module) -> torch.nn.Module:
    """The user's model inside DDP (`.module`) and torch.compile (`._orig_mod`) wrappers."""
    while True:
        inner = getattr(module, "_orig_mod", None) or (getattr(module, "module", None)
                                                        if type(module).__name__ == "DistributedDataParallel" else None)
        if inner is None:
            return module
        module = inner


@functools.lru_cache(maxsize=None)
def forward_keywords(cls: type) -> frozenset[str]:
    """The named arguments of `cls.forward` (its **kwargs excluded); empty when it names none."""
    try:
        params = inspect.signature(cls.forward).parameters.values()
    except (TypeError, ValueError):
        return frozenset()
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return frozenset(p.name for p in params if p.kind in kinds and p.name != "self")


def call(module: torch.nn.Module, x: Any) -> Any:
    """Run `module` on a batch's inputs: `model(**x)` for a dict (the keys its forward names), else `model(x)`."""
    if not isinstance(x, Mapping):
        return module(x)
    names = forward_keywords(type(unwrap(module)))
    kwargs = {k: v for k, v in x.items() if not names or k in names}
    if "use_cache" in names:
        kwargs["use_cache"] = False
    return module(**kwargs)


def as_logits(output: Any) -> torch.Tensor:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    if isinstance(output, Mapping) and isinstance(output.get("logits"), torch.Tensor):
        return output["logits"]
    if isinstance(getattr(output, "logits", None), torch.Tensor):
        return output.logits
    raise ModelOutputError(
        f"the model returned {describe(output)}: return a logits tensor, a tuple/list whose first element is one, "
        "a dict with 'logits', or an object with a .logits tensor"
    )


def describe(output: Any) -> str:
    if isinstance(output, Mapping):
        return f"a {type(output).__name__} with keys {sorted(map(str, output))[:8]}"
    if isinstance(output, (tuple, list)):
        return f"a {type(output).__name__} of {len(output)} ({', '.join(type(o).__name__ for o in output[:4])})"
    return f"a {type(output).__name__}"
