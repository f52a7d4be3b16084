"""Vectorised simulated mode (topology.vectorize): the stacked step is the per-group loop, to float rounding."""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from codistill.engine import vectorized

from tests.helpers import make_trainer

# 20 steps spanning burn-in (5 steps) and three exchanges (before steps 5, 10, 15), R = 2 micro-batches per group.
RUN = ["topology.groups=3", "topology.replicas=2", "distill.burn_in_steps=5", "distill.exchange_every=5",
       "trainer.max_steps=20", "trainer.log_every=10"]


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models: one intra-op thread avoids spin-waiting on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("extra", [[], ["distill=dml", "optim=adam", "optim.lr=0.01"],
                                   ["distill.exchange_delay=3", "distill.snapshot_codec=int8"]],
                         ids=["codistill-sgd", "dml-adam", "delayed-int8"])  # delayed: no teacher for steps 5-7
def test_vectorized_equals_the_loop(tmp_path: Path, extra: list[str]) -> None:
    loop = make_trainer([*RUN, *extra], tmp_path / "loop")
    vec = make_trainer([*RUN, *extra, "topology.vectorize=true"], tmp_path / "vec")
    assert loop.vectorized is None and vec.vectorized is not None
    loop.fit()
    vec.fit()
    for g in range(3):
        a, b = loop.workers[g].model.state_dict(), vec.workers[g].model.state_dict()
        worst = max((a[k] - b[k]).abs().max().item() for k in a)
        assert worst < 1e-5, f"group {g}: vectorised differs from the loop by {worst}"
    assert loop.workers[0].staleness(20) == vec.workers[0].staleness(20)


@pytest.mark.parametrize("overrides, reason", [(["model.dropout=0.1"], "dropout"), (["topology.groups=1"], "one group")])
def test_unsupported_configs_fall_back_to_the_loop(tmp_path: Path, caplog, overrides: list[str], reason: str) -> None:
    with caplog.at_level(logging.WARNING, logger="codistill"):
        trainer = make_trainer([*overrides, "topology.vectorize=true"], tmp_path)
    assert trainer.vectorized is None
    assert reason in caplog.text


@pytest.mark.parametrize("model, reason", [(nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4)), "buffers"),
                                           (nn.LSTM(4, 4), "recurrent layer")], ids=["batchnorm", "lstm"])
def test_models_vmap_cannot_stack_run_in_the_loop(tmp_path: Path, model: nn.Module, reason: str) -> None:
    trainer = make_trainer([], tmp_path)
    worker = SimpleNamespace(model=model)
    found = vectorized.unsupported_reason(trainer.topo, {0: worker, 1: worker})
    assert found is not None and reason in found
