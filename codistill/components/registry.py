"""What a run trains, and on what: a builder of each group's model and the data pipeline.

The CLI makes them from config by import path (codistill/build.py's `components_from_config`); `codistill.fit` takes them as Python objects. The
Trainer receives them ready-made either way, so a user's components and the presets take one path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, TYPE_CHECKING

from torch import nn

from codistill.components import instantiate
from codistill.errors import ConfigError
from codistill.components.data.pipeline import DataFormatError, LoaderOptions, TrainingData, TrainSetOptions

if TYPE_CHECKING:
    from codistill.config import DataConfig

ModelFactory = Callable[[], nn.Module]


@dataclass
class Components:
    models: list[ModelFactory]  # group g's model is models[g](), called under group g's seed
    data: TrainingData


def loader_options(data: DataConfig) -> LoaderOptions:
    return LoaderOptions(data.num_workers, data.pin_memory, data.prefetch_factor)


def train_set_options(data: DataConfig) -> TrainSetOptions:
    return TrainSetOptions(data.train_examples, data.label_noise, tuple(data.exclude_classes), data.validation_examples,
                           data.jitter)


def training_data(train: Any, eval_data: Any, collate: Any, seed: int, data: DataConfig) -> TrainingData:
    """The pipeline over built datasets, checked (sizes, one sample of each); errors are one ConfigError line.

    With data.eval_split=validation the run evaluates on the validation examples instead of `eval_data`."""
    try:
        held_out = None if data.eval_split == "validation" else eval_data
        return TrainingData.create(train, held_out, collate, seed, train_set_options(data), loader_options(data),
                                   data.labels_key)
    except DataFormatError as e:
        raise ConfigError(str(e)) from None


def data_from_config(data: DataConfig, seed: int) -> TrainingData:
    """The `data` section's datasets and collate function, built by import path."""
    train = instantiate.build(data.train, "data.train")
    eval_data = instantiate.build(data.eval, "data.eval") if data.eval_split == "test" else None
    collate = instantiate.optional_build(data.collate_fn, "data.collate_fn")
    return training_data(train, eval_data, collate, seed, data)

