"""Rebuild a plain model from a final checkpoint (checkpoints/group{g}/final.pt), without the run that wrote it.

The checkpoint's resolved config names the model and the held-out dataset by import path, so the tools rebuild
both the way the run built them (a user's components included, if importable here).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

import torch
from omegaconf import OmegaConf
from torch import nn

from codistill.components import cohort, instantiate

from codistill.io import checkpoint
from codistill.errors import ConfigError
from codistill.components.data.base import IndexedDataset
from codistill.components.data.labels import Labels, is_causal_lm
from codistill.components.data.pipeline import DataFormatError, fetch, to_device, validation_indices
from codistill.engine.logits import as_logits, call

DATA_PRESETS = Path(__file__).resolve().parents[1] / "conf" / "data"


class CheckpointError(ValueError):
    """A file that is not a codistill model checkpoint, or checkpoints that cannot be compared."""


@dataclass
class LoadedModel:
    path: Path
    model: nn.Module  # a plain module in eval mode
    group: int
    step: int
    config: dict  # the run's resolved config


@dataclass
class HeldOut:
    """A held-out dataset and the collate function the run used with it."""

    name: str  # for tables: the dataset's import path
    dataset: Any
    collate: Any
    labels_key: str = "labels"  # the run's data.labels_key and data.shift_labels (dict batches)
    shift_labels: Optional[bool] = None

    def batches(self, examples: int, batch_size: int) -> Iterator[tuple[Any, torch.Tensor]]:
        n = min(examples or len(self.dataset), len(self.dataset))
        for i in range(0, n, batch_size):
            yield fetch(self.dataset, range(i, min(i + batch_size, n)), self.collate, self.labels_key)

    def align(self, x: Any, y: torch.Tensor, model: nn.Module, ignore_index: Optional[int]) -> torch.Tensor:
        """The labels per scored position, as the run trained them (a causal LM's shift, padding ignored)."""
        shift = self.shift_labels if self.shift_labels is not None else isinstance(x, Mapping) and is_causal_lm(model)
        return Labels(0, ignore_index, shift).align(x, y)


def read(path: Path) -> dict:
    try:
        ckpt = checkpoint.load(path)
    except Exception as e:  # a missing, torn or foreign file: say which one
        raise CheckpointError(f"{path}: cannot be read as a checkpoint ({type(e).__name__}: {e})") from e
    missing = {"model", "step", "group", "config"} - set(ckpt) if isinstance(ckpt, dict) else {"model"}
    if missing:
        raise CheckpointError(f"{path}: not a codistill model checkpoint (missing {', '.join(sorted(missing))})")
    return ckpt


def held_out(data: dict, root: Optional[str] = None, preset: Optional[str] = None, split: str = "test") -> HeldOut:
    """The held-out set of a run's `data` config (or of the conf/data preset `preset`), its files under `root`.

    split="validation": the training examples the run kept out (data.validation_examples) instead of data.eval.
    """
    if preset is not None:
        path = DATA_PRESETS / f"{preset}.yaml"
        if not path.is_file():
            names = ", ".join(sorted(p.stem for p in DATA_PRESETS.glob("*.yaml")))
            raise CheckpointError(f"data preset {preset!r} does not exist: choose one of {names}")
        data = OmegaConf.to_container(OmegaConf.create({"data": OmegaConf.load(path)}).data, resolve=True)
    count = data.get("validation_examples", 0)
    if split == "validation" and not count:
        raise CheckpointError("the run kept no validation examples (data.validation_examples=0): use the test split")
    key = "train" if split == "validation" else "eval"
    node = OmegaConf.create(data[key])
    if root is not None:
        node.root = root
    try:
        dataset = instantiate.build(node, f"data.{key}")
        collate = instantiate.optional_build(data.get("collate_fn"), "data.collate_fn")
    except ConfigError as e:
        raise CheckpointError(str(e)) from None
    keys = data.get("labels_key", "labels"), data.get("shift_labels")
    if split == "validation":
        return HeldOut(f"{node.get('_target_')} (validation)",
                       IndexedDataset(dataset, validation_indices(len(dataset), count)), collate, *keys)
    return HeldOut(str(node.get("_target_")), dataset, collate, *keys)


def rebuild(ckpt: dict) -> nn.Module:
    """The checkpoint's model as the plain nn.Module its config describes, weights loaded strictly, in eval mode."""
    node = cohort.Cohort.from_record(ckpt["config"]).models()[int(ckpt["group"])]  # model_per_group aware
    try:
        model = instantiate.build(node, "model")
        model.load_state_dict(ckpt["model"], strict=True)
    except (ConfigError, RuntimeError) as e:
        raise CheckpointError(f"cannot rebuild the checkpoint's model: {str(e).splitlines()[0]}") from None
    return model.eval()


def load(path: Path) -> LoadedModel:
    ckpt = read(path)
    return LoadedModel(path, rebuild(ckpt), int(ckpt["group"]), int(ckpt["step"]), ckpt["config"])


@torch.no_grad()
def shift_logits(logits: torch.Tensor, bias: dict[int, float]) -> torch.Tensor:
    """`logits` with bias[c] added to class c's logit (and no other): Hinton et al.'s (2015) raised bias for a
    class the student never saw."""
    C = logits.shape[-1]
    bad = [c for c in bias if not 0 <= c < C]
    if bad:
        raise CheckpointError(f"--bias names class {bad[0]}, but the model predicts classes 0..{C - 1}")
    shift = torch.zeros(C, dtype=logits.dtype, device=logits.device)
    for c, b in bias.items():
        shift[c] = b
    return logits + shift


def predict_probs(
    models: list[nn.Module], held: HeldOut, examples: int, batch_size: int, device: torch.device,
    bias: Optional[dict[int, float]] = None, ignore_index: Optional[int] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every model's predicted probabilities on the held-out set [M, N, ..., C] (CPU), and the labels [N, ...].

    `bias`: per-class amounts added to the logits before the softmax (see shift_logits). `ignore_index`: the run's
    loss.ignore_index, for labels a causal LM's shift or padding leaves unscored."""
    for m in models:
        m.to(device)
    probs: list[list[torch.Tensor]] = [[] for _ in models]
    labels = []
    try:
        for x, y in held.batches(examples, batch_size):
            labels.append(held.align(x, y, models[0], ignore_index))
            x = to_device(x, device)
            for out, m in zip(probs, models):
                logits = as_logits(call(m, x)).float()
                out.append(torch.softmax(shift_logits(logits, bias) if bias else logits, -1).cpu())
    except DataFormatError as e:
        raise CheckpointError(str(e)) from None
    return torch.stack([torch.cat(p) for p in probs]), torch.cat(labels)


def same_data(configs: list[dict], paths: list[Path]) -> dict:
    """The one data config shared by all checkpoints (an ensemble is only meaningful on one held-out set)."""
    first = configs[0]["data"].get("eval")
    for cfg, path in zip(configs[1:], paths[1:]):
        if cfg["data"].get("eval") != first:
            raise CheckpointError(f"{path} was evaluated on another held-out set than {paths[0]} ({first})")
    return configs[0]
