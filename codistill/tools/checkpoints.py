"""Rebuild a plain model from a final checkpoint (checkpoints/group{g}/final.pt), without the run that wrote it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from omegaconf import OmegaConf
from torch import nn

from codistill import checkpoint, cohort
from codistill.data import Dataset, load_dataset
from codistill.models import build_model


class CheckpointError(ValueError):
    """A file that is not a codistill model checkpoint, or checkpoints that cannot be compared."""


@dataclass
class LoadedModel:
    path: Path
    model: nn.Module  # a plain module in eval mode
    group: int
    step: int
    config: dict  # the run's resolved config


def read(path: Path) -> dict:
    try:
        ckpt = checkpoint.load(path)
    except Exception as e:  # a missing, torn or foreign file: say which one
        raise CheckpointError(f"{path}: cannot be read as a checkpoint ({type(e).__name__}: {e})") from e
    missing = {"model", "step", "group", "config"} - set(ckpt) if isinstance(ckpt, dict) else {"model"}
    if missing:
        raise CheckpointError(f"{path}: not a codistill model checkpoint (missing {', '.join(sorted(missing))})")
    return ckpt


def dataset_of(config: dict, root: str | None = None) -> Dataset:
    data = OmegaConf.create(config["data"])
    if root is not None:
        data.root = root
    return load_dataset(data)


def rebuild(ckpt: dict, dataset: Dataset) -> nn.Module:
    """The checkpoint's model as the plain nn.Module its config describes, weights loaded strictly, in eval mode."""
    model_cfg = cohort.group_models(OmegaConf.create(ckpt["config"]))[int(ckpt["group"])]  # model_per_group aware
    model = build_model(model_cfg, dataset.input_shape, dataset.num_classes)
    model.load_state_dict(ckpt["model"], strict=True)
    return model.eval()


def load(path: Path, dataset: Dataset) -> LoadedModel:
    ckpt = read(path)
    return LoadedModel(path, rebuild(ckpt, dataset), int(ckpt["group"]), int(ckpt["step"]), ckpt["config"])


def same_data(configs: list[dict], paths: list[Path]) -> dict:
    """The one data config shared by all checkpoints (an ensemble is only meaningful on one dataset)."""
    first = configs[0]["data"]
    for cfg, path in zip(configs[1:], paths[1:]):
        if cfg["data"].get("name") != first.get("name"):
            raise CheckpointError(
                f"{path} was trained on data.name={cfg['data'].get('name')!r} but {paths[0]} on {first.get('name')!r}"
            )
    return configs[0]
