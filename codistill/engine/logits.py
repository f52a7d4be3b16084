"""A model's output, normalised once: the engine never looks inside a model, only at its logits.

Accepted outputs: a logits tensor; a tuple or list (its first element); a mapping with "logits"; an object with a
`.logits` attribute (Hugging Face's ModelOutput). Anything else is a one-line ModelOutputError naming what came.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from codistill.errors import ModelOutputError


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
