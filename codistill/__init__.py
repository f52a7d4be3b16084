"""codistill: distributed online codistillation (Anil et al. 2018) for PyTorch.

G worker groups each train one model with synchronous data parallelism over R replicas; every K steps they exchange
parameters, and after a burn-in each group distils from its stale copies of the others. `python -m codistill.train`
runs it in one process (simulated workers) or under torchrun.
"""

__version__ = "0.1.0"

from codistill import runtime  # noqa: E402,F401  first: it records the parent this process started under

from codistill import _legacy_paths

_legacy_paths.install()


def __getattr__(name: str):  # noqa: ANN202
    """`codistill.fit` (codistill/api.py), imported on first use so that `import codistill` stays light."""
    if name == "fit":
        from codistill.api import fit

        return fit
    raise AttributeError(f"module 'codistill' has no attribute {name!r}")
