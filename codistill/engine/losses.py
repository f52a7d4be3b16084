"""Distillation losses (psi) and how several peers' predictions become one target (aggregate).

    mean_probs (Anil et al. 2018): psi(mean_j softmax(z_j / T), z)   -- one term against the peers' mean
    mean_kl    (Zhang et al. 2018): mean_j psi(softmax(z_j / T), z)   -- one term per peer, averaged
With one peer (G = 2) the two are identical.

psi = kl is T^2 * KL(p_teacher || softmax(z / T)), batch-averaged. Its gradient with respect to the student logits
is T * (q_student - q_teacher) / B: the T^2 factor keeps the soft term's gradient scale independent of T (Hinton et
al. 2015). KL and soft cross-entropy differ by the teachers' entropy, a constant, so their gradients are the same;
KL is reported because it is 0 when the student agrees with its teachers.
psi = logit_mse is Ba & Caruana (2014)'s logit regression, 0.5 * ||z - z_teacher||^2 batch-averaged (T unused).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F


def scaled(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """logits / T, skipping the division (one op per tensor per step) at T = 1."""
    return logits if temperature == 1 else logits / temperature


Weights = Optional[torch.Tensor]  # [..., B] per-example weights of a mean (ignore_index); None = the plain mean


def batch_mean(per_example: torch.Tensor, weights: Weights) -> torch.Tensor:
    return per_example.mean(-1) if weights is None else (per_example * weights).sum(-1)


def kl_from_log_probs(
    log_q: torch.Tensor, target_probs: torch.Tensor, temperature: float, weights: Weights = None
) -> torch.Tensor:
    """T^2 * KL(target || q), batch-averaged, from the student's log-probabilities at T.

    Written out (F.kl_div's formula) so that leading dimensions (the vectorised mode's groups) are kept: inputs are
    [..., B, C], the result is [...].
    """
    pointwise = torch.xlogy(target_probs, target_probs) - target_probs * log_q
    if weights is None:
        return pointwise.sum((-2, -1)) * (temperature**2 / log_q.shape[-2])
    return batch_mean(pointwise.sum(-1), weights) * temperature**2


def logit_mse(student_logits: torch.Tensor, target_logits: torch.Tensor, weights: Weights = None) -> torch.Tensor:
    return batch_mean(0.5 * (student_logits - target_logits).pow(2).sum(-1), weights)


def distill_loss(
    student_logits: torch.Tensor,
    teacher_logits: list[torch.Tensor],
    temperature: float,
    psi: str,
    aggregate: str,
    log_q: Optional[torch.Tensor] = None,
    weights: Weights = None,
) -> torch.Tensor:
    """psi between the student and its teachers, combined by `aggregate`. Teacher logits carry no graph.

    `log_q`, the student's log_softmax at T when the caller already has it (the CE's at T = 1), saves recomputing
    it: every tensor goes through exactly one softmax per step.
    """
    if psi == "kl":
        if log_q is None:
            log_q = F.log_softmax(scaled(student_logits, temperature), dim=-1)
        probs = [F.softmax(scaled(t, temperature), dim=-1) for t in teacher_logits]
        if aggregate == "mean_probs":
            target = probs[0] if len(probs) == 1 else torch.stack(probs).mean(0)
            return kl_from_log_probs(log_q, target, temperature, weights)
        return torch.stack([kl_from_log_probs(log_q, p, temperature, weights) for p in probs]).mean(0)
    if psi == "logit_mse":
        if aggregate == "mean_probs":
            target = teacher_logits[0] if len(teacher_logits) == 1 else torch.stack(teacher_logits).mean(0)
            return logit_mse(student_logits, target, weights)
        return torch.stack([logit_mse(student_logits, t, weights) for t in teacher_logits]).mean(0)
    raise ValueError(f"unknown psi {psi!r}")
