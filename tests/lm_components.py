"""A user's language-model data as Hugging Face brings it, defined outside the codistill package.

`hf_rows` is a `datasets.Dataset` of dict rows in Hugging Face's causal-LM convention: `labels = input_ids`,
padding labelled -100 and masked by `attention_mask`; sequences have different lengths, padded to `seq_len`.
`Tokens` gives (input, target) windows of a noisy Markov chain; `CappedLM` has an output layer that cannot be fused
into the chunked loss (it post-processes its logits).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset


def hf_rows(split: str = "train", examples: int = 64, seq_len: int = 12, vocab: int = 48, shifted: bool = False,
            pad_id: int = 0):
    """Rows of a small seeded corpus whose next token is predictable (an arithmetic pattern plus noise)."""
    import datasets

    rng = np.random.default_rng([7, 0 if split == "train" else 1])
    rows = {"input_ids": [], "attention_mask": [], "labels": []}
    for _ in range(examples):
        length = int(rng.integers(seq_len // 2, seq_len + 1))
        start, step = int(rng.integers(1, vocab)), int(rng.integers(1, 4))
        ids = [1 + (start + step * t) % (vocab - 1) for t in range(length)]
        pad = seq_len - length
        labels = ids[1:] + [-100] if shifted else list(ids)
        rows["input_ids"].append(ids + [pad_id] * pad)
        rows["attention_mask"].append([1] * length + [0] * pad)
        rows["labels"].append(labels + [-100] * pad)
    return datasets.Dataset.from_dict(rows).with_format("torch")


def copy_pairs(examples: int = 32, seq_len: int = 12, vocab: int = 48) -> list:
    """(ids, ids) pairs: labels equal to the inputs, a "copy the current token" objective by mistake."""
    import torch

    ids = torch.randint(1, vocab, (examples, seq_len), generator=torch.Generator().manual_seed(0))
    return [(row, row.clone()) for row in ids]


class Tokens(Dataset):
    """Windows of `seq_len` token ids and their next tokens, from next = (3 * prev + 1) % vocab with 25 % noise."""

    def __init__(self, split: str = "train", examples: int = 64, seq_len: int = 16, vocab: int = 64) -> None:
        g = torch.Generator().manual_seed(0 if split == "train" else 1)
        tokens = torch.empty(examples, seq_len + 1, dtype=torch.long)
        tokens[:, 0] = torch.randint(vocab, (examples,), generator=g)
        for i in range(seq_len):
            noise = torch.randint(vocab, (examples,), generator=g)
            keep = torch.rand(examples, generator=g) > 0.25
            tokens[:, i + 1] = torch.where(keep, (3 * tokens[:, i] + 1) % vocab, noise)
        self.x, self.y = tokens[:, :-1].clone(), tokens[:, 1:].clone()

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[i], self.y[i]


class ScaledLinear(nn.Linear):
    """An output layer that post-processes its logits: not a plain linear map, so it cannot be fused."""

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return 30 * torch.tanh(super().forward(h) / 30)


class CappedLM(nn.Module):
    def __init__(self, vocab: int, hidden: int = 16) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, hidden)
        self.head = ScaledLinear(hidden, vocab)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x))
