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
"""

from __future__ import annotations

from typing import TYPE_CHECKING

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
    """The outer parameters and their optimizer, on this process (the same on every group of a replica index)."""

    def __init__(self, distill: DistillConfig, flattener: StateFlattener, device: torch.device) -> None:
        """`flattener`: a local group's student's flattener (every group has this architecture)."""
        self.lr, self.momentum, self.nesterov = hyperparameters(distill)
        self.dtype = DTYPES[distill.outer_dtype]
        self.is_param = torch.cat([torch.full((n,), is_param, dtype=torch.bool)  # a tied weight is one parameter
                                   for (_, _, n), is_param in zip(flattener.entries, flattener.is_param)]).to(device)
        self.params = torch.zeros(int(self.is_param.sum()), device=device)  # the outer parameters
        self.buffers = torch.zeros(flattener.numel - self.params.numel(), device=device)  # averaged buffers
        self.optimizer = torch.optim.SGD([self.params], lr=self.lr, momentum=self.momentum, nesterov=self.nesterov)
        self.started = False

    def state(self) -> torch.Tensor:
        """The outer state as one flat vector in the flattener's order (what every group loads)."""
        flat = torch.empty(self.is_param.numel(), device=self.params.device)
        flat[self.is_param] = self.params
        flat[~self.is_param] = self.buffers
        return flat

    def payload(self, local: dict[int, torch.Tensor]) -> dict[int, torch.Tensor]:
        """What each local group sends: before the start its whole float32 state, then its delta in outer_dtype."""
        if not self.started:
            return local
        outer = self.state()
        return {g: (outer - flat.float()).to(self.dtype) for g, flat in local.items()}

    @torch.no_grad()
    def update(self, gathered: list[torch.Tensor]) -> torch.Tensor:
        """Take the outer step from every group's payload (in group order); return the state every group loads."""
        if not self.started:  # all groups start from group 0's initialisation, as DDP starts from rank 0's
            first = gathered[0].float()
            self.params.copy_(first[self.is_param])
            self.buffers.copy_(first[~self.is_param])
            self.started = True
            return self.state()
        delta = torch.stack([t.float() for t in gathered]).mean(0)
        self.params.grad = delta[self.is_param]
        self.optimizer.step()
        self.params.grad = None
        self.buffers.sub_(delta[~self.is_param])
        return self.state()

    def state_dict(self) -> dict:
        return {"params": self.params.cpu().clone(), "buffers": self.buffers.cpu().clone(), "started": self.started,
                "optimizer": self.optimizer.state_dict()}

    @torch.no_grad()
    def load_state_dict(self, state: dict) -> None:
        if state["params"].shape != self.params.shape or state["buffers"].shape != self.buffers.shape:
            raise ValueError(f"its outer state holds {state['params'].numel()} parameters, this model has "
                             f"{self.params.numel()}")
        self.params.copy_(state["params"])
        self.buffers.copy_(state["buffers"])
        self.started = bool(state["started"])
        self.optimizer.load_state_dict(state["optimizer"])
