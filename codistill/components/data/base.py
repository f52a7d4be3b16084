"""Built-in datasets in memory: both splits as tensors, served as map-style datasets with a batched fetch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch.utils.data import Dataset

from codistill.errors import DataMissingError  # noqa: F401  (re-exported)


class Batch(tuple):
    """(inputs, targets) already collated by a dataset's batched fetch (`__getitems__`): no per-sample collate."""


class TensorDataset(Dataset):
    """(input, target) pairs held as tensors, fetched a whole batch at a time.

    Inputs stay in their compact stored dtype (uint8 pixels) and are converted per batch: scaled to [0, 1] and
    standardised with (mean, std); integer token ids pass through. `targets` is public (torchvision's name), so the
    engine can check every label once, up front.
    """

    def __init__(self, inputs: torch.Tensor, targets: torch.Tensor, mean: float = 0.0, std: float = 1.0) -> None:
        if len(inputs) != len(targets):
            raise ValueError(f"{len(inputs)} inputs but {len(targets)} targets")
        self.inputs, self.targets, self.mean, self.std = inputs, targets, mean, std

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.uint8:
            x = x.float().div_(255.0)
        elif not x.is_floating_point():
            return x  # token ids
        return (x - self.mean) / self.std

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.prepare(self.inputs[i : i + 1])[0], self.targets[i]

    def __getitems__(self, indices: Sequence[int]) -> Batch:
        idx = torch.as_tensor(indices, dtype=torch.long)
        return Batch((self.prepare(self.inputs[idx]), self.targets[idx]))


class IndexedDataset(Dataset):
    """The examples `indices` of `dataset` (a validation split carved from a training set), batched fetch kept."""

    def __init__(self, dataset: Dataset, indices: torch.Tensor) -> None:
        self.dataset, self.indices = dataset, indices
        targets = getattr(dataset, "targets", None)
        if targets is not None:
            self.targets = torch.as_tensor(targets)[indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> object:
        return self.dataset[int(self.indices[i])]

    def __getitems__(self, indices: Sequence[int]) -> object:
        chosen = self.indices[torch.as_tensor(indices, dtype=torch.long)].tolist()
        getitems = getattr(self.dataset, "__getitems__", None)
        return getitems(chosen) if getitems is not None else [self.dataset[i] for i in chosen]


@dataclass(frozen=True)
class Splits:
    """Both splits of a built-in dataset, as loaded from its files."""

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    input_shape: tuple[int, ...]  # shape of one example as the model sees it
    mean: float = 0.0
    std: float = 1.0
    sequence: bool = False  # a language model's data: an example is L token ids, its label the L next tokens

    def __post_init__(self) -> None:
        assert len(self.train_x) == len(self.train_y) and len(self.test_x) == len(self.test_y)

    def split(self, name: str) -> TensorDataset:
        """The `train` or `test` split as a dataset of (input, target) pairs."""
        if name not in ("train", "test"):
            raise ValueError(f"split={name!r} is not one of train, test")
        x, y = (self.train_x, self.train_y) if name == "train" else (self.test_x, self.test_y)
        return TensorDataset(x, y, self.mean, self.std)
