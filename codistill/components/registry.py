"""What a run trains, and on what: a builder of each group's model and the data pipeline.

The CLI makes them from config by import path (`from_config`); `codistill.fit` takes them as Python objects. The
Trainer receives them ready-made either way, so a user's components and the presets take one path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from torch import nn

from codistill.components import cohort, instantiate
from codistill.errors import ConfigError
from codistill.components.data.pipeline import DataFormatError, LoaderOptions, TrainingData, TrainSetOptions

ModelFactory = Callable[[], nn.Module]


@dataclass
class Components:
    models: list[ModelFactory]  # group g's model is models[g](), called under group g's seed
    data: TrainingData


def loader_options(d: Any) -> LoaderOptions:
    return LoaderOptions(d.num_workers, d.pin_memory, d.prefetch_factor)


def train_set_options(d: Any) -> TrainSetOptions:
    return TrainSetOptions(d.train_examples, d.label_noise, tuple(d.exclude_classes), d.validation_examples, d.jitter)


def training_data(train: Any, eval_data: Any, collate: Any, seed: int, d: Any) -> TrainingData:
    """The pipeline over built datasets, checked (sizes, one sample of each); errors are one ConfigError line.

    With data.eval_split=validation the run evaluates on the validation examples instead of `eval_data`."""
    try:
        held_out = None if d.eval_split == "validation" else eval_data
        return TrainingData.create(train, held_out, collate, seed, train_set_options(d), loader_options(d))
    except DataFormatError as e:
        raise ConfigError(str(e)) from None


def data_from_config(d: Any, seed: int) -> TrainingData:
    """The `data` section's datasets and collate function, built by import path."""
    train = instantiate.build(d.train, "data.train")
    eval_data = instantiate.build(d.eval, "data.eval") if d.eval_split == "test" else None
    collate = instantiate.optional_build(d.collate_fn, "data.collate_fn")
    return training_data(train, eval_data, collate, seed, d)


def from_config(cfg: Any) -> Components:
    """Build the run's components from config (before any process group: every error here is one line)."""
    return Components(cohort.factories(cfg), data_from_config(cfg.data, cfg.seed))
