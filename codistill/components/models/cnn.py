"""A small convolutional classifier with BatchNorm (so buffers, not only parameters, travel in an exchange)."""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn


class CNN(nn.Module):
    def __init__(self, input_shape: Optional[Sequence[int]], num_classes: Optional[int], channels: Sequence[int] = (32, 64)) -> None:
        """`input_shape` is one image's (C, H, W)."""
        super().__init__()
        if input_shape is None or len(input_shape) != 3 or num_classes is None:
            raise ValueError(f"CNN needs image inputs (C, H, W) and num_classes; got input_shape={input_shape}, "
                             f"num_classes={num_classes}")
        in_channels = input_shape[0]
        blocks: list[nn.Module] = []
        width = in_channels
        for c in channels:
            blocks += [nn.Conv2d(width, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(), nn.MaxPool2d(2)]
            width = c
        self.features = nn.Sequential(*blocks)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))
