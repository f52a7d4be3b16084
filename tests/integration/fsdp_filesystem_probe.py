"""Run under torchrun (4 ranks: 2 groups x 2 FSDP replicas, one job) by test_fsdp.py: drives the sharded filesystem
exchange step by step and damages the directory between a publish and the read, which a training run cannot do."""

from __future__ import annotations

import logging
import shutil
import sys
from pathlib import Path

import torch

from codistill.config import validate
from codistill.distributed.topology import Topology, resolve_layout
from codistill.build import build_trainer, components_from_config
from tests.helpers import make_config


def main(run_dir: Path, overrides: list[str]) -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    cfg = make_config(overrides, base=[])
    layout = resolve_layout(cfg.topology)
    validate(cfg, layout.replicas)
    topo = Topology.start(layout, "cpu")
    trainer = build_trainer(cfg, topo, run_dir, components_from_config(cfg))
    (g, w), ex = next(iter(trainer.workers.items())), trainer.exchange.transport
    peer, folder = 1 - g, Path(ex.store.url) / f"group{1 - g}"

    def copy() -> torch.Tensor:
        return w.teachers.flattener[peer].flatten(w.teachers.models[peer]).clone()

    trainer._exchange(3)  # every group loads its peer's shards of step 3
    kept = copy()
    assert w.teachers.source_step == {peer: 3}

    # step 6: every replica publishes; shard 1 of group 1's version is torn before any reader reads it
    w.train_step(3)
    ex.writer.submit(g, 6, w.flat_state().cpu().view(torch.uint8), ex.signatures[g])  # codec none: the bytes
    ex.writer.flush(60)
    topo.barrier()
    if layout.rank == 0:
        torn = Path(ex.store.url) / "group1" / "step000000006.shard1of2.pt"
        torn.write_bytes(torn.read_bytes()[:200])
    topo.barrier()
    got = ex._read_shards(6)
    assert (peer in got) == (g == 1), got.keys()  # group 0 (reading group 1) keeps its copy on both replicas
    if g == 0:
        assert torch.equal(copy(), kept) and (1, 6) in ex.reader.rejected

    # step 9: a version of group g's peer written with R = 3 (another job's layout) is rejected, the copy kept
    topo.barrier()
    if layout.replica == 0:
        for r in range(3):
            for ext in ("pt", "json"):
                shutil.copy(folder / f"step000000003.shard0of2.{ext}", folder / f"step000000009.shard{r}of3.{ext}")
    topo.barrier()
    assert peer not in ex._read_shards(9)
    print(f"probe rank {layout.rank}: ok", file=sys.stderr)
    ex.close()
    topo.shutdown()


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2:])
