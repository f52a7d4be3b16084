"""Real processes, real signals: groups as separate torchrun jobs, a killed group, exact resume, a dead rank.

Every process is started in its own session and killed in `finally`; every wait has a deadline.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import pytest

from codistill.io import checkpoint
from codistill.distributed.preemption import EXIT_PREEMPTED
from codistill.distributed.topology import resolve_layout
from tests.helpers import FAST, REPO, clean_env, load_final, make_config, max_abs_diff, run_torchrun

pytestmark = pytest.mark.torchrun


def launch(nproc: int, args: list[str], log: Path, torchrun_args: Sequence[str] = ()) -> subprocess.Popen:
    """A torchrun job in its own session (so the whole job can be signalled), output to `log`."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", *torchrun_args,
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


# --- preemption, elastic restarts, start-up bounds, full disks (issue #12) -------------------------------------------
# 2 groups x 1 replica, long enough (a few seconds) to be interrupted mid-run. log_every=50 with the default
# stop_check_every=10: most stop checks are the one-element all-reduce, some ride on a report.
LONG = ["topology.groups=2", "distill.burn_in_steps=5", "distill.exchange_every=6", "model.dropout=0.1",
        "trainer.max_steps=1200", "trainer.log_every=50", "trainer.eval_every=0"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The reference: one torchrun job straight through, no periodic checkpoints."""
    run_dir = tmp_path_factory.mktemp("uninterrupted")
    done = run_torchrun(2, [*LONG, f"hydra.run.dir={run_dir}", "logger.plots=false"], timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    return run_dir


def same_final(run_dir: Path, reference: Path) -> None:
    for g in (0, 1):
        assert max_abs_diff(load_final(run_dir, g), load_final(reference, g)) == 0.0, g


def resumed_from(run_dir: Path) -> int:
    text = (run_dir / "logs" / "rank1.log").read_text()
    return int(text.split("resumed from checkpoint")[1].split(" at step ")[1].split()[0])


def test_sigterm_to_the_agent_checkpoints_and_the_same_command_resumes_bit_for_bit(
        tmp_path: Path, uninterrupted: Path) -> None:
    run_dir = tmp_path / "run"
    args = [*LONG, f"hydra.run.dir={run_dir}"]
    job = launch(2, args, tmp_path / "job.log")
    try:
        wait_for(lambda: last_step(run_dir) >= 300, 120, "training to get going", [job])
        os.kill(job.pid, signal.SIGTERM)  # the agent only; torchrun forwards it to its workers
        job.wait(timeout=60)
    finally:
        kill_job(job)
    out = (tmp_path / "job.log").read_text()
    assert out.count("codistill: preempted: stopped by SIGTERM after step") == 2, out[-3000:]  # one line per rank
    (saved,) = checkpoint.complete_checkpoints(run_dir / "checkpoints")
    stopped_at = int(saved.name.removeprefix("step"))
    assert 300 <= stopped_at < 1200
    job = launch(2, args, tmp_path / "job.log")  # the same command again
    assert job.wait(timeout=180) == 0, (tmp_path / "job.log").read_text()[-3000:]
    assert resumed_from(run_dir) == stopped_at
    same_final(run_dir, uninterrupted)


def test_a_killed_worker_under_max_restarts_resumes_and_finishes(tmp_path: Path, uninterrupted: Path) -> None:
    run_dir = tmp_path / "run"
    job = launch(2, [*LONG, f"hydra.run.dir={run_dir}", "trainer.checkpoint_every=250"], tmp_path / "job.log",
                 torchrun_args=["--max-restarts=1"])
    try:
        wait_for(lambda: last_step(run_dir) >= 600, 120, "step 600", [job])
        (rank1,) = [p for p in workers_of(job) if rank_of(p) == "1"]
        os.kill(rank1, signal.SIGKILL)
        assert job.wait(timeout=120) == 0, (tmp_path / "job.log").read_text()[-3000:]
    finally:
        kill_job(job)
    assert resumed_from(run_dir) >= 500
    same_final(run_dir, uninterrupted)


def test_sigterm_stops_a_simulated_run_with_a_checkpoint_and_exit_code_3(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "codistill.train", *FAST, "logger.plots=false", "trainer.max_steps=1000000",
           f"hydra.run.dir={run_dir}"]
    job = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=clean_env(), cwd=REPO)
    try:
        wait_for(lambda: last_step(run_dir) >= 20, 60, "training to get going", [job])
        job.send_signal(signal.SIGTERM)
        _, err = job.communicate(timeout=60)
    finally:
        job.kill()
    assert job.returncode == EXIT_PREEMPTED, err[-3000:]
    (line,) = [x for x in err.splitlines() if x.startswith("codistill:")]
    assert line.startswith("codistill: preempted: stopped by SIGTERM after step"), line
    assert checkpoint.complete_checkpoints(run_dir / "checkpoints")


@pytest.mark.parametrize("rank", [0, 1])
def test_a_peer_that_never_arrives_fails_within_the_timeout(tmp_path: Path, rank: int) -> None:
    """One worker of a 2-rank world, started as a torchrun agent starts it (agent store, elastic environment); the
    other never comes. Rank 0 waits in init_process_group, rank 1 for rank 0's store: both give up after
    topology.timeout_s with one line."""
    from torch.distributed import TCPStore

    agent_store = TCPStore("127.0.0.1", 0, 2, is_master=True, wait_for_workers=False)
    env = {**clean_env(), "RANK": str(rank), "LOCAL_RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(agent_store.port), "TORCHELASTIC_USE_AGENT_STORE": "True",
           "TORCHELASTIC_RUN_ID": "never-arrives", "TORCHELASTIC_RESTART_COUNT": "0"}
    timeout_s = 5
    cmd = [sys.executable, "-m", "codistill.train", *FAST, "topology.groups=2", f"topology.timeout_s={timeout_s}",
           f"hydra.run.dir={tmp_path / 'run'}"]
    started = time.monotonic()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env, cwd=REPO)
    elapsed = time.monotonic() - started
    assert done.returncode == 2, done.stderr[-3000:]
    errors = [x for x in done.stderr.splitlines() if x.startswith("codistill: error:")]
    assert len(errors) == 1 and "within topology.timeout_s=5" in errors[0], done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    assert elapsed < timeout_s + 20, elapsed  # start-up of the interpreter and Hydra included


def test_a_full_disk_during_a_checkpoint_keeps_the_previous_one(tmp_path: Path) -> None:
    """A real full disk: the run's checkpoints directory is a 140 KiB tmpfs (in a user and mount namespace), which
    holds one checkpoint of this run (~94 KB) but not two. Both ranks stop at once with one line each."""
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode:
        pytest.skip("needs unshare -rm (user and mount namespaces) to mount a tmpfs")
    run_dir, kept = tmp_path / "run", tmp_path / "kept"
    (run_dir / "checkpoints").mkdir(parents=True)
    train = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m",
             "codistill.train", *FAST, "topology.timeout_s=20", "logger.plots=false", *LONG[:-3],
             "trainer.max_steps=60", "trainer.checkpoint_every=20", f"hydra.run.dir={run_dir}"]
    script = (f"mount -t tmpfs -o size=140k tmpfs {run_dir}/checkpoints && {shlex.join(train)}; rc=$?; "
              f"cp -a {run_dir}/checkpoints {kept}; exit $rc")  # the tmpfs goes with the namespace: keep a copy
    done = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, timeout=120,
                          env=clean_env(), cwd=REPO)
    assert done.returncode != 0
    failed = run_dir / "checkpoints" / "step000000040"
    errors = [x for x in done.stderr.splitlines() if x.startswith("codistill: error:")]
    assert len(errors) == 2 and all(x.startswith(f"codistill: error: could not write {failed}") for x in errors), done.stderr[-5000:]
    assert any("No space left on device [first reported by rank" in x for x in errors), errors
    assert [p.name for p in kept.iterdir()] == ["step000000020"]  # no partial step 40 directory, no temp file
    assert not list(kept.rglob("*.tmp"))
    layout = resolve_layout(make_config(["topology.groups=2"]).topology, {"RANK": "1", "WORLD_SIZE": "2",
                                                                          "LOCAL_RANK": "1"})
    shutil.copytree(kept, tmp_path / "copy" / "checkpoints")
    assert checkpoint.preflight(tmp_path / "copy", layout, "auto") == (
        tmp_path / "copy" / "checkpoints" / "step000000020")  # complete, checksums match: a resume would load it
