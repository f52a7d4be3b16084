"""A small character-level language model: embedding -> LSTM -> linear head over the vocabulary.

Input: token ids [B, L]; output: next-token logits [B, L, V] (one prediction per position).
"""

from __future__ import annotations

import torch
from torch import nn


class CharLSTM(nn.Module):
    def __init__(self, vocab_size: int, embedding_dim: int = 64, hidden: int = 256, layers: int = 1) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, embedding_dim)
        self.lstm = nn.LSTM(embedding_dim, hidden, num_layers=layers, batch_first=True)
        self.head = nn.Linear(hidden, vocab_size)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(self.embed(tokens))
        return self.head(out)
