"""Snapshot codecs: what a flattened state looks like on the wire (distill.snapshot_codec).

    none   the flat vector's own bytes (float32, or the teacher/outer dtype it was flattened in)
    bf16   bfloat16: half the bytes of float32
    int8   per row one float32 scale amax / 127, values round(x / scale) in [-127, 127]: ~1/4 of float32
    fp8    per row one float32 scale amax / 448, values float8 e4m3 of x / scale: ~1/4 of float32

A row is an output channel: dim 0 of a tensor of two or more dimensions (a Linear's out_features, a Conv's
out_channels). A vector or scalar (bias, norm weight, running statistic) is one row. Rows never straddle tensors, so
one large tensor cannot set the scale of a small one. Every codec's payload is a flat uint8 tensor (scales first,
then values), so every transport moves it as bytes and its size is known from the layout alone: peers agree on
buffer sizes without asking. Receivers dequantise into their own dtype (distill.teacher_dtype for teacher copies).

Error bounds per element (x in a row with maximum |x| = a): int8 |x - x'| <= a / 254; fp8 e4m3
|x - x'| <= max(|x| / 16, a / 448 * 2**-10) (3 mantissa bits; below 2**-6 subnormal spacing 2**-9 of the scale).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from codistill.config import SNAPSHOT_CODECS as CODECS


@dataclass(frozen=True)
class RowLayout:
    """Rows of a flattened state: per tensor (offset, rows, columns), in the flattener's order."""

    blocks: tuple[tuple[int, int, int], ...]
    numel: int

    @classmethod
    def of(cls, entries: Sequence[tuple[str, torch.Size, int]]) -> "RowLayout":
        """From StateFlattener.entries (name, shape, numel), or a contiguous run of them."""
        blocks, offset = [], 0
        for _, shape, n in entries:
            if n:
                rows = shape[0] if len(shape) >= 2 else 1
                blocks.append((offset, rows, n // rows))
            offset += n
        return cls(tuple(blocks), offset)

    @property
    def rows(self) -> int:
        return sum(r for _, r, _ in self.blocks)


class Codec:
    """Encodes a flat vector of `RowLayout` into a uint8 payload and back."""

    def __init__(self, name: str) -> None:
        if name not in CODECS:
            raise ValueError(f"distill.snapshot_codec={name!r} is not one of {', '.join(CODECS)}")
        self.name = name

    def payload_bytes(self, layout: RowLayout, dtype: torch.dtype) -> int:
        """Bytes of the payload of a `dtype` vector of `layout` (what a transport moves)."""
        if self.name == "none":
            return layout.numel * torch.empty((), dtype=dtype).element_size()
        if self.name == "bf16":
            return layout.numel * 2
        return layout.numel + 4 * layout.rows

    @torch.no_grad()
    def encode(self, flat: torch.Tensor, layout: RowLayout) -> torch.Tensor:
        if self.name == "none":
            return flat.contiguous().view(torch.uint8)
        if self.name == "bf16":
            return flat.to(torch.bfloat16).contiguous().view(torch.uint8)
        limit = 127.0 if self.name == "int8" else 448.0
        scales = torch.empty(layout.rows, dtype=torch.float32, device=flat.device)
        values = torch.empty(layout.numel, dtype=torch.int8 if self.name == "int8" else torch.float8_e4m3fn,
                             device=flat.device)
        row = 0
        for offset, rows, cols in layout.blocks:  # one temporary per block (x / scale); the rest in place
            x = flat[offset : offset + rows * cols].view(rows, cols).float()
            scale = torch.linalg.vector_norm(x, float("inf"), dim=1, keepdim=True).div_(limit)
            q = x / torch.where(scale > 0, scale, torch.ones_like(scale))
            q = q.round_().clamp_(-127, 127) if self.name == "int8" else q.clamp_(-limit, limit)
            values[offset : offset + rows * cols].view(rows, cols).copy_(q)
            scales[row : row + rows] = scale.reshape(-1)
            row += rows
        return torch.cat([scales.view(torch.uint8), values.view(torch.uint8)])

    @torch.no_grad()
    def decode(self, payload: torch.Tensor, layout: RowLayout, wire_dtype: torch.dtype,
               dtype: torch.dtype) -> torch.Tensor:
        """The flat vector in `dtype`; `wire_dtype`: the dtype the sender flattened in (for codec none)."""
        payload = payload.contiguous()
        if payload.storage_offset() % 8:  # a slice of a gathered buffer: viewing it as floats needs alignment
            payload = payload.clone()
        if self.name == "none":
            return payload.view(wire_dtype).to(dtype)
        if self.name == "bf16":
            return payload.view(torch.bfloat16).to(dtype)
        split = 4 * layout.rows
        scales = payload[:split].view(torch.float32)
        values = payload[split:].view(torch.int8 if self.name == "int8" else torch.float8_e4m3fn)
        out = torch.empty(layout.numel, dtype=dtype, device=payload.device)
        row = 0
        for offset, rows, cols in layout.blocks:  # int8 x float32 in one pass; float8 has no type promotion
            q = values[offset : offset + rows * cols].view(rows, cols)
            q = q if self.name == "int8" else q.float()
            torch.mul(q, scales[row : row + rows, None], out=out[offset : offset + rows * cols].view(rows, cols))
            row += rows
        return out
