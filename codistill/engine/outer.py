"""The outer step shared by distill.mode=diloco (Douillard et al. 2023) and distill.mode=average (local SGD).

    before step 0:   outer := group 0's state; every group loads it
    every outer step: delta_g = outer - state_g              (sent in distill.outer_dtype)
                      delta   = mean over groups of delta_g  (the pseudo-gradient)
                      outer   = SGD(outer, grad=delta)       (lr, momentum, nesterov of distill.outer_optim)
                      every group loads outer; its inner optimizer state stays its own

With lr 1 and no momentum the outer step is outer - mean(outer - state_g) = the groups' mean state: local SGD
(post-local SGD with the burn-in schedule), which is how distill.mode=average runs. One code path serves both, so
diloco at lr 1 and momentum 0 gives average's numbers bit for bit.

Buffers (BatchNorm running statistics) are averaged: they travel in the same vector as a difference from the outer
state, and their outer update is the plain mean (lr 1, no momentum), whatever distill.outer_optim says, because a
running statistic has no gradient to take momentum over.

The pseudo-gradients travel through the run's exchange (an all-gather along the group dimension; each rank's
shard of them with topology.strategy=fsdp), and the mean is summed in float32 in group order on every rank, so
simulated mode and torchrun compute the same outer step.

Streaming DiLoCo (Douillard et al. 2025): with distill.fragments=F the outer state is F slices cut between modules,
each with its own outer optimizer (its own momentum), stepped on its own staggered schedule (fragment i before the
steps s with s mod K = i K / F, codistill/distributed/exchange/fragments.py). With distill.exchange_delay=tau the
pseudo-gradient of a fragment is taken when its exchange is launched and the outer step is applied when it lands,
tau steps later: the fragment's parameters are then replaced by the new outer ones (the tau steps of local progress
on that fragment are dropped, Streaming DiLoCo's merge with alpha = 0), while the all-gather overlaps training.
F = 1 and tau = 0 is DiLoCo, on the same code path.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import torch

from codistill.engine.teachers import StateFlattener

if TYPE_CHECKING:
    from codistill.config import DistillConfig

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def hyperparameters(distill: DistillConfig) -> tuple[float, float, bool]:
    """(lr, momentum, nesterov) of the outer SGD: distill.outer_optim for diloco, (1, 0, False) for average."""
    if distill.mode == "average":
        return 1.0, 0.0, False
    o = distill.outer_optim
    return float(o.lr), float(o.momentum), bool(o.nesterov)


class OuterStep:
    """The outer parameters and their optimizers, on this process (the same on every group of a replica index)."""

    def __init__(self, distill: DistillConfig, flattener: StateFlattener, device: torch.device,
                 bounds: Sequence[tuple[int, int]]) -> None:
        """`flattener`: a local group's student's flattener (every group has this architecture). `bounds`: each
        fragment's [start, stop) in its flat state (one fragment, the whole state, without distill.fragments)."""
        self.lr, self.momentum, self.nesterov = hyperparameters(distill)
        self.dtype = DTYPES[distill.outer_dtype]
        is_param = torch.cat([torch.full((n,), p, dtype=torch.bool)  # a tied weight is one parameter
                              for (_, _, n), p in zip(flattener.entries, flattener.is_param)]).to(device)
        self.is_param = [is_param[a:b] for a, b in bounds]
        self.params = [torch.zeros(int(m.sum()), device=device) for m in self.is_param]  # the outer parameters
        self.buffers = [torch.zeros(m.numel() - p.numel(), device=device)  # averaged buffers
                        for m, p in zip(self.is_param, self.params)]
        self.optimizers = [torch.optim.SGD([p], lr=self.lr, momentum=self.momentum, nesterov=self.nesterov)
                           for p in self.params]
        self.started = [False] * len(bounds)

    def state(self, fragment: int) -> torch.Tensor:
        """The outer state of one fragment as a flat vector in the flattener's order (what every group loads)."""
        mask = self.is_param[fragment]
        flat = torch.empty(mask.numel(), device=mask.device)
        flat[mask] = self.params[fragment]
        flat[~mask] = self.buffers[fragment]
        return flat

    def payload(self, fragment: int, local: dict[int, torch.Tensor]) -> dict[int, torch.Tensor]:
        """What each local group sends: before the start its whole float32 state, then its delta in outer_dtype."""
        if not self.started[fragment]:
            return local
        outer = self.state(fragment)
        return {g: (outer - flat.float()).to(self.dtype) for g, flat in local.items()}

    @torch.no_grad()
    def update(self, fragment: int, gathered: list[torch.Tensor]) -> torch.Tensor:
        """Take the outer step from every group's payload (in group order); return the state every group loads."""
        mask, params, buffers = self.is_param[fragment], self.params[fragment], self.buffers[fragment]
        if not self.started[fragment]:  # all groups start from group 0's initialisation, as DDP starts from rank 0's
            first = gathered[0].float()
            params.copy_(first[mask])
            buffers.copy_(first[~mask])
            self.started[fragment] = True
            return self.state(fragment)
        delta = torch.stack([t.float() for t in gathered]).mean(0)
        params.grad = delta[mask]
        self.optimizers[fragment].step()
        params.grad = None
        buffers.sub_(delta[~mask])
        return self.state(fragment)

    def state_dict(self) -> dict:
        return {"params": [p.cpu().clone() for p in self.params], "buffers": [b.cpu().clone() for b in self.buffers],
                "started": list(self.started), "optimizers": [o.state_dict() for o in self.optimizers]}

    @torch.no_grad()
    def load_state_dict(self, state: dict) -> None:
        if not isinstance(state["params"], list):
            raise ValueError("its outer state predates streaming fragments: resume with the version that wrote it "
                             "or trainer.resume=never")
        shapes = lambda ts: [t.shape for t in ts]  # noqa: E731
        if shapes(state["params"]) != shapes(self.params) or shapes(state["buffers"]) != shapes(self.buffers):
            raise ValueError(f"its outer state holds {sum(p.numel() for p in state['params'])} parameters in "
                             f"{len(state['params'])} fragment(s), this run has {sum(p.numel() for p in self.params)} "
                             f"in {len(self.params)}")
        for mine, saved in [*zip(self.params, state["params"]), *zip(self.buffers, state["buffers"])]:
            mine.copy_(saved)
        self.started = list(state["started"])
        for optimizer, saved in zip(self.optimizers, state["optimizers"]):
            optimizer.load_state_dict(saved)
