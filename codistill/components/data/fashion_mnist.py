"""Fashion-MNIST (Xiao, Rasul, Vollgraf 2017): 60k/10k 28x28 grey images of 10 clothing classes.

Provenance: Debian's `dataset-fashion-mnist` package ships the original IDX files from
github.com/zalandoresearch/fashion-mnist under /usr/share/datasets/fashion-mnist. Nothing is downloaded at run time.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Optional

import torch

from codistill.components.data.base import Splits, TensorDataset, DataMissingError
from codistill.components.data.idx import read_idx

DEFAULT_ROOT = Path("/usr/share/datasets/fashion-mnist")
INSTALL = "sudo apt-get install dataset-fashion-mnist"
FILES = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}
SHAPES = {"train_x": (60000, 28, 28), "train_y": (60000,), "test_x": (10000, 28, 28), "test_y": (10000,)}
MEAN, STD = 0.2860, 0.3530  # of the training pixels in [0, 1]


def _find(root: Path, stem: str) -> Path:
    for candidate in (root / stem, root / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    raise DataMissingError(
        f"Fashion-MNIST file {stem}[.gz] not found in {root}: install it with `{INSTALL}` "
        "or point data.train.root at a directory holding the four IDX files"
    )


def load_idx_dataset(name: str, root: Path, shapes: dict, mean: float, std: float) -> Splits:
    """Load the four standard IDX files of an MNIST-style dataset and check their shapes and labels."""
    arrays = {}
    for key, stem in FILES.items():
        array = read_idx(_find(root, stem))
        if array.shape != shapes[key]:
            raise ValueError(f"{name}: {stem} has shape {array.shape}, expected {shapes[key]}")
        arrays[key] = torch.from_numpy(array.copy())
    for key in ("train_y", "test_y"):
        if int(arrays[key].max()) > 9:
            raise ValueError(f"{name}: labels in {FILES[key]} exceed 9")
        arrays[key] = arrays[key].long()
    return Splits(
        name=name,
        train_x=arrays["train_x"].unsqueeze(1),
        train_y=arrays["train_y"],
        test_x=arrays["test_x"].unsqueeze(1),
        test_y=arrays["test_y"],
        num_classes=10,
        input_shape=(1, 28, 28),
        mean=mean,
        std=std,
    )


def load(root: Optional[str] = None) -> Splits:
    return load_idx_dataset("fashion_mnist", Path(root) if root else DEFAULT_ROOT, SHAPES, MEAN, STD)


_loaded = functools.lru_cache(maxsize=2)(load)  # train and eval splits share one read of the files


def dataset(split: str = "train", root: Optional[str] = None) -> TensorDataset:
    """conf/data/fashion_mnist.yaml's component: one split as (standardised image [1, 28, 28], label)."""
    return _loaded(root).split(split)
