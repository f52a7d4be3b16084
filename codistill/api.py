"""`codistill.fit`: train from Python (a notebook, a script) with your own objects, in this process.

    import codistill
    result = codistill.fit(
        ["topology.groups=2", "trainer.max_steps=500"],          # any CLI override
        model=lambda: MyNet(width=64),                           # a class or zero-argument factory: one call per group
        train_data=my_train_set, eval_data=my_test_set,          # map-style datasets of (input, target)
    )
    result["run"]["ensemble/acc"], [g["eval/acc"] for g in result["per_group"]]

It runs the simulated-workers mode (all G x R workers in this process) through the same engine the CLI runs: the
same config, the same checks, numerically the same run as `torchrun -m codistill.train` with the same overrides
and components given by import path. It leaves the process as it found it (see `kept_process_state`).
"""

from __future__ import annotations

import contextlib
import logging
import random
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np
import torch
from omegaconf import open_dict
from torch import nn
from torch.utils.data import Dataset

from codistill.build import cohort_of, validate_components
from codistill.components import cohort
from codistill.components.registry import Components, data_from_config, training_data
from codistill.compose import compose_config
from codistill.errors import ConfigError
from codistill.components.instantiate import OBJECT_KEY
from codistill.train import RunError, train


def python_object(obj: Any) -> dict:
    """How the run's config records a component given as an object: by name, marked as not rebuildable."""
    name = getattr(obj, "__qualname__", None) or type(obj).__qualname__
    return {"_target_": None, OBJECT_KEY: f"{getattr(obj, '__module__', type(obj).__module__)}.{name}"}


@contextlib.contextmanager
def kept_process_state() -> Iterator[None]:
    """Give the process back what a run changes in it for its own sake.

    A run turns on torch's deterministic algorithms (trainer.deterministic: exact resume), replaces the root
    logger's handlers by its per-rank log file and console, catches trainer.preempt_signals, and seeds and draws
    from the global random generators. Afterwards the deterministic-algorithms flag, the root logger's handlers and
    level, and the torch (CPU, CUDA), numpy and python generators are as before; the signal handlers are restored
    by the run itself (StopFlag), and compose_config restores its resolvers.
    """
    deterministic = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    generators = (torch.get_rng_state(), torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
                  np.random.get_state(), random.getstate())
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(deterministic[0], warn_only=deterministic[1])
        for h in list(root.handlers):
            if h not in handlers:
                root.removeHandler(h)
                h.close()
        for h in handlers:
            if h not in root.handlers:
                root.addHandler(h)
        root.setLevel(level)
        torch.set_rng_state(generators[0])
        if generators[1] is not None:
            torch.cuda.set_rng_state_all(generators[1])
        np.random.set_state(generators[2])
        random.setstate(generators[3])


def fit(
    overrides: Sequence[str] = (),
    *,
    model: Optional[Callable[[], nn.Module]] = None,
    train_data: Optional[Dataset] = None,
    eval_data: Optional[Dataset] = None,
    collate_fn: Optional[Callable[[list[Any]], Any]] = None,
    run_dir: Optional[str | Path] = None,
) -> dict:
    """Train G codistilling groups in this process; return the final evaluation.

    `overrides` are the CLI's `key=value` strings (`topology.mode` is simulated here). `model`, when given, is a
    class or zero-argument factory of an nn.Module, called once per group under that group's seed (pass the class
    or a `functools.partial`, not an instance: every group needs its own initialisation); otherwise the config's
    `model` is built by import path. `train_data` and `eval_data` (given together) replace `data.train` and
    `data.eval`. The run writes to `run_dir` (default outputs/<run_name>/<time>) as a CLI run does.

    Returns {"per_group": [{"eval/loss", "eval/acc"} per group], "run": {"ensemble/...", "churn/..."}}.
    Raises RunError (one line) on bad input or a failed run. The process is left as it was found: the
    deterministic-algorithms flag, the root logger, the signal handlers and the random generators are restored.
    """
    if isinstance(model, nn.Module):
        raise RunError("model= takes a class or a zero-argument factory (e.g. functools.partial(Net, width=64)), "
                       "not an instance: every group builds its own, with its own initialisation")
    if (train_data is None) != (eval_data is None):
        raise RunError("give train_data and eval_data together (or neither, to build both from the config)")
    cfg = compose_config([*overrides, "topology.mode=simulated"])
    try:
        if model is not None:
            models = [model] * cfg.topology.groups
            with open_dict(cfg):  # the recorded config says the model came as an object (tools cannot rebuild it)
                cfg.model = python_object(model)
                cfg.model_per_group = []
        else:
            validate_components(cfg)
            models = cohort.factories(cohort_of(cfg))
        if train_data is not None:
            data = training_data(train_data, eval_data, collate_fn, cfg.seed, cfg.data)
            with open_dict(cfg):
                cfg.data.train, cfg.data.eval = python_object(train_data), python_object(eval_data)
                cfg.data.collate_fn = None if collate_fn is None else python_object(collate_fn)
        else:
            data = data_from_config(cfg.data, cfg.seed)
    except ConfigError as e:
        raise RunError(str(e)) from None
    if run_dir is None:
        run_dir = Path("outputs") / cfg.run_name / datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    with kept_process_state():
        return train(cfg, Path(run_dir), Components(models, data))
