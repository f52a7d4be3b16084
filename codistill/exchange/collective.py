"""In-job exchange: one all-gather of each group's flattened state along the mesh's "group" dimension.

Replica r of every group takes part in the all-gather of the ranks holding replica index r, so no intra-group
broadcast is needed: replicas are identical, and every rank ends up with every peer's state.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from codistill.exchange.base import Snapshot


class CollectiveExchange:
    def __init__(self, group_pg: dist.ProcessGroup, sizes: list[int]) -> None:
        """`sizes[g]`: the length of group g's flattened state (groups may have different architectures)."""
        self.pg, self.sizes, self.numel = group_pg, sizes, max(sizes)

    def exchange(self, step: int, local: dict[int, torch.Tensor]) -> dict[int, Snapshot]:
        ((mine_group, mine),) = local.items()
        padded = torch.zeros(self.numel, dtype=mine.dtype, device=mine.device)
        padded[: mine.numel()] = mine  # all-gather needs equal sizes: pad to the largest architecture
        gathered = [torch.empty_like(padded) for _ in self.sizes]
        dist.all_gather(gathered, padded, group=self.pg)
        return {g: Snapshot(g, step, flat[: self.sizes[g]]) for g, flat in enumerate(gathered)}
