"""Per-replica random streams: a replica's draws depend on (seed, group, replica, step) only, never on which other
groups and replicas share its process (simulated mode: all of them; torchrun: none) or what else the process draws."""

from __future__ import annotations

import logging
import random

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from codistill.components.rng import ReplicaRNG

CPU = torch.device("cpu")
GROUPS, REPLICAS, STEPS, SEED = 2, 2, 3, 7


class Noisy(nn.Module):
    """Draws the ways models do: functional dropout, torch.rand (stochastic depth), SDPA's dropout_p, a generator of
    its own (seeded at construction, as each rank's copy would be)."""

    def __init__(self) -> None:
        super().__init__()
        self.own = torch.Generator().manual_seed(123)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = x.view(1, 1, 2, 4)
        attn = F.scaled_dot_product_attention(q, q, q, dropout_p=0.5).flatten()
        return torch.cat([F.dropout(x, 0.5), torch.rand(2), attn, torch.rand(2, generator=self.own)])


def draws(rng: ReplicaRNG, model: nn.Module, replica: int) -> torch.Tensor:
    with rng.use(replica):
        return model(torch.ones(8))


def test_draws_are_per_replica_whatever_shares_the_process() -> None:
    # simulated mode: one process, G models, each running its R replicas in turn, step by step
    models = {g: Noisy() for g in range(GROUPS)}
    rngs = {g: ReplicaRNG(SEED, g, list(range(REPLICAS)), CPU, models[g]) for g in range(GROUPS)}
    simulated = {(g, r, s): draws(rngs[g], models[g], r) for s in range(STEPS) for g in range(GROUPS)
                 for r in range(REPLICAS)}
    # torchrun: a process per (group, replica), its own model copy; other draws from the global generator between
    for g in range(GROUPS):
        for r in range(REPLICAS):
            torch.manual_seed(1000 + 10 * g + r)  # whatever the process's global generator holds
            model = Noisy()
            rng = ReplicaRNG(SEED, g, [r], CPU, model)
            for s in range(STEPS):
                torch.rand(5)  # evaluation, data, initialisation: not the replica's stream
                assert torch.equal(draws(rng, model, r), simulated[(g, r, s)]), (g, r, s)
    # distinct streams: groups and replicas do not repeat each other's masks (the owned generator aside)
    firsts = {k: v[:12] for k, v in simulated.items() if k[2] == 0}
    assert len({tuple(v.tolist()) for v in firsts.values()}) == GROUPS * REPLICAS


def test_the_process_generator_is_left_as_it_was() -> None:
    model = Noisy()
    rng = ReplicaRNG(SEED, 0, [0], CPU, model)
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    draws(rng, model, 0)
    assert torch.equal(torch.rand(3), expected)


class HostNoisy(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * random.random()  # LayerDrop as some models write it: Python's generator, not torch's


@pytest.mark.parametrize(("model", "warned"), [(Noisy(), False), (HostNoisy(), True)])
def test_draws_outside_torch_are_detected(caplog: pytest.LogCaptureFixture, model: nn.Module, warned: bool) -> None:
    rng = ReplicaRNG(SEED, 1, [0], CPU, model)
    with caplog.at_level(logging.WARNING, logger="codistill"):
        with rng.use(0, check=True):
            model(torch.ones(8))
    lines = [r.getMessage() for r in caplog.records]
    assert lines == (["group 1's training step draws from Python's `random` or numpy's global generator, which are "
                      "not kept per replica: simulated mode and torchrun draw different numbers there; draw from "
                      "torch (torch.rand, dropout) for reproducible noise"] if warned else [])
