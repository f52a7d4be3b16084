"""Mixed precision: autocast around the forwards, float32 losses, float32 master weights and optimizer state.

bf16 needs no loss scaling (its exponent range is float32's) and runs on this CPU's AMX / AVX512-BF16 units and on
GPUs' tensor cores. fp16 needs a GradScaler and is CUDA-only. fp32 is the exact default and the reference.
"""

from __future__ import annotations

import contextlib
from typing import ContextManager, Optional

import torch

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
TEACHER_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


class Precision:
    """How one group's step computes: the autocast region, backward, and the optimizer step (scaled for fp16)."""

    def __init__(self, name: str, device: torch.device) -> None:
        self.name, self.dtype, self.device_type = name, PRECISIONS[name], device.type
        self.scaler: Optional[torch.amp.GradScaler] = torch.amp.GradScaler("cuda") if name == "fp16" else None

    def autocast(self) -> ContextManager:
        """Forwards run in the low-precision dtype where autocast allows; fp32 runs as written."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def unscale(self, optimizer: torch.optim.Optimizer) -> None:
        """Bring fp16's scaled gradients back to their true size (before clipping reads their norm)."""
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.scaler is None:
            optimizer.step()
            return
        self.scaler.step(optimizer)  # skipped when the gradients overflowed
        self.scaler.update()

    def state_dict(self) -> dict:
        return self.scaler.state_dict() if self.scaler is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)


def teacher_autocast(dtype: torch.dtype, device: torch.device) -> ContextManager:
    """Teacher copies held in bf16 run under bf16 autocast, so float32 inputs meet bf16 weights without a cast of
    the model; float32 copies run as the surrounding code runs them."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)
