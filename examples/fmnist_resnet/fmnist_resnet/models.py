"""A small ResNet (He et al. 2016) for 28x28 grey images, in plain torch.

Returns {"logits": [B, num_classes]}: codistill reads the "logits" entry of a dict output, so a model can return a
dict as many codebases do. BatchNorm's running statistics are buffers; codistill sends them with the parameters
when groups exchange models, so every teacher copy evaluates with its owner's statistics.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


class BasicBlock(nn.Module):
    """conv-BN-ReLU-conv-BN plus a shortcut (a strided 1x1 conv + BN where the shape changes)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        )
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), nn.BatchNorm2d(out_channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.shortcut(x))


class ResNet(nn.Module):
    """A 3x3 stem, then one stage per entry of `widths` (`blocks` residual blocks each; every stage after the first
    halves the resolution), global average pooling and a linear head."""

    def __init__(
        self, in_channels: int = 1, num_classes: int = 10, widths: Sequence[int] = (16, 32, 64), blocks: int = 1
    ) -> None:
        super().__init__()
        if not widths or blocks < 1:
            raise ValueError(f"ResNet needs a stage and a block per stage; got widths={widths}, blocks={blocks}")
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True)
        )
        stages: list[nn.Module] = []
        width = widths[0]
        for i, out in enumerate(widths):
            for j in range(blocks):
                stages.append(BasicBlock(width, out, stride=2 if i > 0 and j == 0 else 1))
                width = out
        self.stages = nn.Sequential(*stages)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"logits": self.head(self.stages(self.stem(x)))}
