"""An image-folder dataset: ROOT/SPLIT/<label>/<name>.pgm, one image file per example, read when fetched.

Images are read lazily (a DataLoader's workers read in parallel with data.num_workers > 0), scaled to [0, 1] and
standardised. The training split is augmented with a random crop (pad 2, crop 28) and a random horizontal flip,
drawn from torch's global generator: codistill seeds it per batch from (seed, group, replica, step), so a run is
reproducible with any number of loader workers, in one process or under torchrun.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from fmnist_resnet.pgm import read_pgm

MEAN, STD = 0.2860, 0.3530  # Fashion-MNIST's training pixels in [0, 1]


class ImageFolder(Dataset):
    """(image [1, H, W] float, label) pairs from `root/split/<label>/*.pgm`; a directory's name is its class index."""

    def __init__(self, root: str, split: str = "train", augment: bool = False, pad: int = 2) -> None:
        base = Path(root).expanduser() / split
        class_dirs = sorted((d for d in base.glob("*") if d.is_dir() and d.name.isdigit()), key=lambda d: int(d.name))
        self.files = [f for d in class_dirs for f in sorted(d.glob("*.pgm"))]
        if not self.files:
            raise FileNotFoundError(
                f"no images in {base}/<label>/*.pgm: write them with `python -m fmnist_resnet.write_images {root}`"
            )
        # public and known up front, so codistill checks every label once before training
        self.targets = torch.tensor([int(f.parent.name) for f in self.files], dtype=torch.long)
        self.augment, self.pad = augment, pad

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        pixels = torch.from_numpy(read_pgm(self.files[i]).astype(np.float32) / 255.0)[None]
        if self.augment:
            pixels = self.random_crop_flip(pixels)
        return (pixels - MEAN) / STD, int(self.targets[i])

    def random_crop_flip(self, image: torch.Tensor) -> torch.Tensor:
        """Zero-pad by `pad`, crop back to the original size at a random offset, flip left-right with p = 0.5."""
        _, height, width = image.shape
        padded = F.pad(image, (self.pad,) * 4)
        top, left = torch.randint(0, 2 * self.pad + 1, (2,)).tolist()
        image = padded[:, top : top + height, left : left + width]
        return image.flip(-1) if torch.rand(()) < 0.5 else image
