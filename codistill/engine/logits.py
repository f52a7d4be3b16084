"""A model's output, normalised once: the engine never looks inside a model, only at its logits.

A batch's inputs are passed as they come: a tensor (or anything else) as `model(x)`; a dict (Hugging Face rows and
collators) as `model(**inputs)` with the keys the model's forward names (`use_cache=False` when it takes one:
training never decodes, and a cache only costs memory), or whole as `model(x)` when the forward names none of them.

Accepted outputs: a logits tensor; a tuple or list (its first element); a mapping with "logits"; an object with a
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
def forward_keywords(cls: type) -> tuple[frozenset[str], bool]:
    """The named arguments of `cls.forward`, and whether it also takes **kwargs."""
    try:
        params = inspect.signature(cls.forward).parameters.values()
    except (TypeError, ValueError):
        return frozenset(), True
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    names = frozenset(p.name for p in params if p.kind in kinds and p.name != "self")
    return names, any(p.kind == inspect.Parameter.VAR_KEYWORD for p in params)


def call(module: torch.nn.Module, x: Any) -> Any:
    """Run `module` on a batch's inputs: `model(**x)` for a dict whose keys its forward names (or takes as **kwargs
    alone), keeping only those keys; else `model(x)` (a model that takes the whole dict as one argument)."""
    if not isinstance(x, Mapping):
        return module(x)
    names, var_kw = forward_keywords(type(unwrap(module)))
    if not names & x.keys() and not (var_kw and not names):
        return module(x)
    kwargs = {k: v for k, v in x.items() if k in names or not names}
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
