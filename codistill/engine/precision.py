"""Mixed precision: autocast around the forwards, float32 losses, float32 master weights and optimizer state.

bf16 needs no loss scaling (its exponent range is float32's) and runs on this CPU's AMX / AVX512-BF16 units and on
GPUs' tensor cores. fp16 needs a GradScaler and is CUDA-only. fp32 is the exact default and the reference.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import ContextManager, Iterable, Optional

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


BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")  # /proc/cpuinfo flags of the CPU units that compute in bf16


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> Optional[set[str]]:
    """The CPU's feature flags (Linux), None where they cannot be read."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return None
    return {flag for line in text.splitlines() if line.startswith("flags") for flag in line.split(":", 1)[1].split()}


def bf16_cpu_warning(uses_bf16: bool, device: torch.device, capability: Optional[str] = None,
                     flags: Optional[Iterable[str]] = None) -> Optional[str]:
    """One line when bf16 would run on a CPU without bf16 units: there torch emulates it, and a bf16 run took more
    than 25x an fp32 run's time on an AVX2-only CPU. None when the CPU has the units, or its flags are unknown."""
    if not uses_bf16 or device.type != "cpu":
        return None
    capability = capability or torch.backends.cpu.get_cpu_capability()
    flags = cpu_flags() if flags is None else set(flags)
    if flags is None or flags & set(BF16_CPU_FLAGS):
        return None
    return (f"bf16 on this CPU (torch capability {capability}, no {' or '.join(BF16_CPU_FLAGS)} in /proc/cpuinfo) is "
            "emulated and can run many times slower than fp32: use trainer.precision=fp32 and "
            "distill.teacher_dtype=float32 here")
