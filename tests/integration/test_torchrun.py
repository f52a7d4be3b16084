"""Real torchrun jobs (gloo, CPU): simulated == torchrun, replicas identical, two "nodes" on 127.0.0.1."""

import json
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ANY_MODEL, FAST, REPO, USER, clean_env, load_final, max_abs_diff, run_cli, run_torchrun

# 20+ steps spanning burn-in and several exchanges.
SCHEDULE = ["trainer.max_steps=24", "distill.burn_in_steps=5", "distill.exchange_every=5", "trainer.eval_every=12"]
CASES = {
    # dropout: every replica's random stream must match between the modes
    "mlp_dropout": ["model.dropout=0.2", "model.input_dropout=0.1"],
    # BatchNorm on real images: per-replica batch statistics, replica 0's running statistics, buffers exchanged
    "cnn_batchnorm": ["data=fashion_mnist", "model=cnn", "model.channels=[8,16]", "data.eval_examples=256"],
    # a user's model (returns a dict; BatchNorm, dropout) and datasets (random augmentation) defined outside the
    # package, fetched by 2 loader workers per replica
    "user_components": ["data.num_workers=2"],
    # 2 micro-batches per replica (DDP syncs on the second only) and global-norm clipping of the averaged gradient
    "accum_clip": ["trainer.grad_accum=2", "optim.grad_clip=0.5"],
    # bf16 autocast, bf16 teacher copies, the filesystem exchange broadcasting a bf16 snapshot inside each group
    "bf16_filesystem": ["trainer.precision=bf16", "distill.teacher_dtype=bfloat16", "distill.exchange=filesystem"],
}
BASE = {"cnn_batchnorm": ANY_MODEL, "user_components": USER}


def fingerprints(run_dir: Path) -> dict[int, set[str]]:
    """Group -> the set of parameter fingerprints its ranks logged at the end of training."""
    found: dict[int, set[str]] = {}
    for log in sorted((run_dir / "logs").glob("rank*.log")):
        for g, fp in re.findall(r"group (\d+) replica\(s\) \[\d+\]: parameter fingerprint (\w+)", log.read_text()):
            found.setdefault(int(g), set()).add(fp)
    return found


@pytest.mark.torchrun
@pytest.mark.parametrize("case", sorted(CASES))
def test_simulated_equals_torchrun(tmp_path: Path, case: str) -> None:
    args = [*SCHEDULE, *CASES[case]]
    dist_dir, sim_dir = tmp_path / "torchrun", tmp_path / "simulated"
    base = BASE.get(case, FAST)
    job = run_torchrun(4, [*args, "topology.groups=2", f"hydra.run.dir={dist_dir}"], base=base)
    assert job.returncode == 0, job.stderr[-3000:]
    sim = run_cli([*args, "topology.groups=2", "topology.replicas=2", f"hydra.run.dir={sim_dir}"], base=base)
    assert sim.returncode == 0, sim.stderr[-3000:]
    for g in (0, 1):
        assert max_abs_diff(load_final(dist_dir, g), load_final(sim_dir, g)) < 1e-5
    # Replicas of a group are bit-identical; the two groups differ.
    prints = fingerprints(dist_dir)
    assert sorted(prints) == [0, 1] and all(len(p) == 1 for p in prints.values())
    assert prints[0] != prints[1]
    logs = [p.read_text() for p in (dist_dir / "logs").glob("rank*.log")]
    assert len(logs) == 4
    # Clean shutdown: gloo's threads are joined when the process group is destroyed, not left to race the
    # interpreter's finalisation (the cause of rare SIGABRTs after destroy_process_group; see Topology.start).
    assert all("process groups destroyed; 1 native threads left" in text for text in logs)
    assert all("teacher copies in this process: 1" in text for text in logs)  # G - 1 per rank (simulated: G)
    assert (dist_dir / "metrics.jsonl").read_text() and (dist_dir / ".hydra").is_dir()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.torchrun
def test_two_nodes_on_localhost_share_one_run_dir(tmp_path: Path) -> None:
    port = _free_port()
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc-per-node=1", "--rdzv-backend=c10d",
        f"--rdzv-endpoint=127.0.0.1:{port}", "--rdzv-id=two-nodes", "-m", "codistill.train", *FAST,
        "trainer.max_steps=12", "distill.burn_in_steps=4", "distill.exchange_every=4", "topology.timeout_s=30",
        f"hydra.run.dir={tmp_path}/" + "${codistill_run_id:}",
    ]
    nodes = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=clean_env(), cwd=REPO) for _ in range(2)]
    try:
        outputs = [n.communicate(timeout=150) for n in nodes]
    finally:
        for n in nodes:
            n.kill()
    for n, (_, err) in zip(nodes, outputs):
        assert n.returncode == 0, err[-3000:]
    run_dir = tmp_path / "two-nodes"  # the rendezvous id names the one directory both nodes write to
    assert sorted(p.name for p in (run_dir / "logs").iterdir()) == ["rank0.log", "rank1.log"]
    assert (run_dir / "checkpoints" / "group0" / "final.pt").exists()
    assert (run_dir / "checkpoints" / "group1" / "final.pt").exists()


@pytest.mark.torchrun
def test_compiled_ddp_groups_train(tmp_path: Path) -> None:
    """trainer.compile under torchrun: compiled DDP students (2 x 2) and compiled teacher copies."""
    job = run_torchrun(4, ["trainer.compile=true", "trainer.max_steps=4", "distill.burn_in_steps=1",
                           "distill.exchange_every=1", "topology.groups=2", f"hydra.run.dir={tmp_path}"], timeout=300)
    assert job.returncode == 0, job.stderr[-3000:]
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["step"] == 4 and any(r.get("train/distill", 0) > 0 for r in records)
