"""In-job exchange: all-gathers of each group's flattened state along the mesh's "group" dimension.

Replica r of every group takes part in the all-gather of the ranks holding replica index r, so no intra-group
broadcast is needed: replicas are identical, and every rank ends up with every peer's state.

Sharded (`distill.shard_exchange=true`): because the R replicas of a group all need the same peer states,
replica r fetches only the r-th 1/R shard of each peer's state across groups, and the group then all-gathers the
shards among its own replicas (the fast, intra-group link). Each rank moves 1/R of the bytes across groups.

Sharded groups (topology.strategy=fsdp): each rank's state is already its 1/R shard of the model (the local tensors
of its DTensors, with the sizes of replica r's shards), so the first all-gather alone is the whole exchange.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.distributed as dist

from codistill.distributed.exchange.base import Snapshot


def rank_traffic(sizes: list[int], shards: int, element_size: int = 1) -> int:
    """Bytes one rank sends (and as many receives) in the exchange's all-gather across G groups: a ring all-gather
    passes G - 1 pieces of the largest payload (padded, divided by the shards) through every rank."""
    return (len(sizes) - 1) * math.ceil(max(sizes) / shards) * element_size


class _Gather:
    """An all-gather in flight along the group dimension; `wait` finishes it (and the within-group gather of the
    shards, with distill.shard_exchange) and cuts every group's payload out of the padded buffers."""

    def __init__(self, owner: "CollectiveExchange", step: int, sizes: list[int], gathered: list[torch.Tensor],
                 work: Optional[dist.Work]) -> None:
        self.owner, self.step, self.sizes, self.gathered, self.work = owner, step, sizes, gathered, work
        self.result: Optional[dict[int, Snapshot]] = None

    def wait(self) -> dict[int, Snapshot]:
        if self.result is None:
            if self.work is not None:
                self.work.wait()
            full = torch.stack(self.gathered)  # [G, shard]
            o = self.owner
            if o.shard_pg is not None:
                shards = [torch.empty_like(full) for _ in range(o.shards)]
                dist.all_gather(shards, full, group=o.shard_pg)  # every replica's shard of every group
                full = torch.stack(shards, dim=1).reshape(len(self.sizes), -1)
            self.result = {g: Snapshot(g, self.step, full[g, : self.sizes[g]]) for g in range(len(self.sizes))}
            self.gathered, self.work = [], None
        return self.result


class CollectiveExchange:
    def __init__(
        self, cross_group_pg: dist.ProcessGroup, sizes: list[int], shard_pg: Optional[dist.ProcessGroup] = None
    ) -> None:
        """`cross_group_pg`: the ranks of this replica index in every group (Topology.cross_group_pg).
        `sizes[g]`: the length of group g's payload (groups may have different architectures).

        `shard_pg`: this group's replica process group, to shard the cross-group transfer over its R replicas.
        """
        self.pg, self.sizes, self.shard_pg = cross_group_pg, sizes, shard_pg
        self.shards = 1 if shard_pg is None else dist.get_world_size(shard_pg)

    def cross_group_bytes(self, element_size: int = 4) -> int:
        """Bytes one rank receives from other groups per exchange (all-gather payload, padding included)."""
        return rank_traffic(self.sizes, self.shards, element_size)

    def launch(self, step: int, local: dict[int, torch.Tensor], sizes: Optional[list[int]] = None) -> _Gather:
        """Start the all-gather (asynchronous: training goes on until `wait`)."""
        sizes = sizes or self.sizes
        ((mine_group, mine),) = local.items()
        shard_numel = math.ceil(max(sizes) / self.shards)
        padded = torch.zeros(shard_numel * self.shards, dtype=mine.dtype, device=mine.device)
        padded[: mine.numel()] = mine
        r = 0 if self.shard_pg is None else dist.get_rank(self.shard_pg)
        piece = padded[r * shard_numel : (r + 1) * shard_numel]
        gathered = [torch.empty_like(piece) for _ in sizes]
        work = dist.all_gather(gathered, piece, group=self.pg, async_op=True)  # shard r of every group's payload
        return _Gather(self, step, sizes, gathered, work)

    def exchange(self, step: int, local: dict[int, torch.Tensor]) -> dict[int, Snapshot]:
        return self.launch(step, local).wait()

    def close(self) -> None:
        pass
