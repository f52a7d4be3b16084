"""Compose the run configuration from Python (scripts, notebooks, tests) exactly as the CLI does."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf
from omegaconf.basecontainer import BaseContainer

from codistill.config import register_configs

CONF_DIR = Path(__file__).resolve().parent / "conf"


RESOLVERS = ("codistill_run_id", "codistill_output_subdir")  # used by conf/config.yaml's hydra.* keys only


def compose_config(overrides: Sequence[str] = (), run_id: str = "api") -> DictConfig:
    """The config `python -m codistill.train OVERRIDES` would run with (typed and checked the same way).

    The resolvers conf/config.yaml's hydra keys name are registered for the composition only; whatever the process
    had under those names before is put back (the composed config, without its hydra node, does not use them).
    """
    register_configs()
    previous = {name: BaseContainer._resolvers.get(name) for name in RESOLVERS}  # OmegaConf has no public getter
    OmegaConf.register_new_resolver("codistill_run_id", lambda: run_id, replace=True)
    OmegaConf.register_new_resolver("codistill_output_subdir", lambda: None, replace=True)
    try:
        with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
            return compose("config", overrides=list(overrides))
    finally:
        for name, resolver in previous.items():
            if resolver is None:
                OmegaConf.clear_resolver(name)
            else:
                BaseContainer._resolvers[name] = resolver
