"""A user's language model and token data for the chunked / fused loss tests: a tiny Hugging Face Llama with tied
embeddings, a model whose output layer cannot be fused, and next-token windows of a noisy Markov chain."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import Dataset


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


def tiny_llama(vocab: int, hidden: int = 16, layers: int = 1, heads: int = 2, tie: bool = True) -> nn.Module:
    """transformers' LlamaForCausalLM from a tiny config, input and output embeddings tied (unless `tie` is False)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=64,
                         tie_word_embeddings=tie)
    return LlamaForCausalLM(config)


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
