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


class CollectiveExchange:
    def __init__(
        self, cross_group_pg: dist.ProcessGroup, sizes: list[int], shard_pg: Optional[dist.ProcessGroup] = None
    ) -> None:
        """`cross_group_pg`: the ranks of this replica index in every group (Topology.cross_group_pg).
        `sizes[g]`: the length of group g's flattened state (groups may have different architectures).

        `shard_pg`: this group's replica process group, to shard the cross-group transfer over its R replicas.
        """
        self.pg, self.sizes, self.shard_pg = cross_group_pg, sizes, shard_pg
        self.shards = 1 if shard_pg is None else dist.get_world_size(shard_pg)
        self.shard_numel = math.ceil(max(sizes) / self.shards)
        self.numel = self.shard_numel * self.shards  # all-gathers need equal sizes: pad to the largest architecture
        self.traffic = (0, 0)  # bytes this rank sent to each peer group and received from them, last exchange

    def cross_group_bytes(self, element_size: int = 4) -> int:
        """Bytes one rank receives from other groups per exchange (all-gather payload, padding included)."""
        return (len(self.sizes) - 1) * self.shard_numel * element_size

    def traffic_line(self, step: int) -> Optional[str]:
        sent, received = self.traffic
        return (f"exchange at step {step}: sent {sent} bytes to each of {len(self.sizes) - 1} peer group(s), received "
                f"{received} bytes")

    def close(self) -> None:
        pass

    def exchange(self, step: int, local: dict[int, torch.Tensor]) -> dict[int, Snapshot]:
        ((mine_group, mine),) = local.items()
        padded = torch.zeros(self.numel, dtype=mine.dtype, device=mine.device)
        padded[: mine.numel()] = mine
        r = 0 if self.shard_pg is None else dist.get_rank(self.shard_pg)
        piece = padded[r * self.shard_numel : (r + 1) * self.shard_numel]
        gathered = [torch.empty_like(piece) for _ in self.sizes]
        dist.all_gather(gathered, piece, group=self.pg)  # shard r of every group's state
        sent = piece.numel() * piece.element_size()
        self.traffic = (sent, sent * (len(self.sizes) - 1))
        full = torch.stack(gathered)  # [G, shard]
        if self.shard_pg is not None:
            shards = [torch.empty_like(full) for _ in range(self.shards)]
            dist.all_gather(shards, full, group=self.shard_pg)  # every replica's shard of every group
            full = torch.stack(shards, dim=1).reshape(len(self.sizes), self.numel)
        return {g: Snapshot(g, step, full[g, : self.sizes[g]]) for g in range(len(self.sizes))}
