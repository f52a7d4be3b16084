"""Which model each group trains: `model` for every group, or `model_per_group` for a heterogeneous cohort.

A cohort may mix architectures (a big and a small network codistilling, as in DML): entry g of `model_per_group`
is a preset name from conf/model/ (e.g. `hinton_student`) or a model mapping with `_target_`. Groups exchange
class probabilities, so they must all predict the same classes (checked on their outputs); teacher copies of a
peer are built from the peer's entry, and the collective exchange pads every snapshot to the largest architecture.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, TYPE_CHECKING

import torch
from omegaconf import DictConfig, OmegaConf

from codistill.components import instantiate
from codistill.errors import ConfigError

if TYPE_CHECKING:
    from codistill.config import DataConfig

PRESETS = Path(__file__).resolve().parents[1] / "conf" / "model"


def preset(name: str, data: DataConfig) -> DictConfig:
    """conf/model/<name>.yaml, its interpolations (${data.num_classes}, ...) resolved against the run's `data`
    section."""
    path = PRESETS / f"{name}.yaml"
    if not path.is_file():
        names = ", ".join(sorted(p.stem for p in PRESETS.glob("*.yaml")))
        raise ConfigError(f"model preset {name!r} does not exist: choose one of {names}")
    scope = OmegaConf.create({"data": OmegaConf.to_container(data, resolve=True), "model": OmegaConf.load(path)})
    return OmegaConf.create(OmegaConf.to_container(scope.model, resolve=True))


def resolve(spec: Any, data: DataConfig, where: str) -> Any:
    """A preset name or a model mapping -> the model's component node."""
    if isinstance(spec, str):
        return preset(spec, data)
    if isinstance(spec, (dict, DictConfig)):
        return spec
    raise ConfigError(f"{where}={spec!r} must be a conf/model preset name or a model mapping with _target_")


@dataclass(frozen=True)
class Cohort:
    """Which model each group trains: the config's `model`, `model_per_group` and `topology.groups`, with the `data`
    section that sizes the presets model_per_group names."""

    model: Any
    model_per_group: tuple[Any, ...] = ()
    groups: int = 1
    data: Optional[DataConfig] = None

    @classmethod
    def from_record(cls, record: Any) -> "Cohort":
        """The cohort of a finished run, from the resolved config its checkpoint recorded (a final.pt's "config")."""
        c = OmegaConf.create(record) if not isinstance(record, DictConfig) else record
        return cls(c.model, tuple(c.get("model_per_group") or ()), c.topology.groups, c.data)

    def models(self) -> list[Any]:
        """The model node of every group, in group order."""
        specs = list(self.model_per_group)
        if not specs:
            return [self.model] * self.groups
        if len(specs) != self.groups:
            raise ConfigError(f"model_per_group lists {len(specs)} models for topology.groups={self.groups}: give one "
                              "per group")
        return [resolve(s, self.data, f"model_per_group[{g}]") for g, s in enumerate(specs)]

    def where(self, group: int) -> str:
        """The config key that names group `group`'s model, for messages."""
        return f"model_per_group[{group}]" if self.model_per_group else "model"


def factories(cohort: Cohort) -> list[Callable[[], torch.nn.Module]]:
    """A builder of every group's model, checked (import path, arguments) without building anything."""
    return [instantiate.factory(m, cohort.where(g)) for g, m in enumerate(cohort.models())]


def validate(cohort: Cohort, teacher_model: Optional[str] = None) -> None:
    """Before any process group: every model's import path resolves and accepts its arguments, and so does the
    distill.teacher_model preset of a kd run (`teacher_model`)."""
    factories(cohort)
    if teacher_model is not None:
        instantiate.check_arguments(preset(teacher_model, cohort.data), "distill.teacher_model")
