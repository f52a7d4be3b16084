"""What a new user's fresh environment runs: every module imports, the README demo works in a real terminal, a
sweep lands in one directory, and a short run works with the default burn-in.

In CI these run inside the clean virtual environment `.ci/run` builds from README's setup command, so a
dependency missing from pyproject.toml fails here.
"""

from __future__ import annotations

import fcntl
import importlib
import os
import pkgutil
import select
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

import codistill
from tests.helpers import FAST, REPO, clean_env


def test_every_module_of_the_package_imports() -> None:
    names = [m.name for m in pkgutil.walk_packages(codistill.__path__, "codistill.")]
    assert len(names) > 20
    for name in names:
        importlib.import_module(name)


def run_in_terminal(args: list[str], cwd: Path, timeout: float) -> tuple[int, str]:
    """Run a command with stdin/stdout/stderr on a pseudo-terminal (what an interactive shell gives it)."""
    controller, terminal = os.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # a terminal has a size
    proc = subprocess.Popen(args, stdin=terminal, stdout=terminal, stderr=terminal, cwd=cwd, env=clean_env(),
                            close_fds=True)
    os.close(terminal)
    chunks, deadline = [], time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([controller], [], [], 1.0)
            if ready:
                try:
                    data = os.read(controller, 65536)
                except OSError:  # the terminal closed: the process has exited
                    break
                if not data:
                    break
                chunks.append(data)
            elif proc.poll() is not None:
                break
        rc = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(controller)
    return rc, b"".join(chunks).decode(errors="replace")


def test_readme_demo_runs_in_a_terminal(tmp_path: Path) -> None:
    """README's first command, on a terminal (tqdm's progress bar is on), cut to a few hundred steps."""
    rc, out = run_in_terminal(
        [sys.executable, "-m", "codistill.train", "trainer.max_steps=300", "hydra.run.dir=run"], tmp_path, 300
    )
    assert rc == 0, out[-3000:]
    assert "300/300 [" in out and "step/s]" in out  # tqdm's bar was drawn and finished
    assert "ensemble acc" in out
    assert (tmp_path / "run" / "checkpoints" / "group1" / "final.pt").exists()


@pytest.mark.parametrize("launcher", ["basic", "submitit_local"])
def test_a_three_point_sweep_writes_one_sweep_directory(tmp_path: Path, launcher: str) -> None:
    """Hydra's own launcher, and submitit's (the Slurm launcher's local twin: each point in its own process)."""
    r = subprocess.run(
        [sys.executable, "-m", "codistill.train", "--multirun", f"hydra/launcher={launcher}", *FAST,
         "trainer.max_steps=4", "trainer.log_every=2", "logger.plots=false", "distill.mode=none,codistill,dml"],
        capture_output=True, text=True, timeout=300, env=clean_env(), cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    sweeps = list((tmp_path / "multirun" / "codistill").iterdir())
    assert len(sweeps) == 1, sweeps
    assert (sweeps[0] / "multirun.yaml").is_file()
    assert sorted(p.name for p in sweeps[0].iterdir() if p.is_dir() and p.name != ".submitit") == ["0", "1", "2"]
    for job in "012":
        assert (sweeps[0] / job / "metrics.jsonl").is_file()


def test_a_short_run_distills_with_the_default_burn_in(tmp_path: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "codistill.train", *FAST, "trainer.max_steps=50", "logger.plots=false",
         f"hydra.run.dir={tmp_path}"],
        capture_output=True, text=True, timeout=180, env=clean_env(), cwd=REPO,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert "burn-in 5 steps" in r.stdout
