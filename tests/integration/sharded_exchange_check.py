"""Run under torchrun (G x R ranks, gloo): the sharded collective exchange equals the full one.

1. One exchange of states of two different sizes (not divisible by R), full and sharded: identical snapshots.
2. Two short codistillation runs, distill.shard_exchange false and true: identical parameters.
Exits non-zero with a message on any difference. Usage: torchrun --nproc-per-node=4 THIS G OUT_DIR
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402

from codistill.distributed.exchange import CollectiveExchange  # noqa: E402
from codistill.distributed.topology import Topology, resolve_layout  # noqa: E402
from codistill.build import build_trainer, components_from_config  # noqa: E402
from tests.helpers import make_config  # noqa: E402


def check_exchange(topo: Topology) -> None:
    G = topo.groups
    sizes = [1001 - 224 * (g % 2) for g in range(G)]
    g = topo.layout.group
    mine = torch.arange(sizes[g], dtype=torch.float32) + 10_000 * g
    full = CollectiveExchange(topo.cross_group_pg, sizes).exchange(7, {g: mine})
    sharded_ex = CollectiveExchange(topo.cross_group_pg, sizes, topo.replica_pg)
    sharded = sharded_ex.exchange(7, {g: mine})
    for p in range(G):
        want = torch.arange(sizes[p], dtype=torch.float32) + 10_000 * p
        assert torch.equal(full[p].flat, want), f"full exchange: group {p} snapshot is wrong"
        assert torch.equal(sharded[p].flat, want), f"sharded exchange: group {p} snapshot differs from the full one"
    assert CollectiveExchange(topo.cross_group_pg, sizes).cross_group_bytes() == (G - 1) * 1001 * 4
    shard = -(-1001 // topo.replicas)  # ceil: the last shard is padded
    assert sharded_ex.cross_group_bytes() == (G - 1) * shard * 4, "sharding must divide cross-group bytes by R"


def train(topo: Topology, out: Path, sharded: bool) -> list[torch.Tensor]:
    cfg = make_config([
        f"topology.groups={topo.groups}", "topology.mode=torchrun", "topology.timeout_s=30", "trainer.max_steps=12",
        "distill.burn_in_steps=3", "distill.exchange_every=4", f"distill.shard_exchange={str(sharded).lower()}",
        "logger.plots=false",
    ])
    trainer = build_trainer(cfg, topo, out / ("sharded" if sharded else "full"), components_from_config(cfg))
    try:
        trainer.fit()
        return [p.detach().clone() for p in trainer.workers[topo.layout.group].model.parameters()]
    finally:
        trainer.close()


def main() -> None:
    groups, out = int(sys.argv[1]), Path(sys.argv[2])
    cfg = make_config([f"topology.groups={groups}", "topology.mode=torchrun"])
    topo = Topology.start(resolve_layout(cfg.topology), "cpu", 30.0)
    clean = False
    try:
        check_exchange(topo)
        full, sharded = train(topo, out, False), train(topo, out, True)
        worst = max((a - b).abs().max().item() for a, b in zip(full, sharded))
        assert worst == 0.0, f"rank {topo.layout.rank}: sharded run differs from the full one by {worst}"
        clean = True
        print(f"rank {topo.layout.rank}: sharded exchange == full exchange", flush=True)
    finally:
        topo.shutdown(clean)


if __name__ == "__main__":
    main()
