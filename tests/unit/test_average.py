"""The outer step (codistill/engine/outer.py): distill.mode=average (post-local SGD) leaves every group at the groups' mean,
distill.mode=diloco steps the outer parameters with SGD + Nesterov momentum, and average is diloco at lr 1."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from codistill.engine.algorithm import Schedule
from codistill.config import ConfigError, validate
from tests.helpers import make_config, make_trainer

DILOCO = ["distill=diloco", "optim.name=adamw", "optim.lr=0.01"]


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


def _params(trainer) -> list[torch.Tensor]:
    return [torch.cat([p.detach().flatten() for p in w.model.parameters()]) for w in trainer.workers.values()]


def _train(trainer, steps: range) -> None:
    for step in steps:
        for w in trainer.workers.values():
            w.train_step(step)


@pytest.mark.parametrize("outer_dtype", ["float32", "bfloat16"])
def test_diloco_outer_steps_match_a_hand_computation(tmp_path: Path, outer_dtype: str) -> None:
    lr, m = 0.7, 0.9
    trainer = make_trainer([*DILOCO, f"distill.outer_dtype={outer_dtype}"], tmp_path)
    assert trainer.schedule.averaging and all(not w.teachers.models for w in trainer.workers.values())
    trainer._exchange(0)
    outer = _params(trainer)[0]
    assert all(torch.equal(p, outer) for p in _params(trainer))
    momentum = torch.zeros_like(outer)
    for start in (0, 3):  # two outer steps: the second one uses the momentum of the first
        _train(trainer, range(start, start + 3))
        groups = _params(trainer)
        assert not torch.equal(groups[0], groups[1])
        delta = torch.stack([(outer - g).to(getattr(torch, outer_dtype)).float() for g in groups]).mean(0)
        momentum = m * momentum + delta  # torch.optim.SGD, dampening 0 (the first buffer is the gradient itself)
        outer = outer - lr * (delta + m * momentum)  # Nesterov
        trainer._exchange(start + 3)
        after = _params(trainer)
        assert all(torch.equal(p, after[0]) for p in after)
        torch.testing.assert_close(after[0], outer, rtol=1e-6, atol=1e-7)
    trainer.close()


def test_streaming_diloco_steps_each_fragment_from_its_launch_state_when_it_lands(tmp_path: Path) -> None:
    """F = 2, tau = 1: fragment 1 leaves before step 2 with the groups' states then, its outer step lands before
    step 3 and replaces only that fragment, while fragment 0 keeps each group's own progress."""
    lr, m = 0.7, 0.9
    trainer = make_trainer([*DILOCO, "distill.burn_in_steps=0", "distill.exchange_every=4", "distill.fragments=2",
                            "distill.exchange_delay=1"], tmp_path)
    run = trainer.exchange
    assert {s: run.due(s) for s in range(9) if run.due(s)} == {0: [0, 1], 2: [1], 4: [0], 6: [1], 8: [0]}
    assert [run.lands(s) for s in (0, 2, 4)] == [0, 3, 5]  # the start lands at once
    flat = lambda: [w.flattener.flatten(w.model) for w in trainer.workers.values()]  # noqa: E731
    f0, f1 = (slice(f.start, f.stop) for f in run.fragments[0])
    run.before_step(0)
    outer = flat()[0]
    _train(trainer, range(2))
    run.before_step(2)  # fragment 1 launched: the pseudo-gradients of these states
    launched = flat()
    delta = torch.stack([outer[f1] - g[f1] for g in launched]).mean(0)
    assert not torch.equal(launched[0][f1], launched[1][f1])  # it lands before step 3, not at once
    _train(trainer, range(2, 3))
    before = flat()
    run.before_step(3)
    after = flat()
    expected = outer[f1] - lr * (1 + m) * delta  # Nesterov SGD, first step: buffer = gradient
    for a, b in zip(after, before):
        torch.testing.assert_close(a[f1], expected, rtol=1e-6, atol=1e-7)
        assert torch.equal(a[f0], b[f0])
    assert not torch.equal(after[0][f0], after[1][f0])
    trainer.close()


@pytest.mark.parametrize("vectorize", [False, True])
def test_diloco_at_lr_1_without_momentum_is_average(tmp_path: Path, vectorize: bool) -> None:
    run = ["topology.groups=3", f"topology.vectorize={vectorize}", "trainer.max_steps=12", "distill.burn_in_steps=2",
           "distill.exchange_every=4", "optim.name=adamw", "optim.lr=0.01", "logger.plots=false"]
    states = []
    for name, mode in [("average", ["distill=average"]),
                       ("diloco", ["distill=diloco", "distill.outer_optim.lr=1", "distill.outer_optim.momentum=0",
                                   "distill.outer_optim.nesterov=false"])]:
        trainer = make_trainer([*run, *mode], tmp_path / name)
        trainer.fit()
        trainer.close()
        states.append({g: w.model.state_dict() for g, w in trainer.workers.items()})
    average, diloco = states
    for g in average:
        assert all(torch.equal(average[g][k], diloco[g][k]) for k in average[g])


@pytest.mark.parametrize("mode", ["average", "diloco"])
def test_outer_modes_need_the_collective_exchange(mode: str) -> None:
    cfg = make_config(["topology.mode=simulated", f"distill={mode}", "distill.exchange=filesystem"])
    with pytest.raises(ConfigError, match=f"distill.mode={mode} needs every group at every outer step"):
        validate(cfg, 1)
