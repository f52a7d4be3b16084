"""Held-out metrics: per-group loss/accuracy, the ensemble of the groups, and churn between models.

Churn (Anil et al. 2018) measures how reproducible predictions are: between two models, the fraction of held-out
examples whose top-1 predictions differ, and the mean absolute difference of their predicted probabilities.

Everything is computed as sums (`eval_sums`) so shards evaluated on different ranks add up exactly.
"""

from __future__ import annotations

import math
from itertools import combinations
from typing import Optional

import torch


def churn(probs_a: torch.Tensor, probs_b: torch.Tensor) -> tuple[float, float]:
    """(top-1 disagreement rate, mean |p_a - p_b| summed over classes) between two models' predictions."""
    top1 = (probs_a.argmax(-1) != probs_b.argmax(-1)).float().mean().item()
    prob_l1 = (probs_a - probs_b).abs().sum(-1).mean().item()
    return top1, prob_l1


def eval_sums(probs: torch.Tensor, labels: torch.Tensor, ignore_index: Optional[int] = None) -> torch.Tensor:
    """probs [G, N, C], labels [N] -> sums [G + 2, 3] (see `summarise` for the layout).

    Sequence predictions [G, N, L, C] with labels [N, L] count each of the N * L positions as an example; positions
    labelled `ignore_index` (padding) are not counted.
    """
    probs, labels = probs.reshape(probs.shape[0], -1, probs.shape[-1]), labels.reshape(-1)
    if ignore_index is not None:
        keep = labels != ignore_index
        probs, labels = probs[:, keep], labels[keep]
    groups = probs.shape[0]
    out = torch.zeros(groups + 2, 3, dtype=torch.float64)
    nll = lambda p: -torch.log(p.gather(-1, labels[:, None]).squeeze(-1).clamp_min(1e-12)).sum()  # noqa: E731
    for g in range(groups):
        out[g, 0] = nll(probs[g])
        out[g, 1] = (probs[g].argmax(-1) == labels).sum()
    ensemble = probs.mean(0)
    out[groups, 0] = nll(ensemble)
    out[groups, 1] = (ensemble.argmax(-1) == labels).sum()
    for a, b in combinations(range(groups), 2):
        out[groups + 1, 0] += (probs[a].argmax(-1) != probs[b].argmax(-1)).sum()
        out[groups + 1, 1] += (probs[a] - probs[b]).abs().sum()
    out[:, 2] = len(labels)
    return out


def summarise(sums: torch.Tensor) -> tuple[list[dict], dict]:
    """Turn reduced sums into per-group records and one run-level record (ensemble, mean pairwise churn)."""
    groups = sums.shape[0] - 2
    n = sums[0, 2].item()
    per_group = [{"eval/loss": sums[g, 0].item() / n, "eval/acc": sums[g, 1].item() / n} for g in range(groups)]
    run = {"ensemble/loss": sums[groups, 0].item() / n, "ensemble/acc": sums[groups, 1].item() / n}
    pairs = groups * (groups - 1) // 2
    if pairs:
        run["churn/top1"] = sums[groups + 1, 0].item() / (n * pairs)
        run["churn/prob_l1"] = sums[groups + 1, 1].item() / (n * pairs)
    return per_group, run


def add_token_metrics(record: dict, tokens_per_s: float) -> None:
    """A language model's record: the perplexity of each loss per token, and the positions trained per second
    (batch_size x sequence length x steps per second, padding included: the throughput a group computes)."""
    for key in ("train/ce", "eval/loss", "ensemble/loss"):
        if key in record:
            record[key.split("/")[0] + "/ppl"] = math.exp(min(record[key], 700.0))
    if record.get("group") is not None:
        record["train/tokens_per_s"] = tokens_per_s
