"""Hugging Face transformers models as components.

From a config, nothing of ours is needed: the model and its config are both components (conf/model/llama.yaml):

    model:
      _target_: transformers.LlamaForCausalLM
      config: {_target_: transformers.LlamaConfig, vocab_size: 4096, hidden_size: 256, ...}

From a local `save_pretrained` directory, `pretrained` reads the files once per process and hands every caller
(each local group's student, each teacher copy, the size probe) a deep copy: a process builds the model up to
2G + 1 times, and reading the weights that often would cost minutes and memory for nothing. Nothing is downloaded:
`local_files_only=True`. With `reinit_per_group` each copy is re-initialised under the caller's seed (the engine
seeds each group's build), for a from-scratch run of a saved architecture.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

log = logging.getLogger("codistill")

EXTRA = "pip install 'codistill[hf]'"
_loaded: dict[tuple, nn.Module] = {}
loads = 0  # reads from disk in this process (each path once)


def transformers_module() -> Any:
    try:
        import transformers
    except ImportError:
        raise ImportError(f"Hugging Face models need the transformers package: {EXTRA}") from None
    return transformers


def pretrained(path: str, auto_class: str = "AutoModelForCausalLM", reinit_per_group: bool = False,
               **kwargs: Any) -> nn.Module:
    """A copy of the model saved in `path` (read from disk once per process); `kwargs` go to from_pretrained."""
    global loads
    directory = Path(path).expanduser()
    if not (directory / "config.json").is_file():
        raise FileNotFoundError(f"{path} holds no config.json: give a directory written by save_pretrained")
    key = (str(directory.resolve()), auto_class, tuple(sorted((k, repr(v)) for k, v in kwargs.items())))
    with torch.device("cpu"):  # not the meta device of a size probe: the loaded copy is the one every caller gets
        if key not in _loaded:
            cls = getattr(transformers_module(), auto_class)
            _loaded[key] = cls.from_pretrained(str(directory), local_files_only=True, **kwargs)
            loads += 1
            log.info("read %s from disk (once in this process)", directory)
        model = copy.deepcopy(_loaded[key])
        if reinit_per_group:
            reinitialise(model)
    return model


@torch.no_grad()
def reinitialise(model: nn.Module) -> None:
    """Fresh weights drawn from torch's generator (the group's seed), by the model's own initialiser."""
    init = getattr(model, "_init_weights", None)
    if init is None:
        raise TypeError(f"{type(model).__name__} has no _init_weights: model.reinit_per_group needs a transformers "
                        "PreTrainedModel")
    model.apply(init)
    tie = getattr(model, "tie_weights", None)
    if tie is not None:
        tie()
