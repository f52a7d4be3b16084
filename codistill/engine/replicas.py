"""DDP's buffer semantics for a group whose R replicas run one after another in this process (simulated mode).

Under DDP every replica normalises with its own micro-batch's statistics, and the running statistics kept are
rank 0's (DDP broadcasts rank 0's buffers at every forward). One process running R replicas in turn reproduces that
by giving every replica the step's starting buffers and keeping replica 0's result.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch
from torch import nn


@contextlib.contextmanager
def ddp_buffer_semantics(model: nn.Module, emulate: bool) -> Iterator[Callable[[int], None]]:
    """Yields `before_replica(r)`, to call before replica r's micro-batches; a no-op unless `emulate` (simulated
    mode, a model with buffers, more than one local replica)."""
    if not emulate:
        yield lambda r: None
        return
    buffers = list(model.buffers())
    start = [b.detach().clone() for b in buffers]
    after_replica0: list[torch.Tensor] = []

    def before_replica(r: int) -> None:
        if r == 1:
            after_replica0.extend(b.detach().clone() for b in buffers)
        if r >= 1:
            for b, s in zip(buffers, start):
                b.copy_(s)

    yield before_replica
    for b, s in zip(buffers, after_replica0):
        b.copy_(s)
