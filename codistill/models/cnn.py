"""A small convolutional classifier with BatchNorm (so buffers, not only parameters, travel in an exchange)."""

from __future__ import annotations

import torch
from torch import nn


class CNN(nn.Module):
    def __init__(self, in_channels: int, channels: list[int], num_classes: int) -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        width = in_channels
        for c in channels:
            blocks += [nn.Conv2d(width, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(), nn.MaxPool2d(2)]
            width = c
        self.features = nn.Sequential(*blocks)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))
