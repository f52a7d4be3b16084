"""A user's components, defined outside the codistill package: the engine must take them by import path only.

Models return every output form the engine accepts (a dict, an object with .logits) and some it must refuse;
datasets augment randomly with torch, numpy and python generators, or break the (input, target) contract.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset


class DictNet(nn.Module):
    """A residual MLP with BatchNorm and dropout, returning {"logits": ...} (and an unused auxiliary output)."""

    def __init__(self, features: int, classes: int, width: int = 32, dropout: float = 0.1) -> None:
        super().__init__()
        self.inp = nn.Linear(features, width)
        self.block = nn.Sequential(nn.BatchNorm1d(width), nn.ReLU(), nn.Dropout(dropout), nn.Linear(width, width))
        self.head = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.inp(x)
        h = h + self.block(h)
        return {"logits": self.head(h), "features": h}


@dataclass
class Output:
    """Hugging Face style: an object with a .logits attribute."""

    logits: torch.Tensor


class ObjectNet(nn.Module):
    def __init__(self, features: int, classes: int) -> None:
        super().__init__()
        self.linear = nn.Linear(features, classes)

    def forward(self, x: torch.Tensor) -> Output:
        return Output(self.linear(x))


class WordNet(nn.Module):
    """Returns a string: no logits anywhere."""

    def __init__(self, features: int, classes: int) -> None:
        super().__init__()
        self.linear = nn.Linear(features, classes)

    def forward(self, x: torch.Tensor) -> str:
        return "logits"


class FlatNet(nn.Module):
    """Returns logits of the wrong shape ([B * C] instead of [B, C])."""

    def __init__(self, features: int, classes: int) -> None:
        super().__init__()
        self.linear = nn.Linear(features, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x).flatten()


class Blobs(Dataset):
    """Gaussian blobs with per-sample random augmentation from all three generators (torch, numpy, python).

    No `targets` attribute: its labels are only seen batch by batch, as with most user datasets.
    """

    def __init__(self, split: str = "train", examples: int = 512, features: int = 16, classes: int = 4,
                 augment: bool = True, bad_label_every: int = 0) -> None:
        g = torch.Generator().manual_seed(0 if split == "train" else 1)
        centres = torch.randn(classes, features, generator=torch.Generator().manual_seed(7)) * 2
        self.y = torch.randint(classes, (examples,), generator=g)
        self.x = centres[self.y] + torch.randn(examples, features, generator=g)
        self.augment, self.bad_label_every, self.classes = augment and split == "train", bad_label_every, classes

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x = self.x[i]
        if self.augment:
            x = x + 0.1 * torch.randn_like(x) + float(np.random.normal(0, 0.05)) + random.uniform(-0.05, 0.05)
        y = int(self.y[i])
        if self.bad_label_every and i % self.bad_label_every == 0:
            y = self.classes + 8  # outside [0, C)
        return x, y


class Triples(Blobs):
    """Samples (input, target, weight): not the (input, target) pairs the engine needs."""

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, float]:
        x, y = super().__getitem__(i)
        return x, y, 1.0


class AttentionBlock(nn.Module):
    """Pre-LN transformer block: x + self-attention(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.out = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        attended = torch.softmax(q @ k.transpose(-2, -1) / (d // self.heads) ** 0.5, -1) @ v
        x = x + self.out(attended.transpose(1, 2).reshape(b, n, d))
        return x + self.mlp(self.ln2(x))


class TinyTransformer(nn.Module):
    """A small transformer classifier: each input feature is a token (value projection + position embedding),
    `layers` attention blocks in an nn.ModuleList, a final LayerNorm, mean pooling and a linear head."""

    def __init__(self, features: int, classes: int, dim: int = 16, layers: int = 2, heads: int = 2) -> None:
        super().__init__()
        self.value = nn.Linear(1, dim)
        self.positions = nn.Embedding(features, dim)
        self.blocks = nn.ModuleList(AttentionBlock(dim, heads) for _ in range(layers))
        self.ln = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.value(x.unsqueeze(-1)) + self.positions(torch.arange(x.shape[1], device=x.device))
        for block in self.blocks:
            h = block(h)
        return self.head(self.ln(h).mean(1))


class FailsOnRank(nn.Module):
    """A linear model that raises on one torchrun rank: in training at a given step, or in evaluation (eval mode).

    Stands for any error of one rank alone (a user's model, a bad sample, a local disk)."""

    def __init__(self, features: int, classes: int, rank: int, when: str, step: int = 3) -> None:
        super().__init__()
        self.linear, self.rank, self.when, self.step, self.calls = nn.Linear(features, classes), rank, when, step, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import os

        here = int(os.environ.get("RANK", "-1")) == self.rank
        if self.training:
            self.calls += 1
        if here and ((self.when == "train" and self.training and self.calls > self.step)
                     or (self.when == "eval" and not self.training and self.calls > 1)):
            raise RuntimeError(f"injected failure in {self.when}")
        return self.linear(x.flatten(1))


class PaddedSequences(Dataset):
    """Token sequences of seeded random lengths, padded to `length`: inputs {"ids": [length]} (a dict, as Hugging
    Face batches are), labels the next token with -100 at padded positions. Lengths differ from sample to sample,
    so micro-batches and replicas hold different numbers of labelled positions."""

    def __init__(self, split: str = "train", examples: int = 256, length: int = 12, vocab: int = 11) -> None:
        g = torch.Generator().manual_seed(0 if split == "train" else 1)
        self.ids = torch.randint(1, vocab, (examples, length + 1), generator=g)
        self.lengths = torch.randint(1, length + 1, (examples,), generator=g)
        self.length = length

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        n, ids = int(self.lengths[i]), self.ids[i]
        x = torch.where(torch.arange(self.length) < n, ids[:-1], 0)
        y = torch.where(torch.arange(self.length) < n, ids[1:], -100)
        return {"ids": x}, y


class TokenNet(nn.Module):
    """Embeddings, a causal running mean over positions, a linear head: [B, L] ids in a dict -> [B, L, vocab]."""

    def __init__(self, vocab: int, dim: int = 16) -> None:
        super().__init__()
        self.embed, self.head = nn.Embedding(vocab, dim), nn.Linear(dim, vocab)

    def forward(self, x: dict[str, torch.Tensor]) -> torch.Tensor:
        h = self.embed(x["ids"])
        h = h.cumsum(1) / torch.arange(1, h.shape[1] + 1, device=h.device)[:, None]
        return self.head(torch.tanh(h))
