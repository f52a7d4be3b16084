"""Workers under a torchrun that is PID 1 (a container's ENTRYPOINT, a Kubernetes pod's command), and the orphan
protection that must survive it: a worker whose launcher died before it could tie itself to it exits."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from codistill.runtime import torch_floor, torch_problem
from tests.helpers import FAST, REPO, clean_env

UNSHARE = ["unshare", "--pid", "--fork", "--mount-proc"]


def pid_namespace_refusal() -> str | None:
    """Why this machine cannot start a PID namespace (None when it can)."""
    if shutil.which("unshare") is None:
        return "unshare (util-linux) is not installed"
    probe = subprocess.run([*UNSHARE, "true"], capture_output=True, text=True, timeout=30)
    return None if probe.returncode == 0 else f"PID namespaces are refused here: {probe.stderr.strip()[:200]}"


@pytest.mark.torchrun
def test_torchrun_as_pid_1_trains_and_finishes(tmp_path: Path) -> None:
    reason = pid_namespace_refusal()
    if reason:
        pytest.skip(reason)
    cmd = [*UNSHARE, sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
           "-m", "codistill.train", *FAST, "trainer.max_steps=6", "distill.exchange_every=2", "logger.plots=false",
           "topology.timeout_s=30", f"hydra.run.dir={tmp_path}"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=clean_env(), cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "checkpoints" / "group0" / "final.pt").exists()
    assert (tmp_path / "checkpoints" / "group1" / "final.pt").exists()


def test_a_worker_whose_launcher_died_before_it_started_exits(tmp_path: Path) -> None:
    """The launcher starts a worker and dies; the worker then asks to die with its launcher, too late: it exits
    with one line instead of training on as an orphan."""
    ready, log = tmp_path / "ready", tmp_path / "worker.log"
    worker = textwrap.dedent(f"""
        import os, time
        from codistill.runtime import PARENT_PID_AT_START
        open({str(ready)!r}, "w").close()
        while os.getppid() == PARENT_PID_AT_START:  # until the launcher has died
            time.sleep(0.05)
        from codistill.distributed.topology import die_with_launcher
        die_with_launcher()
        print("still running")
    """)
    launcher = textwrap.dedent(f"""
        import os, subprocess, sys, time
        with open({str(log)!r}, "w") as out:
            subprocess.Popen([sys.executable, "-c", {worker!r}], stdout=out, stderr=subprocess.STDOUT,
                             start_new_session=True)
        while not os.path.exists({str(ready)!r}):
            time.sleep(0.05)
    """)
    subprocess.run([sys.executable, "-c", launcher], timeout=60, env=clean_env(), cwd=REPO, check=True)
    deadline = time.monotonic() + 60
    while "died before it started" not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    text = log.read_text()
    assert "codistill: error: the launcher of this worker" in text and "still running" not in text, text


def test_the_image_and_the_checks_read_one_torch_floor() -> None:
    """pyproject.toml states the floor; the Dockerfile's default base meets it and the build checks it first;
    an older torch is refused with one line naming the floor."""
    floor = torch_floor()
    dockerfile = (REPO / "Dockerfile").read_text()
    base = re.search(r"^ARG BASE=pytorch/pytorch:([0-9.]+)-", dockerfile, re.M)
    assert base and torch_problem(base.group(1)) is None, (base, floor)
    assert dockerfile.index("python -m codistill.runtime") < dockerfile.index("pip install")
    assert torch_problem("2.5.1+cu124") == (f"codistill needs torch>={floor}, this environment has torch 2.5.1+cu124: "
                                            f"pip install 'torch>={floor}' (or build on an image that has it)")
    assert torch_problem(f"{floor}.0") is None and torch_problem() is None  # the floor itself, and this machine's
