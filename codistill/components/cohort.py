"""Which model each group trains: `model` for every group, or `model_per_group` for a heterogeneous cohort.

A cohort may mix architectures (a big and a small network codistilling, as in DML): entry g of `model_per_group`
is a preset name from conf/model/ (e.g. `hinton_student`) or a model mapping with `_target_`. Groups exchange
class probabilities, so they must all predict the same classes (checked on their outputs); teacher copies of a
peer are built from the peer's entry, and the collective exchange pads every snapshot to the largest architecture.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch
from omegaconf import DictConfig, OmegaConf

from codistill.components import instantiate
from codistill.errors import ConfigError

PRESETS = Path(__file__).resolve().parents[1] / "conf" / "model"


def preset(name: str, cfg: Any) -> DictConfig:
    """conf/model/<name>.yaml, its interpolations (${data.num_classes}, ...) resolved against the run's `cfg`."""
    path = PRESETS / f"{name}.yaml"
    if not path.is_file():
        names = ", ".join(sorted(p.stem for p in PRESETS.glob("*.yaml")))
        raise ConfigError(f"model preset {name!r} does not exist: choose one of {names}")
    scope = OmegaConf.create({"data": OmegaConf.to_container(cfg.data, resolve=True), "model": OmegaConf.load(path)})
    return OmegaConf.create(OmegaConf.to_container(scope.model, resolve=True))


def resolve(spec: Any, cfg: Any, where: str) -> Any:
    """A preset name or a model mapping -> the model's component node."""
    if isinstance(spec, str):
        return preset(spec, cfg)
    if isinstance(spec, (dict, DictConfig)):
        return spec
    raise ConfigError(f"{where}={spec!r} must be a conf/model preset name or a model mapping with _target_")


def group_models(cfg: Any) -> list[Any]:
    """The model node of every group, in group order."""
    groups, specs = cfg.topology.groups, list(cfg.get("model_per_group") or [])
    if not specs:
        return [cfg.model] * groups
    if len(specs) != groups:
        raise ConfigError(f"model_per_group lists {len(specs)} models for topology.groups={groups}: give one per group")
    return [resolve(s, cfg, f"model_per_group[{g}]") for g, s in enumerate(specs)]


def where(cfg: Any, group: int) -> str:
    """The config key that names group `group`'s model, for messages."""
    return f"model_per_group[{group}]" if cfg.get("model_per_group") else "model"


def factories(cfg: Any) -> list[Callable[[], torch.nn.Module]]:
    """A builder of every group's model, checked (import path, arguments) without building anything."""
    return [instantiate.factory(m, where(cfg, g)) for g, m in enumerate(group_models(cfg))]


def validate(cfg: Any) -> None:
    """Before any process group: every model's import path resolves and accepts its arguments (a kd teacher's too)."""
    factories(cfg)
    if cfg.distill.mode == "kd" and cfg.distill.teacher_model is not None:
        instantiate.check_arguments(preset(cfg.distill.teacher_model, cfg), "distill.teacher_model")
