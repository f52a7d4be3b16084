"""Algorithm 1 of Anil et al. (2018), "Large scale distributed neural network training through online distillation".

    for each step s:
        x, y = this replica's share of this group's batch
        loss = CE(y, f(x))
        if s >= burn_in and some teacher copy is loaded:
            loss += alpha * psi(aggregate(teacher copies' predictions on x), f(x))
        backward; optimizer step            # gradients averaged over the group's replicas only
    exchange before step s when s == burn_in or (s > burn_in and s % K == 0)

Exchanges start at the end of burn-in (no bytes move while nobody distills) and then happen every K steps, so a
teacher copy is at most K steps stale. Hinton's KD is this loss with a fixed teacher; DML is K = 1 with `mean_kl`.

The baseline `distill.mode=average` is post-local SGD (Lin et al. 2020, "Don't use large mini-batches, use local
SGD"; torch.distributed.algorithms.model_averaging.PeriodicModelAverager): nobody distills, and each exchange
replaces every group's state with the groups' mean. It exchanges before step 0 (all groups start from group 0's
initialisation, as DDP starts every rank from rank 0's), before every step up to burn-in (averaging after every
step: with SGD and momentum this is synchronous SGD over all groups' batches, the warm-up phase), then every K steps.

`distill.mode=diloco` (Douillard et al. 2023, "DiLoCo: Distributed Low-Communication Training of Language Models")
runs on the same schedule and the same code (codistill/engine/outer.py): at each exchange an outer SGD with Nesterov
momentum steps the outer parameters along the groups' mean change since the last exchange; `average` is that step
with lr 1 and no momentum. DiLoCo starts from a warm model and has no every-step phase, so its preset sets
burn_in_steps=0 (exchange before step 0, then every H = K steps); a positive burn_in_steps gives it average's
every-step warm-up, with outer steps taken after every step through burn-in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

import torch
import torch.nn.functional as F

from codistill.config import OUTER_MODES
from codistill.engine.chunked import Prediction, chunk_size, chunked_loss, vocab_of
from codistill.engine.losses import distill_loss

if TYPE_CHECKING:
    from codistill.config import DistillConfig, LossConfig


DEFAULT_BURN_IN = 0.1  # of trainer.max_steps, when distill.burn_in_steps is null


def burn_in(burn_in_steps: Optional[int], max_steps: int) -> int:
    """The burn-in a run uses: the configured steps, or DEFAULT_BURN_IN of the run when none is set."""
    return int(max_steps * DEFAULT_BURN_IN) if burn_in_steps is None else burn_in_steps


@dataclass(frozen=True)
class Schedule:
    """When distillation is on and when teacher copies are refreshed."""

    enabled: bool  # False for mode=none or a single group: plain (DDP) training
    burn_in_steps: int
    exchange_every: int
    exchanging: bool = True  # False for mode=kd: the teacher is fixed, nothing is exchanged
    averaging: bool = False  # mode=average or diloco with G > 1: exchanges are outer steps (enabled is False)

    @classmethod
    def from_config(cls, distill: DistillConfig, groups: int, max_steps: int) -> "Schedule":
        """The schedule of the `distill` config section for G = `groups` and a run of `max_steps` steps."""
        kd = distill.mode == "kd"
        return cls(
            kd or (distill.mode not in ("none", *OUTER_MODES) and groups > 1),
            burn_in(distill.burn_in_steps, max_steps), distill.exchange_every,
            exchanging=not kd, averaging=distill.mode in OUTER_MODES and groups > 1,
        )

    def distilling(self, step: int) -> bool:
        return self.enabled and step >= self.burn_in_steps

    def exchange_before(self, step: int) -> bool:
        if self.averaging:
            return step <= self.burn_in_steps or step % self.exchange_every == 0
        if not (self.exchanging and self.distilling(step)):
            return False
        return step == self.burn_in_steps or step % self.exchange_every == 0


@dataclass(frozen=True)
class LossParts:
    """The step's loss and its two parts, as tensors (read with .item() only at log steps)."""

    total: torch.Tensor
    ce: torch.Tensor
    distill: torch.Tensor


@dataclass(frozen=True)
class LossSpec:
    """Algorithm 1's loss settings: distill.alpha, temperature, psi, aggregate and loss.ignore_index."""

    alpha: float = 1.0
    temperature: float = 1.0
    psi: str = "kl"
    aggregate: str = "mean_probs"
    ignore_index: Optional[int] = None
    chunk_tokens: Optional[int] = None  # loss.chunk_tokens (codistill/engine/chunked.py)

    @classmethod
    def from_config(cls, distill: DistillConfig, loss: LossConfig) -> "LossSpec":
        """From the `distill` and `loss` config sections."""
        return cls(distill.alpha, distill.temperature, distill.psi, distill.aggregate, loss.ignore_index,
                   loss.chunk_tokens)

    def __call__(self, student: Prediction, teachers: list[Prediction], y: torch.Tensor, groups: int = 0
                 ) -> LossParts:
        """The loss of the student's prediction (logits, or hidden states and a fused head) against the teachers'.

        Chunked (codistill/engine/chunked.py) when the head is fused or loss.chunk_tokens asks for chunks; else
        loss_from_logits on float32 logits.
        """
        chunk = chunk_size(self.chunk_tokens, vocab_of(student))
        if chunk or isinstance(student, tuple):
            return LossParts(*chunked_loss(student, teachers, y, self, chunk, groups=groups))
        return loss_from_logits(student.float(), [t.float() for t in teachers], y, self.alpha, self.temperature,
                                self.psi, self.aggregate, groups=groups, ignore_index=self.ignore_index)


def loss_from_logits(
    logits: torch.Tensor,
    teacher_logits: list[torch.Tensor],
    y: torch.Tensor,
    alpha: float,
    temperature: float,
    psi: str,
    aggregate: str,
    groups: int = 0,
    ignore_index: Optional[int] = None,
) -> LossParts:
    """The loss of Algorithm 1 from the student's logits.

    Sequence models' outputs [B, L, V] are scored at every position, as a batch of B * L predictions. With
    `groups` > 0 every tensor carries a leading dimension of that many groups (the vectorised mode) and each part
    is a vector of the groups' losses: the same arithmetic, without running the groups one by one.
    Positions labelled `ignore_index` (padding) count in neither term: both are means over the other positions.
    """
    lead = (groups,) if groups else ()
    logits, y = logits.reshape(*lead, -1, logits.shape[-1]), y.reshape(*lead, -1)
    teacher_logits = [t.reshape(*lead, -1, t.shape[-1]) for t in teacher_logits]
    log_p = F.log_softmax(logits, dim=-1)  # kept for the soft term at T = 1
    weights = None
    if ignore_index is not None:
        valid = y != ignore_index
        weights = valid / valid.sum(-1, keepdim=True).clamp_min(1)  # a mean over the labelled positions
        y = y.masked_fill(~valid, 0)
    if weights is not None:
        ce = -(log_p.gather(-1, y.unsqueeze(-1)).squeeze(-1) * weights).sum(-1)
    else:
        ce = -log_p.gather(-1, y.unsqueeze(-1)).squeeze(-1).mean(-1) if groups else F.nll_loss(log_p, y)
    if not teacher_logits:
        return LossParts(ce, ce.detach(), torch.zeros_like(ce.detach()))
    log_q = log_p if temperature == 1 and psi == "kl" else None
    distill = distill_loss(logits, teacher_logits, temperature, psi, aggregate, log_q, weights)
    return LossParts(ce + alpha * distill, ce.detach(), distill.detach())
