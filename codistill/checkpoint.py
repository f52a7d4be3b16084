"""Checkpoint files: written atomically (temp file, fsync, rename), read with weights_only=True."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch


def atomic_save(obj: Any, path: Path) -> None:
    """Write `obj` so that a reader sees either the old file or the complete new one, never a torn one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def model_checkpoint(model: torch.nn.Module, step: int, group: int, config: dict, extra: dict | None = None) -> dict:
    """What a final checkpoint holds: enough to rebuild, evaluate or distill from the model without this run."""
    # a copy: a view (e.g. a slice of topology.vectorize's stacked tensors) would save its whole storage
    state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
    return {"model": state, "step": step, "group": group, "config": config, **(extra or {})}
