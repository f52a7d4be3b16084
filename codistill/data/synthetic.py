"""A seeded Gaussian-mixture classification task: instant to build, learnable, for tests and smoke runs only."""

from __future__ import annotations

import torch

from codistill.data.base import Dataset


def load(num_train: int, num_test: int, num_features: int, num_classes: int, seed: int = 1234) -> Dataset:
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(num_classes, num_features, generator=g) * 1.5

    def sample(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.randint(num_classes, (n,), generator=g)
        x = centres[y] + torch.randn(n, num_features, generator=g) * 2.0
        return x, y

    train_x, train_y = sample(num_train)
    test_x, test_y = sample(num_test)
    return Dataset("synthetic", train_x, train_y, test_x, test_y, num_classes, (num_features,))
