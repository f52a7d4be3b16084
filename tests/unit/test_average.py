"""distill.mode=average (post-local SGD): its schedule, and that an exchange leaves every group at the groups' mean."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from codistill.algorithm import Schedule
from codistill.config import ConfigError, validate
from tests.helpers import make_config, make_trainer


def test_average_every_step_through_burn_in_then_every_k() -> None:
    s = Schedule(False, burn_in_steps=3, exchange_every=4, averaging=True)
    assert [t for t in range(13) if s.exchange_before(t)] == [0, 1, 2, 3, 4, 8, 12]
    assert not s.distilling(5)


@pytest.mark.parametrize("vectorize", [False, True])
def test_an_exchange_leaves_every_group_at_the_mean_of_their_states(tmp_path: Path, vectorize: bool) -> None:
    trainer = make_trainer(["distill=average", "topology.groups=3", f"topology.vectorize={vectorize}"], tmp_path)
    assert trainer.schedule.averaging and all(not w.teachers.models for w in trainer.workers.values())
    params = lambda: [torch.cat([p.detach().flatten() for p in w.model.parameters()]) for w in trainer.workers.values()]  # noqa: E731
    trainer._exchange(0)  # the start: group 0's initialisation everywhere
    start = params()
    assert all(torch.equal(p, start[0]) for p in start)
    for step in range(3):  # the groups drift apart on their own batches
        if trainer.vectorized is not None:
            trainer.vectorized.train_step(step)
        else:
            for w in trainer.workers.values():
                w.train_step(step)
    before = params()
    assert not torch.equal(before[0], before[1])
    trainer._exchange(3)
    after = params()
    mean = torch.stack(before).mean(0)
    assert all(torch.equal(p, after[0]) for p in after)
    torch.testing.assert_close(after[0], mean)
    trainer.close()


def test_average_needs_the_collective_exchange() -> None:
    cfg = make_config(["topology.mode=simulated", "distill=average", "distill.exchange=filesystem"])
    with pytest.raises(ConfigError, match="distill.mode=average"):
        validate(cfg, 1)
