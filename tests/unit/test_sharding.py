"""topology.strategy=fsdp without a process group: config errors, the default blocks, the shard sizes exchanged."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from codistill.distributed import sharding
from codistill.config import ConfigError, validate
from tests.helpers import USER, make_config
from tests.user_components import AttentionBlock, DictNet, TinyTransformer


@pytest.mark.parametrize(("overrides", "message"), [
    (["distill.shard_exchange=true"], "drop distill.shard_exchange"),
    (["trainer.compile=true"], "does not support trainer.compile"),
])
def test_fsdp_combinations_refused_in_one_line(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        validate(make_config(["topology.strategy=fsdp", *overrides]), 1)


def test_unknown_strategy() -> None:
    with pytest.raises(ConfigError, match="topology.strategy='zero3' is not one of ddp, fsdp"):
        validate(make_config(["topology.strategy=zero3"]), 1)


def test_block_classes_resolve_or_fail_in_one_line() -> None:
    assert sharding.block_classes(None) is None
    assert sharding.block_classes(["tests.user_components.AttentionBlock"]) == (AttentionBlock,)
    with pytest.raises(ConfigError, match="tests.user_components.Nope does not resolve"):
        sharding.block_classes(["tests.user_components.Nope"])
    with pytest.raises(ConfigError, match="tests.user_components.Blobs is not an nn.Module class"):
        sharding.block_classes(["tests.user_components.Blobs"])


def test_default_blocks_are_the_repeated_layers() -> None:
    model = TinyTransformer(16, 4)
    assert sharding.repeated_blocks(model) == list(model.blocks)  # not the embedding, head or the MLPs' Linears
    mlp = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    assert sharding.repeated_blocks(mlp) == [mlp[0], mlp[2], mlp[4]]
    assert sharding.repeated_blocks(DictNet(16, 4)) == []  # nothing repeats: the root alone is sharded
    explicit = sharding.blocks_of(model, (nn.LayerNorm,))
    assert explicit == [model.blocks[0].ln1, model.blocks[0].ln2, model.blocks[1].ln1, model.blocks[1].ln2, model.ln]


def test_local_state_sizes_add_up_to_the_state() -> None:
    """Replica r's exchange buffer: dim-0 chunks of the parameters (as FSDP2 shards them) + whole buffers."""
    model = DictNet(16, 5, width=7)  # odd sizes: uneven chunks; BatchNorm buffers are not sharded
    full = sum(t.numel() for t in model.state_dict().values())
    buffers = sum(t.numel() for t in model.state_dict().values()) - sum(p.numel() for p in model.parameters())
    for replicas in (1, 2, 3):
        sizes = [sharding.local_state_size(model, replicas, r) for r in range(replicas)]
        assert sum(sizes) - (replicas - 1) * buffers == full
    with torch.device("meta"):
        assert sharding.local_state_size(TinyTransformer(16, 4), 2, 1) * 2 == sum(
            p.numel() for p in TinyTransformer(16, 4).parameters())


def test_simulated_fsdp_is_the_reference(tmp_path) -> None:
    """In one process strategy=fsdp shards nothing and computes what strategy=ddp computes: the same parameters after
    training, bit for bit. So simulated mode stays the reference the torchrun FSDP run is compared with
    (tests/integration/test_fsdp.py)."""
    from tests.helpers import make_trainer

    states = {}
    for strategy in ("fsdp", "ddp"):
        trainer = make_trainer([f"topology.strategy={strategy}", "model=tiny_transformer", "trainer.max_steps=4",
                                "distill.burn_in_steps=1", "distill.exchange_every=1", "topology.replicas=2"],
                               tmp_path / strategy, base=USER)
        assert not any(w.sharded for w in trainer.workers.values())
        before = {k: v.clone() for k, v in trainer.workers[0].model.state_dict().items()}
        trainer.fit()
        trainer.close()
        states[strategy] = {f"{g}.{k}": v for g, w in trainer.workers.items() for k, v in w.model.state_dict().items()}
        assert any(not torch.equal(before[k], states[strategy][f"0.{k}"]) for k in before)  # it trained
    assert states["fsdp"].keys() == states["ddp"].keys()
    assert all(torch.equal(states["fsdp"][k], states["ddp"][k]) for k in states["ddp"])

