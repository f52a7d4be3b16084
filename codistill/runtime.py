"""Facts of the running process, taken at start: the parent it started under, and whether its torch is recent enough.

PARENT_PID_AT_START is read when codistill is first imported, before torch: a worker whose getppid() later differs
was re-parented, so its torchrun agent died (codistill/distributed/topology.py, die_with_launcher).

The oldest torch the code runs on is stated once (pyproject.toml's `torch>=` dependency) and checked at start.

Why that version: `init_device_mesh(..., backend_override=...)` (the mesh's sub-groups get topology.timeout_s) is in
torch 2.9; `torch.distributed.fsdp.fully_shard` and `torch.nn.utils.get_total_norm` in 2.6. An older torch fails
with one line here instead of an ImportError or a TypeError deep in the start-up. Imports nothing but torch (lazily),
so a container build can run `python -m codistill.runtime` before installing anything.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import sys
from pathlib import Path

PARENT_PID_AT_START = os.getppid()


def print_error(message: str) -> None:
    """Write `codistill: error: <message>` as one write, newline included: ranks share the launcher's stderr, and
    print()'s separate write of the newline let two ranks' lines run together."""
    sys.stderr.write(f"codistill: error: {message}\n")
    sys.stderr.flush()
_FLOOR = re.compile(r"""["']?torch\s*>=\s*([0-9][0-9.]*)""")


def torch_floor() -> str:
    """The floor from the source tree's pyproject.toml (a checkout), else from the installed package's metadata."""
    source = Path(__file__).resolve().parents[1] / "pyproject.toml"
    texts = [source.read_text()] if source.is_file() else importlib.metadata.requires("codistill") or []
    for text in texts:
        found = _FLOOR.search(text)
        if found:
            return found.group(1)
    raise RuntimeError("codistill's torch requirement is missing from its package metadata")


def _release(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", version.split("+")[0])[:3])


def torch_problem(version: str | None = None) -> str | None:
    """One line saying the installed torch is older than the floor; None when it is recent enough."""
    if version is None:
        import torch

        version = torch.__version__
    floor = torch_floor()
    if _release(version) >= _release(floor):
        return None
    return (f"codistill needs torch>={floor}, this environment has torch {version}: pip install 'torch>={floor}' "
            "(or build on an image that has it)")


if __name__ == "__main__":
    problem = torch_problem()
    if problem:
        print_error(problem)
        sys.exit(2)
