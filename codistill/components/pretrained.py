"""Rebuild a trained model from a checkpoint file: a final.pt this trainer wrote, or a bare state_dict.

A final.pt holds the model's state_dict and the run's resolved config, so the architecture is the config's model
component (the group's entry of `model_per_group`, else `model`). A bare state_dict needs the architecture named:
a preset of conf/model/. Every way a file can be unusable (absent, unreadable, another architecture or class count)
is a one-line ConfigError, raised before training starts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, TYPE_CHECKING

import torch
from torch import nn

from codistill.components import cohort, instantiate
from codistill.errors import ConfigError

if TYPE_CHECKING:
    from codistill.config import DataConfig


def read(path: str) -> tuple[dict[str, torch.Tensor], Optional[dict], int]:
    """(state_dict, the run's config or None, group) of a checkpoint file."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"checkpoint {path} does not exist")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises pickle, zip and runtime errors for the many ways a file can be damaged
        raise ConfigError(f"checkpoint {path} is corrupt or not a torch checkpoint ({type(e).__name__})") from None
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        return obj["model"], obj.get("config"), int(obj.get("group", 0))
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj, None, 0
    raise ConfigError(f"checkpoint {path} holds neither a model state_dict nor a trainer checkpoint")


def model_node(path: str, config: Optional[dict], group: int, data: DataConfig, model_name: Optional[str]) -> Any:
    """The model component to rebuild a checkpoint with: `model_name`'s preset (sized by the `data` section) if
    given, else the checkpoint's own."""
    if model_name is not None:
        return cohort.preset(model_name, data)
    if config is None:
        raise ConfigError(
            f"checkpoint {path} is a bare state_dict: name its architecture with a conf/model preset "
            "(distill.teacher_model=NAME)"
        )
    return cohort.Cohort.from_record(config).models()[group]


def load_model(path: str, data: DataConfig, model_name: Optional[str] = None) -> nn.Module:
    """The checkpoint's model on the CPU, in eval mode. `data` (the current run's data section) sizes a named preset."""
    state, config, group = read(path)
    node = model_node(path, config, group, data, model_name)
    model = instantiate.build(node, f"the model of checkpoint {path}")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        detail = next((line.strip() for line in str(e).splitlines()[1:] if line.strip()), str(e))
        raise ConfigError(
            f"checkpoint {path} does not fit {node.get('_target_')} (another architecture or class count): {detail}"
        ) from None
    return model.eval()
