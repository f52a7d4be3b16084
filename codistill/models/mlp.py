"""Multi-layer perceptron, e.g. Hinton et al. 2015's 784-1200-1200-10 teacher and 784-800-800-10 student."""

from __future__ import annotations

import math

import torch
from torch import nn


class MLP(nn.Module):
    def __init__(
        self, in_features: int, hidden: list[int], num_classes: int, dropout: float = 0.0, input_dropout: float = 0.0
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        if input_dropout > 0:
            layers.append(nn.Dropout(input_dropout))
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = h
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    @staticmethod
    def in_features(input_shape: tuple[int, ...]) -> int:
        return math.prod(input_shape)
