"""Import paths from before the package was grouped into engine/, distributed/, components/ and io/.

Users' configs and code name `codistill.models.MLP`, `codistill.data.fashion_mnist.dataset` or
`codistill.preemption.EXIT_PREEMPTED`; these keep working: importing an old name returns the module that now lives
at the new one (the same object, so `isinstance` checks and registries see one class).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
from types import ModuleType
from typing import Optional, Sequence

MOVED = {
    "codistill.trainer": "codistill.engine.trainer",
    "codistill.worker": "codistill.engine.worker",
    "codistill.algorithm": "codistill.engine.algorithm",
    "codistill.losses": "codistill.engine.losses",
    "codistill.logits": "codistill.engine.logits",
    "codistill.teachers": "codistill.engine.teachers",
    "codistill.outer": "codistill.engine.outer",
    "codistill.kd": "codistill.engine.kd",
    "codistill.vectorized": "codistill.engine.vectorized",
    "codistill.precision": "codistill.engine.precision",
    "codistill.optim": "codistill.engine.optim",
    "codistill.topology": "codistill.distributed.topology",
    "codistill.sharding": "codistill.distributed.sharding",
    "codistill.preemption": "codistill.distributed.preemption",
    "codistill.exchange": "codistill.distributed.exchange",
    "codistill.instantiate": "codistill.components.instantiate",
    "codistill.cohort": "codistill.components.cohort",
    "codistill.pretrained": "codistill.components.pretrained",
    "codistill.models": "codistill.components.models",
    "codistill.data": "codistill.components.data",
    "codistill.rng": "codistill.components.rng",
    "codistill.checkpoint": "codistill.io.checkpoint",
    "codistill.reporting": "codistill.io.reporting",
    "codistill.loggers": "codistill.io.loggers",
    "codistill.metrics": "codistill.io.metrics",
}


def new_name(old: str) -> Optional[str]:
    """The current module name for `old` (a moved module or anything below a moved package), else None."""
    for prefix, target in MOVED.items():
        if old == prefix or old.startswith(prefix + "."):
            return target + old[len(prefix):]
    return None


class _Alias(importlib.abc.Loader):
    def __init__(self, target: str) -> None:
        self.target = target

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        return importlib.import_module(self.target)

    def exec_module(self, module: ModuleType) -> None:
        """Nothing to run: the module was executed under its new name."""


class LegacyPathFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname: str, path: Optional[Sequence[str]], target: Optional[ModuleType] = None):
        new = new_name(fullname)
        if new is None:
            return None
        module = importlib.import_module(new)
        return importlib.machinery.ModuleSpec(fullname, _Alias(new), is_package=hasattr(module, "__path__"))


def install() -> None:
    if not any(isinstance(f, LegacyPathFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, LegacyPathFinder())  # before the path finder, which would load a second copy
