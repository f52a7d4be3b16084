"""Multi-layer perceptron, e.g. Hinton et al. 2015's 784-1200-1200-10 teacher and 784-800-800-10 student."""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch import nn


class MLP(nn.Module):
    def __init__(
        self,
        input_shape: Optional[Sequence[int]],
        num_classes: Optional[int],
        hidden: Sequence[int] = (256, 256),
        dropout: float = 0.0,
        input_dropout: float = 0.0,
    ) -> None:
        """`input_shape` is one example's shape (flattened to the first layer's width)."""
        super().__init__()
        if input_shape is None or num_classes is None:
            raise ValueError("MLP needs input_shape and num_classes: set data.input_shape/data.num_classes (the "
                             "dataset's) or model.input_shape/model.num_classes")
        if not (0 <= dropout < 1 and 0 <= input_dropout < 1):
            raise ValueError(f"dropout={dropout} and input_dropout={input_dropout} must be in [0, 1)")
        in_features = math.prod(input_shape)
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
