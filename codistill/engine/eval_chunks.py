"""Held-out metrics accumulated batch by batch and token chunk by token chunk.

The metrics (codistill/io/metrics.py: per-group loss and accuracy, the ensemble's, churn between groups) are sums
over examples, so they add up over batches and over chunks of a batch's tokens. Scoring one chunk at a time keeps
evaluation's peak memory at one batch's predictions (logits, or hidden states with a fused output layer) plus one
chunk's G probability rows, whatever the held-out set's size and, with a fused head, the vocabulary.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch

from codistill.engine.chunked import Prediction, chunk_logits, flat_tokens
from codistill.io import metrics

# All groups' probabilities of one chunk from this process's: identity in simulated mode (it holds every group),
# an all-gather along the mesh's group dimension under torchrun.
Gather = Callable[[list[torch.Tensor]], list[torch.Tensor]]


def batch_sums(predictions: list[Prediction], y: torch.Tensor, ignore_index: Optional[int], chunk: int,
               gather: Gather = lambda probs: probs) -> torch.Tensor:
    """metrics.eval_sums of one batch, [G + 2, 3], computed `chunk` tokens at a time (0 = all at once).

    `predictions`: this process's groups' predictions on the batch (logits, or hidden states and head), in order.
    """
    flat = [flat_tokens(p, 0) for p in predictions]
    labels = y.reshape(-1).cpu()
    n = labels.shape[0]
    chunk = chunk or n
    sums: Optional[torch.Tensor] = None
    for start in range(0, n, chunk):
        sl = slice(start, min(start + chunk, n))
        probs = gather([torch.softmax(chunk_logits(p, sl), -1) for p in flat])
        part = metrics.eval_sums(torch.stack([p.cpu() for p in probs]), labels[sl], ignore_index)
        sums = part if sums is None else sums + part
    return sums
