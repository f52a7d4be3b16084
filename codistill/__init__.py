"""codistill: distributed online codistillation (Anil et al. 2018) for PyTorch.

G worker groups each train one model with synchronous data parallelism over R replicas; every K steps they exchange
parameters, and after a burn-in each group distils from its stale copies of the others. `python -m codistill.train`
runs it in one process (simulated workers) or under torchrun.
"""

import os

__version__ = "0.1.0"
# The parent this process had when it started (a worker's torchrun agent), read before torch is imported: a later
# getppid() that differs means the agent died and the worker was re-parented (codistill/distributed/topology.py).
PARENT_PID_AT_START = os.getppid()

from codistill import _legacy_paths

_legacy_paths.install()


def __getattr__(name: str):  # noqa: ANN202
    """`codistill.fit` (codistill/api.py), imported on first use so that `import codistill` stays light."""
    if name == "fit":
        from codistill.api import fit

        return fit
    raise AttributeError(f"module 'codistill' has no attribute {name!r}")
