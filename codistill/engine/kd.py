"""Knowledge distillation (Hinton, Vinyals, Dean 2015): every group learns from one fixed, pre-trained teacher.

The teacher is loaded once from a checkpoint and never changes: it is in eval mode (no dropout), its parameters do
not require grad, and it sits outside DDP and the optimizer. It is not a peer, so nothing is ever exchanged; the
loss is the engine's CE + alpha * psi against its predictions (T^2-scaled KL at temperature T).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

import torch
from torch import nn

from codistill.engine import fused_head
from codistill.engine.chunked import Prediction
from codistill.components.pretrained import load_model

if TYPE_CHECKING:
    from codistill.config import DataConfig


class FixedTeacher:
    """The teacher source of mode=kd, with the interface of TeacherCopies that a GroupWorker uses."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model.eval().requires_grad_(False)
        self.models: dict[int, nn.Module] = {}  # no peer copies: an exchange has nothing to load
        self.source_step: dict[int, Optional[int]] = {}

    @torch.no_grad()
    def predict(self, x: torch.Tensor, head: Optional[str] = None) -> list[Prediction]:
        """The teacher's logits, or hidden states and head when it has the fused layer `head` too."""
        return [fused_head.predict(self.model, self.model, head, x)]

    def staleness(self, step: int) -> Optional[int]:
        return None  # a fixed teacher has no age

    def layouts(self) -> dict[int, list]:
        return {}  # nothing is exchanged

    def state_dict(self) -> dict[int, dict]:
        return {}  # not saved: loaded again from its own checkpoint

    def load_state_dict(self, state: dict[int, dict]) -> None:
        pass

    def restore_steps(self, steps: dict[int, int]) -> None:
        pass


def load_teacher(checkpoint: str, model_name: Optional[str], data: DataConfig, device: torch.device) -> FixedTeacher:
    """The teacher of distill.teacher_checkpoint (architecture from the checkpoint or the distill.teacher_model
    preset, sized by the `data` section)."""
    return FixedTeacher(load_model(checkpoint, data, model_name).to(device))

