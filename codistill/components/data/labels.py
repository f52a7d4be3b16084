"""Labels of dict batches (Hugging Face rows and collators), and the causal-LM convention of shifting them.

A batch may be a mapping (`input_ids`, `attention_mask`, `labels`, ...): its labels are taken out under
`data.labels_key` and the rest are the model's inputs (`model(**inputs)`, see codistill/engine/logits.py).

Hugging Face causal LMs take `labels = input_ids` and shift them inside the model; codistill computes the loss
itself, so it shifts them instead: position t is scored against labels[t + 1], and the last position has no label
(ignore_index). Positions whose `attention_mask` is 0 (padding), or whose next token is padding, are never scored.
A pair that contradicts the convention in force — labels equal to the inputs where nothing shifts them (the model
would learn to copy the current token), or labels already shifted where the engine shifts them again — is refused
with one line, since either trains a silently wrong objective.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Optional

import torch

from codistill.errors import DataFormatError


def split_labels(batch: Mapping, key: str) -> tuple[dict[str, Any], Any]:
    """(inputs, labels) of a dict batch: every key but `key` is an input of the model."""
    if key not in batch:
        raise DataFormatError(f"a batch is a dict with keys {sorted(map(str, batch))[:8]} and no {key!r}: name the "
                              f"labels' key with data.labels_key=KEY")
    return {k: v for k, v in batch.items() if k != key}, batch[key]


def is_causal_lm(model: torch.nn.Module) -> bool:
    """A Hugging Face causal LM (a `*ForCausalLM` class), whose convention is labels = input_ids."""
    return any(c.__name__.endswith("ForCausalLM") for c in type(model).__mro__)


def input_ids(x: Any) -> Optional[torch.Tensor]:
    """The token ids of a batch's inputs: `input_ids` of a dict, or an integer tensor."""
    ids = x.get("input_ids") if isinstance(x, Mapping) else x
    if isinstance(ids, torch.Tensor) and not ids.is_floating_point() and ids.dtype != torch.bool:
        return ids
    return None


@dataclass
class Labels:
    """What a label may be (a class in [0, num_classes) or `ignore_index`) and how labels align with positions."""

    num_classes: int
    ignore_index: Optional[int] = None
    shift: bool = False  # causal-LM convention: labels = input_ids, scored one position later

    def check(self, y: torch.Tensor, where: str) -> None:
        bad = (y < 0) | (y >= self.num_classes)
        if self.ignore_index is not None:
            bad &= y != self.ignore_index
        if bad.any():
            value = int(y[bad][0])
            hint = (f" (loss.ignore_index={self.ignore_index} is allowed)" if self.ignore_index is not None else
                    f": if {value} marks padding, set loss.ignore_index={value}" if value < 0 else "")
            raise DataFormatError(f"{where} has label {value}, outside [0, {self.num_classes}) — the model predicts "
                                  f"{self.num_classes} classes{hint}")

    def align(self, x: Any, y: torch.Tensor) -> torch.Tensor:
        """Labels per scored position: shifted when `shift`, padding (attention_mask 0) set to ignore_index."""
        mask = x.get("attention_mask") if isinstance(x, Mapping) else None
        if mask is not None and tuple(mask.shape) != tuple(y.shape):
            raise DataFormatError(f"a batch's attention_mask has shape {tuple(mask.shape)}, its labels "
                                  f"{tuple(y.shape)}: they must match")
        if not self.shift and (mask is None or bool(mask.all())):
            return y
        if self.ignore_index is None:
            why = "the last position of a shifted sequence has no label" if self.shift else "attention_mask has padding"
            raise DataFormatError(f"{why}: set loss.ignore_index=-100 (Hugging Face's value) so it is never scored")
        keep = torch.ones_like(y, dtype=torch.bool) if mask is None else mask != 0
        if self.shift:
            y = torch.cat([y[..., 1:], y[..., :1]], -1)
            keep = torch.cat([keep[..., :-1] & keep[..., 1:], torch.zeros_like(keep[..., :1])], -1)
        return y.masked_fill(~keep, self.ignore_index)

    def check_alignment(self, x: Any, y: torch.Tensor, where: str) -> None:
        """Refuse labels that contradict the convention in force (see the module's docstring). The engine checks
        when it chose the convention itself (data.shift_labels unset); a user who set it has declared the labels."""
        ids = input_ids(x)
        if ids is None or tuple(ids.shape) != tuple(y.shape) or y.dim() < 2 or y.shape[-1] < 2:
            return
        valid = y != self.ignore_index if self.ignore_index is not None else torch.ones_like(y, dtype=torch.bool)
        same = bool(((y == ids) | ~valid).all())
        if not self.shift and same and valid.any():
            raise DataFormatError(
                f"{where}'s labels equal its input tokens: the model would learn to copy the current token; give "
                "next-token labels (labels[t] = input_ids[t + 1]), set data.shift_labels=true to have them shifted, or "
                "data.shift_labels=false if copying is the task"
            )
        ahead = bool(((y[..., :-1] == ids[..., 1:]) | ~valid[..., :-1]).all())
        if self.shift and ahead and not same and valid[..., :-1].any():
            raise DataFormatError(
                f"{where}'s labels are already shifted (labels[t] = input_ids[t + 1]) and the engine shifts a causal "
                "LM's labels once more (Hugging Face's convention: labels = input_ids): pass labels = input_ids, or set "
                "data.shift_labels=false"
            )
