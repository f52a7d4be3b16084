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

import torch
import torch.nn.functional as F


def kl_to_probs(student_logits: torch.Tensor, target_probs: torch.Tensor, temperature: float) -> torch.Tensor:
    log_q = F.log_softmax(student_logits / temperature, dim=-1)
    return F.kl_div(log_q, target_probs, reduction="batchmean") * temperature**2


def logit_mse(student_logits: torch.Tensor, target_logits: torch.Tensor) -> torch.Tensor:
    return 0.5 * (student_logits - target_logits).pow(2).sum(-1).mean()


def distill_loss(
    student_logits: torch.Tensor, teacher_logits: list[torch.Tensor], temperature: float, psi: str, aggregate: str
) -> torch.Tensor:
    """psi between the student and its teachers, combined by `aggregate`. Teacher logits carry no graph."""
    if psi == "kl":
        if aggregate == "mean_probs":
            target = torch.stack([F.softmax(t / temperature, dim=-1) for t in teacher_logits]).mean(0)
            return kl_to_probs(student_logits, target, temperature)
        log_q = F.log_softmax(student_logits / temperature, dim=-1)  # shared by every per-peer term
        terms = [F.kl_div(log_q, F.softmax(t / temperature, dim=-1), reduction="batchmean") for t in teacher_logits]
        return torch.stack(terms).mean() * temperature**2
    if psi == "logit_mse":
        if aggregate == "mean_probs":
            return logit_mse(student_logits, torch.stack(teacher_logits).mean(0))
        return torch.stack([logit_mse(student_logits, t) for t in teacher_logits]).mean()
    raise ValueError(f"unknown psi {psi!r}")
