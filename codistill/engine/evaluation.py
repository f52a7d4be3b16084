"""Held-out evaluation of the local groups: per-group, ensemble and churn sums (codistill/io/metrics.py).

In simulated mode this process scores the whole held-out set (data.eval_examples of it) with every group. Under
torchrun replica r of each group scores every R-th example, the groups' probabilities on that shard are gathered
along the mesh's "group" dimension (the same ranks the exchange links), and the sums are added up over the group's
replicas, so every rank ends with the same totals. Metrics are sums, so shards add up exactly; they are accumulated
batch by batch and token chunk by token chunk (codistill/engine/eval_chunks.py), so no batch's probabilities outlive
it and evaluation's peak memory does not grow with the held-out set.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist

from codistill.components.data.pipeline import TrainingData
from codistill.distributed.topology import Topology
from codistill.engine import eval_chunks
from codistill.engine.chunked import chunk_size, vocab_of
from codistill.errors import ConfigError, DataFormatError


class Evaluator:
    def __init__(self, workers: dict, data: TrainingData, topo: Topology, examples: int, batch_size: int,
                 ignore_index: Optional[int] = None, sharded: bool = False,
                 chunk_tokens: Optional[int] = None) -> None:
        """`workers`: the local groups' GroupWorkers. `examples`: data.eval_examples (0 = the whole held-out set).
        `sharded`: the students are FSDP-sharded, so a forward is a collective of the group's replicas.
        `chunk_tokens`: loss.chunk_tokens, the tokens scored at a time."""
        self.workers, self.data, self.topo = workers, data, topo
        self.examples = min(examples or len(data.eval_dataset), len(data.eval_dataset))
        self.batch_size, self.ignore_index, self.sharded = batch_size, ignore_index, sharded
        self.chunk_tokens = chunk_tokens
        self._loader: Optional[torch.utils.data.DataLoader] = None

    def loader(self) -> torch.utils.data.DataLoader:
        """The held-out batches this process scores (under torchrun replica r scores every R-th example)."""
        if self._loader is None:
            indices = list(range(self.examples))
            if not self.topo.simulated:
                indices = indices[self.topo.layout.replica :: self.topo.replicas]
            self._loader = self.data.eval_loader(indices, self.batch_size)
        return self._loader

    def batches_per_replica(self) -> int:
        """Held-out batches of the replica with the most examples (replica 0's share, rounded up)."""
        return -(-(-(-self.examples // self.topo.replicas)) // self.batch_size)

    def sums(self) -> torch.Tensor:
        """Per-group, ensemble and churn sums on the held-out set; under torchrun replica r scores shard r."""
        for w in self.workers.values():
            w.sync_buffers()
        workers = [self.workers[g] for g in self.topo.job_groups if g in self.workers]
        gather = (lambda probs: probs) if self.topo.simulated else self._gather_groups
        sums = torch.zeros(len(self.topo.job_groups) + 2, 3, dtype=torch.float64)
        try:
            batches = 0
            for x, y in self.loader():
                batches += 1
                predictions = [w.predict(x) for w in workers]
                chunk = chunk_size(self.chunk_tokens, vocab_of(predictions[0]))
                sums += eval_chunks.batch_sums(predictions, y, self.ignore_index, chunk, gather)
                del predictions
            if self.sharded:  # a sharded forward is a collective: run as many as the group's busiest replica
                for _ in range(batches, self.batches_per_replica()):
                    for w in workers:
                        w.predict(x)
        except DataFormatError as e:
            raise ConfigError(str(e)) from None
        if self.topo.simulated:
            return sums
        sums = sums.to(self.topo.device)
        dist.all_reduce(sums, group=self.topo.replica_pg)
        return sums.cpu()

    def _gather_groups(self, probs: list[torch.Tensor]) -> list[torch.Tensor]:
        """Every group's probabilities of one chunk, from this rank's one group's (along the mesh's group dim)."""
        (mine,) = probs
        gathered = [torch.empty_like(mine, device=self.topo.device) for _ in self.topo.job_groups]
        dist.all_gather(gathered, mine.to(self.topo.device), group=self.topo.cross_group_pg)
        return gathered

    def close(self) -> None:
        self._loader = None  # stops its persistent workers
