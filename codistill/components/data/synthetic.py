"""A seeded Gaussian-mixture classification task: instant to build, learnable, for tests and smoke runs only."""

from __future__ import annotations

import functools

import torch

from codistill.components.data.base import Splits, TensorDataset


def load(num_train: int, num_test: int, num_features: int, num_classes: int, seed: int = 1234) -> Splits:
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(num_classes, num_features, generator=g) * 1.5

    def sample(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.randint(num_classes, (n,), generator=g)
        x = centres[y] + torch.randn(n, num_features, generator=g) * 2.0
        return x, y

    train_x, train_y = sample(num_train)
    test_x, test_y = sample(num_test)
    return Splits("synthetic", train_x, train_y, test_x, test_y, num_classes, (num_features,))


_loaded = functools.lru_cache(maxsize=2)(load)  # train and eval splits share one read of the files


def dataset(
    split: str = "train", train_examples: int = 2048, test_examples: int = 512, features: int = 32, classes: int = 10
) -> TensorDataset:
    """conf/data/synthetic.yaml's component: one split as (feature vector, class)."""
    return _loaded(train_examples, test_examples, features, classes).split(split)
