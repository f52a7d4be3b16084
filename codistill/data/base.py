"""The in-memory dataset every loader returns, and the errors they raise."""

from __future__ import annotations

from dataclasses import dataclass

import torch


class DataMissingError(FileNotFoundError):
    """A dataset's files are absent; the message names the command that installs them."""


@dataclass(frozen=True)
class Dataset:
    """A supervised dataset held in memory as tensors.

    Inputs stay in their compact stored dtype (uint8 pixels) and are converted per batch by `prepare`, so a 60k-image
    dataset costs 47 MB rather than 188 MB in every process.
    """

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    input_shape: tuple[int, ...]  # shape of one example after `prepare`
    mean: float = 0.0
    std: float = 1.0
    # Sequence data (a language model's): an example is L token ids and its label the L next tokens, so a model's
    # output is [B, L, num_classes]; losses and metrics score every position.
    sequence: bool = False

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """Stored examples -> model inputs (float, standardised; token ids pass through)."""
        if self.sequence:
            return x
        if x.dtype == torch.uint8:
            x = x.float().div_(255.0)
        return (x - self.mean) / self.std

    def __post_init__(self) -> None:
        assert len(self.train_x) == len(self.train_y) and len(self.test_x) == len(self.test_y)
