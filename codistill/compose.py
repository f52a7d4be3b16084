"""Compose the run configuration from Python (scripts, notebooks, tests) exactly as the CLI does."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from codistill.config import register_configs

CONF_DIR = Path(__file__).resolve().parent / "conf"


def compose_config(overrides: Sequence[str] = (), run_id: str = "api") -> DictConfig:
    """The config `python -m codistill.train OVERRIDES` would run with (typed and checked the same way)."""
    register_configs()
    OmegaConf.register_new_resolver("codistill_run_id", lambda: run_id, replace=True)
    OmegaConf.register_new_resolver("codistill_output_subdir", lambda: None, replace=True)
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=list(overrides))
