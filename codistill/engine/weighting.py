"""How the micro-batches of a step (trainer.grad_accum) and the replicas of a group are weighted into its gradient.

Each micro-batch's loss is a mean over its own positions. Without padding every micro-batch of a step has as many
positions, and equal weights (1 / (R x grad_accum)) give the mean over the group's whole batch. With
loss.ignore_index the micro-batches hold different numbers of labelled positions, and equal weights would give
their mean of means (the bug Hugging Face's Trainer fixed with `num_items_in_batch`): so each micro-batch is
weighted by its labelled positions over the labelled positions of the group's whole step (summed over the R
replicas: an all-reduce of one number under torchrun). Either way the step's gradient is that of the one batch.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.distributed as dist


def labelled(y: torch.Tensor, ignore_index: Optional[int], groups: int = 0) -> torch.Tensor:
    """Labelled positions of `y` (per group along a leading dimension of `groups`), as float64."""
    per_group = y.reshape(groups, -1) if groups else y.reshape(1, -1)
    count = (per_group != ignore_index).sum(-1).double()
    return count if groups else count[0]


def step_total(labels: Sequence[torch.Tensor], ignore_index: int, process_group: Optional[dist.ProcessGroup] = None,
               groups: int = 0) -> torch.Tensor:
    """Labelled positions of the group's whole step: this process's replicas' labels, summed over `process_group`
    (the group's other replicas under torchrun); at least 1, so an all-padding step weighs nothing."""
    total = sum(labelled(y, ignore_index, groups) for y in labels)
    if process_group is not None:
        dist.all_reduce(total, group=process_group)
    return total.clamp_min(1)


def weight(y: torch.Tensor, ignore_index: Optional[int], total: Optional[torch.Tensor], equal: float,
           groups: int = 0) -> torch.Tensor | float:
    """A micro-batch's share of its group's step: `equal` without ignore_index, else its labelled positions / total."""
    if total is None or ignore_index is None:
        return equal
    return (labelled(y, ignore_index, groups) / total).float()
