"""Which model each group trains: `model` for every group, or `model_per_group` for a heterogeneous cohort.

A cohort may mix architectures (a big and a small network codistilling, as in DML): entry g of `model_per_group`
is a preset name from conf/model/ (e.g. `hinton_student`) or a ModelConfig mapping. Groups exchange class
probabilities, so they must all predict the same classes; teacher copies of a peer are built from the peer's
entry, and the collective exchange pads every snapshot to the largest architecture.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch
from omegaconf import DictConfig, OmegaConf

from codistill.config import MODELS, SEQUENCE_DATASETS, SEQUENCE_MODELS, ConfigError, ModelConfig

PRESETS = Path(__file__).parent / "conf" / "model"


def _typed(node: Any, where: str) -> DictConfig:
    try:
        return OmegaConf.merge(OmegaConf.structured(ModelConfig), node)
    except Exception as e:  # OmegaConf's error types vary by cause; its first line names the key
        raise ConfigError(f"{where}: {str(e).splitlines()[0]}") from None


def preset(name: str) -> DictConfig:
    """The ModelConfig of conf/model/<name>.yaml."""
    path = PRESETS / f"{name}.yaml"
    if not path.is_file():
        names = ", ".join(sorted(p.stem for p in PRESETS.glob("*.yaml")))
        raise ConfigError(f"model preset {name!r} does not exist: choose one of {names}")
    return _typed(OmegaConf.load(path), f"conf/model/{name}.yaml")


def resolve(spec: Any, where: str) -> DictConfig:
    """A preset name or a ModelConfig mapping -> a typed ModelConfig."""
    if isinstance(spec, str):
        return preset(spec)
    if isinstance(spec, (dict, DictConfig)):
        return _typed(spec, where)
    raise ConfigError(f"{where}={spec!r} must be a conf/model preset name or a model config mapping")


def group_models(cfg: Any) -> list[Any]:
    """The ModelConfig of every group, in group order."""
    groups, specs = cfg.topology.groups, list(cfg.get("model_per_group") or [])  # absent in older checkpoints
    if not specs:
        return [cfg.model] * groups
    if len(specs) != groups:
        raise ConfigError(f"model_per_group lists {len(specs)} models for topology.groups={groups}: give one per group")
    return [resolve(s, f"model_per_group[{g}]") for g, s in enumerate(specs)]


def state_sizes(build: Callable[[int], torch.nn.Module], groups: int) -> list[int]:
    """Length of every group's flattened state (what an exchange moves), from models built on the meta device."""
    from codistill.teachers import StateFlattener

    with torch.device("meta"):
        return [StateFlattener(build(g)).numel for g in range(groups)]


def check_model(m: Any, data_name: str, where: str) -> None:
    """Raise ConfigError when a model config cannot be trained on `data_name`."""
    if m.name not in MODELS:
        raise ConfigError(f"{where}.name={m.name!r} is not one of {', '.join(MODELS)}")
    if not (0 <= m.dropout < 1 and 0 <= m.input_dropout < 1):
        raise ConfigError(f"{where}.dropout and {where}.input_dropout must be in [0, 1)")
    if (m.name in SEQUENCE_MODELS) != (data_name in SEQUENCE_DATASETS):
        need = "a sequence model (" + ", ".join(SEQUENCE_MODELS) + ")" if data_name in SEQUENCE_DATASETS else \
            "a classifier (mlp, cnn)"
        raise ConfigError(f"{where}.name={m.name} cannot train on data={data_name}: it needs {need}")


def check_classes(models: list[Any], num_classes: int) -> None:
    """Every group's head must predict the dataset's classes (so peers' probabilities are comparable)."""
    for g, m in enumerate(models):
        if m.num_classes is not None and m.num_classes != num_classes:
            raise ConfigError(
                f"group {g}'s model has num_classes={m.num_classes} but the data has {num_classes} classes: "
                "every group of a cohort must predict the same classes"
            )


def validate(cfg: Any) -> None:
    models = group_models(cfg)
    for g, m in enumerate(models):
        check_model(m, cfg.data.name, f"model_per_group[{g}]" if cfg.model_per_group else "model")
    declared = sorted({m.num_classes for m in models if m.num_classes is not None})
    if len(declared) > 1:
        raise ConfigError(
            f"model_per_group: the groups' models predict different class counts {declared}: "
            "every group of a cohort must predict the same classes"
        )
    d = cfg.distill
    if d.mode == "kd":
        if not d.teacher_checkpoint:
            raise ConfigError("distill.mode=kd needs distill.teacher_checkpoint=<path to a final.pt or a state_dict>")
        if not Path(d.teacher_checkpoint).is_file():
            raise ConfigError(f"distill.teacher_checkpoint={d.teacher_checkpoint} does not exist")
        if d.teacher_model is not None:
            check_model(preset(d.teacher_model), cfg.data.name, "distill.teacher_model")
