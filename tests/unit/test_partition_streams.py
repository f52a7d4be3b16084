"""data.partition: disjoint shards partition the training set; shared streams are the same data in another order."""

from __future__ import annotations

import numpy as np
import pytest

from codistill.components.data import GroupStream


def _epoch(stream: GroupStream, replicas: int) -> np.ndarray:
    """Every index the group's replicas see in its first epoch, in order."""
    return np.concatenate([
        np.concatenate([stream.batch_indices(s, r).numpy() for r in range(replicas)])
        for s in range(stream.steps_per_epoch)
    ])


@pytest.mark.parametrize("groups, n", [(2, 1000), (3, 1001)])
def test_disjoint_shards_do_not_overlap_and_cover_the_training_set(groups: int, n: int) -> None:
    shards = [GroupStream(n, g, groups, 1, 10, seed=5, partition="disjoint").indices for g in range(groups)]
    for a in range(groups):
        for b in range(a + 1, groups):
            assert not set(shards[a]) & set(shards[b])
    assert sorted(np.concatenate(shards).tolist()) == list(range(n))
    assert max(map(len, shards)) - min(map(len, shards)) <= 1  # balanced


def test_disjoint_batches_stay_in_the_groups_shard() -> None:
    streams = [GroupStream(1000, g, 2, 2, 20, seed=0, partition="disjoint") for g in range(2)]
    for s in streams:
        seen = _epoch(s, 2)
        assert set(seen) <= set(s.indices)
        assert len(set(seen)) == len(seen)  # no example twice in an epoch
    assert not set(_epoch(streams[0], 2)) & set(_epoch(streams[1], 2))


def test_shared_streams_hold_the_same_data_in_a_different_order_per_group() -> None:
    n, bs = 1000, 20
    orders = [_epoch(GroupStream(n, g, 3, 1, bs, seed=0, partition="shared"), 1) for g in range(3)]
    for order in orders:
        assert sorted(order.tolist()) == list(range(n))  # every example once per epoch
    for a in range(3):
        for b in range(a + 1, 3):
            assert not np.array_equal(orders[a], orders[b])
    again = _epoch(GroupStream(n, 1, 3, 1, bs, seed=0, partition="shared"), 1)
    assert np.array_equal(orders[1], again)  # a pure function of (seed, group): reproducible
