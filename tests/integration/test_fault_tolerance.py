"""Real processes, real signals: groups as separate torchrun jobs, a killed group, exact resume, a dead rank.

Every process is started in its own session and killed in `finally`; every wait has a deadline.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pytest

from tests.helpers import FAST, REPO, clean_env, load_final, max_abs_diff, run_torchrun

pytestmark = pytest.mark.torchrun


def launch(nproc: int, args: list[str], log: Path) -> subprocess.Popen:
    """A torchrun job in its own session (so the whole job can be signalled), output to `log`."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "codistill.train", *FAST, "topology.timeout_s=20", "logger.plots=false", *args]
    with open(log, "ab") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=clean_env(), cwd=REPO,
                                start_new_session=True)


def workers_of(job: subprocess.Popen) -> list[int]:
    """PIDs of the job's worker processes (torchrun starts each in a session of its own)."""
    try:
        return [int(p) for p in Path(f"/proc/{job.pid}/task/{job.pid}/children").read_text().split()]
    except FileNotFoundError:
        return []


def gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"  # only a zombie left
    except FileNotFoundError:
        return True


def kill_job(job: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    """Kill the agent the way a scheduler would; its workers must die with it (they exit on the agent's death)."""
    if job.poll() is None:
        workers = workers_of(job)
        os.killpg(job.pid, sig)
        job.wait(timeout=30)
        deadline = time.monotonic() + 30
        while not all(gone(w) for w in workers):
            assert time.monotonic() < deadline, f"workers {workers} outlived their killed torchrun agent"
            time.sleep(0.2)


def records(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]


def last_step(run_dir: Path) -> int:
    return max((r["step"] for r in records(run_dir) if r.get("group") is not None), default=0)


def distilled(run_dir: Path) -> bool:
    return any(r.get("train/distill", 0) > 0 for r in records(run_dir))


def wait_for(condition: Callable[[], bool], timeout: float, what: str, jobs: list[subprocess.Popen]) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        dead = [j.args[-1] for j in jobs if j.poll() is not None]
        assert not dead, f"a job ended while waiting for {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


def test_separate_group_jobs_distill_both_ways_and_survive_a_killed_peer(tmp_path: Path) -> None:
    common = ["topology.groups=2", "distill.exchange=filesystem", f"distill.exchange_dir={tmp_path / 'exchange'}",
              "distill.burn_in_steps=5", "distill.exchange_every=5", "trainer.max_steps=1000000",
              "trainer.log_every=10", "trainer.checkpoint_every=50"]
    dirs = [tmp_path / "g0", tmp_path / "g1"]

    def start(g: int) -> subprocess.Popen:
        return launch(1, [*common, f"topology.group_id={g}", f"hydra.run.dir={dirs[g]}"], tmp_path / f"g{g}.log")

    jobs = [start(0), start(1)]
    try:
        wait_for(lambda: distilled(dirs[0]) and distilled(dirs[1]), 120, "both groups to distill", jobs)
        wait_for(lambda: any((dirs[1] / "checkpoints").glob("step*/manifest.json")), 60, "a checkpoint", jobs)
        kill_job(jobs[1])  # SIGKILL the whole job of group 1
        assert jobs[1].returncode != 0
        down_at = last_step(dirs[0])
        wait_for(lambda: last_step(dirs[0]) >= down_at + 50, 60, "group 0 to keep stepping", jobs[:1])
        assert jobs[0].poll() is None

        jobs[1] = start(1)  # restarted, it resumes from its last checkpoint and rejoins
        log1 = dirs[1] / "logs" / "rank0.log"
        wait_for(lambda: log1.exists() and "resumed from checkpoint" in log1.read_text(), 60, "the resume", jobs)
        resumed_at = int(log1.read_text().split("resumed from checkpoint")[1].split(" at step ")[1].split()[0])
        assert resumed_at >= 50
        wait_for(lambda: last_step(dirs[1]) > resumed_at + 20, 60, "group 1 to step again", jobs)
        assert jobs[0].poll() is None
    finally:
        for job in jobs:
            kill_job(job)


def test_exact_resume_under_torchrun(tmp_path: Path) -> None:
    args = ["topology.groups=2", "distill.burn_in_steps=5", "distill.exchange_every=6", "model.dropout=0.1",
            "trainer.eval_every=0"]

    def job(run_dir: Path, steps: int, exchange: str) -> None:
        done = run_torchrun(2, [*args, f"trainer.max_steps={steps}", f"distill.exchange={exchange}",
                                f"hydra.run.dir={run_dir}", "logger.plots=false"], timeout=120)
        assert done.returncode == 0, done.stderr[-3000:]

    # Four launches: in one job the filesystem exchange reads exactly the step's snapshots, so a straight
    # filesystem run equals a collective one, and one first half serves both resumes.
    job(tmp_path / "straight", 40, "filesystem")
    job(tmp_path / "collective", 20, "collective")
    shutil.copytree(tmp_path / "collective", tmp_path / "filesystem")
    for exchange in ("collective", "filesystem"):
        run_dir = tmp_path / exchange
        job(run_dir, 40, exchange)  # trainer.resume=auto: continues from step 20
        assert "resumed from checkpoint" in (run_dir / "logs" / "rank1.log").read_text()
        for g in (0, 1):
            assert max_abs_diff(load_final(run_dir, g), load_final(tmp_path / "straight", g)) == 0.0, (exchange, g)


def rank_of(pid: int) -> str:
    env = dict(kv.split("=", 1) for kv in Path(f"/proc/{pid}/environ").read_text().split("\0") if "=" in kv)
    return env.get("RANK", "")


def test_a_dead_rank_ends_a_collective_job(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    job = launch(2, ["topology.groups=2", "trainer.max_steps=1000000", "distill.burn_in_steps=5",
                     "distill.exchange_every=5", f"hydra.run.dir={run_dir}"], tmp_path / "job.log")
    try:
        wait_for(lambda: last_step(run_dir) >= 20, 90, "training to start", [job])
        workers = workers_of(job)
        (rank1,) = [p for p in workers if rank_of(p) == "1"]
        os.kill(rank1, signal.SIGKILL)
        job.wait(timeout=90)  # no hang: the job ends well within the timeout
    finally:
        kill_job(job)
    out = (tmp_path / "job.log").read_text()
    assert job.returncode != 0
    assert "rank      : 1 (local_rank: 1)" in out and "Signal 9 (SIGKILL)" in out, out[-3000:]  # torchrun names it
