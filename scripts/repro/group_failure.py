"""A worker group dies mid-run: what each low-communication method does, and how good the survivors are.

    python scripts/repro/group_failure.py            # noisy Fashion-MNIST MLP (experiment=lowcomm_fmnist_noisy)
    python scripts/repro/group_failure.py --smoke    # seconds; checks the script, not the claim

Every scenario is real processes: torchrun jobs on this machine (gloo, CPU), one process per rank. Halfway through
the run (the first metrics record at or past steps / 2) the process of group 1 is sent SIGKILL, as a lost node
would be. Then the script waits (bounded) and records whether the other group finishes, how long the job takes to
end after the kill, and the survivor's final test accuracy next to the same run without a failure.

Scenarios (2 groups of 1 rank each; topology.timeout_s sets how long a collective waits for a dead peer):
  - synchronous SGD (one group of 2 replicas: a replica dies), local SGD (distill=average), DiLoCo (distill=diloco)
    and codistillation with the collective exchange, each as one torchrun job of 2 ranks;
  - codistillation with its groups as separate jobs (topology.group_id, distill.exchange=filesystem): one torchrun job
    per group sharing an exchange directory. DiLoCo and local SGD refuse this layout (an outer step needs every
    group), which the script shows by running the refused command.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

from _common import REPO, markdown_table, parser, report

METHODS = {  # name -> overrides of a 2-rank job (experiment=lowcomm_fmnist_noisy)
    "synchronous SGD (1 group x 2 replicas)": ["distill=none", "topology.groups=1", "trainer.batch_size=256"],
    "local SGD (G=2)": ["distill=average", "distill.burn_in_steps=0"],
    "DiLoCo (G=2)": ["distill=diloco"],
    "codistillation (G=2), one job": [],
}
TIMEOUT_S = 30  # topology.timeout_s of every job


def env() -> dict[str, str]:
    keep = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    return {**keep, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def launch(nproc: int, overrides: list[str], run_dir: Path) -> subprocess.Popen:
    run_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "codistill.train", *overrides, f"topology.timeout_s={TIMEOUT_S}", "logger=none", "logger.plots=false",
           f"hydra.run.dir={run_dir}"]
    with open(run_dir.parent / f"{run_dir.name}.out", "ab") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env(), cwd=REPO, start_new_session=True)


def records(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines() if x.endswith("}")] if path.exists() else []


def last_step(run_dir: Path) -> int:
    return max((r["step"] for r in records(run_dir) if r.get("group") is not None), default=0)


def final_acc(run_dir: Path, group: int) -> Optional[float]:
    evals = [r for r in records(run_dir) if r.get("group") == group and "eval/acc" in r]
    return evals[-1]["eval/acc"] if evals else None


def worker_of_group(job: subprocess.Popen, rank: int) -> int:
    """The PID of global rank `rank` among the agent's worker processes."""
    for pid in Path(f"/proc/{job.pid}/task/{job.pid}/children").read_text().split():
        environ = Path(f"/proc/{pid}/environ").read_text().split("\0")
        if f"RANK={rank}" in environ:
            return int(pid)
    raise RuntimeError(f"no worker of rank {rank} under torchrun agent {job.pid}")


def wait(job: subprocess.Popen, limit: float) -> Optional[int]:
    try:
        return job.wait(timeout=limit)
    except subprocess.TimeoutExpired:
        return None


def stop(job: subprocess.Popen) -> None:
    if job.poll() is None:
        os.killpg(job.pid, signal.SIGKILL)
        job.wait(timeout=30)


def scenario(jobs: list[subprocess.Popen], run_dirs: list[Path], victim: tuple[int, int], steps: int,
             limit: float) -> dict:
    """Kill rank victim[1] of job victim[0] at mid-run; follow the job(s) until they end (or `limit` seconds)."""
    watch = run_dirs[0]
    try:
        deadline = time.monotonic() + limit
        while last_step(watch) < steps // 2:
            if any(j.poll() is not None for j in jobs) or time.monotonic() > deadline:
                raise RuntimeError(f"a job ended or stalled before mid-run; see {watch.parent}")
            time.sleep(0.05)
        killed_at = last_step(watch)
        os.kill(worker_of_group(jobs[victim[0]], victim[1]), signal.SIGKILL)
        t0 = time.monotonic()
        codes = [wait(j, limit) for j in jobs]
        ended = time.monotonic() - t0
    finally:
        for j in jobs:
            stop(j)
    return {"killed_at": killed_at, "codes": codes, "seconds": ended, "last": last_step(watch),
            "acc": final_acc(watch, 0), "done": (watch / "checkpoints" / "group0" / "final.pt").exists()}


def outcome(r: dict, steps: int) -> tuple[str, str]:
    """(what happened to group 0's job, its final test accuracy if it finished)."""
    survivor = r["codes"][0]  # group 0's job (the only job when the groups share one)
    if r["done"] and survivor == 0:
        return f"group 0 finished all {steps} steps", _pct(r["acc"])
    if survivor is None:
        return f"stalled (still running after {r['seconds']:.0f} s)", "-"
    return f"job failed (exit {survivor}) {r['seconds']:.0f} s after the kill, at step {r['last']}", "-"


def main() -> None:
    args = parser(__doc__.splitlines()[0], steps=1000, seeds=1).parse_args()
    base = ["experiment=lowcomm_fmnist_noisy", f"trainer.max_steps={args.steps}",
            f"trainer.log_every={max(1, args.steps // 20)}", f"trainer.eval_every={args.steps}"]
    if args.smoke:
        args.steps = 60
        base = ["experiment=lowcomm_fmnist_noisy", "data=synthetic", "data.validation_examples=64",
                "model.hidden=[32]", "data.train_examples=1000", "data.eval_examples=128", "trainer.batch_size=32",
                "distill.exchange_every=5", f"trainer.max_steps={args.steps}", "trainer.log_every=2",
                f"trainer.eval_every={args.steps}"]
    limit = 4 * TIMEOUT_S + 10 * args.steps / 20  # generous: a bounded failure must show well within it
    rows = []
    methods = {k: v for k, v in METHODS.items() if not args.smoke or k.startswith("DiLoCo")}  # smoke: one of each kind
    for name, overrides in methods.items():
        out = args.out / name.split(" (")[0].replace(" ", "_")
        clean = launch(2, [*base, *overrides], out / "no_failure")
        clean_code = wait(clean, 60 + args.steps)
        stop(clean)
        reference = final_acc(out / "no_failure", 0) if clean_code == 0 else None
        r = scenario([launch(2, [*base, *overrides], out / "killed")], [out / "killed"], (0, 1), args.steps, limit)
        rows.append([name, "torchrun, 2 ranks", f"step {r['killed_at']}", *outcome(r, args.steps), _pct(reference)])
    # codistillation with its groups as separate jobs, sharing an exchange directory
    out = args.out / "codistillation_separate_jobs"
    shared = [*base, "distill.exchange=filesystem", f"distill.exchange_dir={out / 'exchange'}"]
    dirs = [out / f"group{g}" for g in (0, 1)]
    jobs = [launch(1, [*shared, f"topology.group_id={g}"], d) for g, d in enumerate(dirs)]
    r = scenario(jobs, dirs, (1, 0), args.steps, limit)
    ref_dirs = [out / f"no_failure_group{g}" for g in (0, 1)]
    ref_shared = [*base, "distill.exchange=filesystem", f"distill.exchange_dir={out / 'exchange_no_failure'}"]
    ref_jobs = [launch(1, [*ref_shared, f"topology.group_id={g}"], d) for g, d in enumerate(ref_dirs)]
    ref_codes = [wait(j, 60 + args.steps) for j in ref_jobs]
    for j in ref_jobs:
        stop(j)
    reference = final_acc(ref_dirs[0], 0) if ref_codes[0] == 0 else None
    rows.append(["codistillation (G=2), separate jobs", "2 torchrun jobs, filesystem exchange", f"step {r['killed_at']}",
                 *outcome(r, args.steps), _pct(reference)])
    refused = subprocess.run([sys.executable, "-m", "codistill.train", *base, "distill=diloco", "topology.group_id=0",
                              "distill.exchange=filesystem", f"hydra.run.dir={out / 'refused'}"],
                             capture_output=True, text=True, env=env(), cwd=REPO, timeout=120)
    refusal = refused.stderr.strip().splitlines()[-1] if refused.stderr.strip() else "(no message)"
    rows.append(["DiLoCo / local SGD, separate jobs", "2 torchrun jobs, filesystem exchange", "-",
                 f"refused before start (exit {refused.returncode}): `{refusal}`", "-", "-"])
    table = markdown_table(["method", "layout", "group 1 killed at", "what happens", "survivor's test acc %",
                            "same run, no failure %"], rows)
    notes = (f"{args.steps} steps, experiment=lowcomm_fmnist_noisy, topology.timeout_s={TIMEOUT_S}; one run per "
             "scenario. A failed job keeps its last complete checkpoint (trainer.checkpoint_every) and resumes with the "
             "same command once the group is back; the time to fail is bounded by topology.timeout_s.")
    report(args.out, "When a group dies: low-communication methods side by side", table, notes)


def _pct(acc: Optional[float]) -> str:
    return "-" if acc is None else f"{100 * acc:.2f}"


if __name__ == "__main__":
    main()
