"""Which examples each replica of each group sees at each step: a pure function of (seed, group, step).

A group draws its own seeded permutation of its training indices every epoch (the same data in another order, or
its disjoint 1/G shard). Its global batch at step s is the s-th slice of that permutation, and replica r takes
every R-th example of it, exactly the split torch's DistributedSampler makes. Because the stream has no hidden
state, simulated mode and torchrun agree on every batch, and resuming at step s needs nothing but s.
"""

from __future__ import annotations

import numpy as np
import torch


def _rng(seed: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng([seed, *keys])


class GroupStream:
    def __init__(
        self, num_examples: int, group: int, groups: int, replicas: int, batch_size: int, seed: int, partition: str
    ) -> None:
        if partition == "disjoint":
            shards = np.array_split(_rng(seed, 0xD15).permutation(num_examples), groups)
            self.indices = np.sort(shards[group])
        else:
            self.indices = np.arange(num_examples)
        if len(self.indices) < batch_size:
            raise ValueError(
                f"group {group} holds {len(self.indices)} training examples, fewer than trainer.batch_size={batch_size}"
            )
        self.group, self.replicas, self.batch_size, self.seed = group, replicas, batch_size, seed
        self.steps_per_epoch = len(self.indices) // batch_size  # the ragged tail of each epoch is dropped
        self._epoch, self._order = -1, self.indices

    def _epoch_order(self, epoch: int) -> np.ndarray:
        if epoch != self._epoch:
            self._epoch = epoch
            self._order = self.indices[_rng(self.seed, 0x57EA, self.group, epoch).permutation(len(self.indices))]
        return self._order

    def batch_indices(self, step: int, replica: int) -> torch.Tensor:
        """Dataset indices of `replica`'s share of the group's batch at `step`."""
        epoch, i = divmod(step, self.steps_per_epoch)
        order = self._epoch_order(epoch)
        batch = order[i * self.batch_size : (i + 1) * self.batch_size]
        return torch.from_numpy(batch[replica :: self.replicas].copy())
