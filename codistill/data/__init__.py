"""Datasets (one module each, real files shipped by packages) and the per-group, per-replica batch streams."""

from __future__ import annotations

from typing import Any

from codistill.data.base import Dataset, DataMissingError
from codistill.data.streams import GroupStream


def load_dataset(cfg: Any) -> Dataset:
    """Build the dataset named by `cfg.name` (a DataConfig)."""
    if cfg.name == "fashion_mnist":
        from codistill.data import fashion_mnist

        return fashion_mnist.load(cfg.root)
    if cfg.name == "mnist":
        from codistill.data import mnist

        return mnist.load(cfg.root)
    if cfg.name == "kjv_chars":
        from codistill.data import kjv_chars

        return kjv_chars.load(cfg.root, cfg.seq_len)
    if cfg.name == "synthetic":
        from codistill.data import synthetic

        return synthetic.load(cfg.num_train, cfg.num_test, cfg.num_features, cfg.num_classes)
    raise ValueError(f"unknown dataset {cfg.name!r}")


__all__ = ["Dataset", "DataMissingError", "GroupStream", "load_dataset"]
