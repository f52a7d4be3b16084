"""topology.strategy=fsdp under real torchrun (gloo): FSDP2 groups equal the simulated reference, hold 1/R of every
teacher copy, exchange 1/R of the bytes, resume bit-exact from sharded checkpoints and reshard to another R.

The model is a user's transformer (tests/user_components.TinyTransformer: embeddings, LayerNorm, attention blocks)
on a user's dataset, both defined outside the package.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO, USER, clean_env, load_final, max_abs_diff, run_cli, run_torchrun, snapshot_steps

MODEL = [*USER, "model=tiny_transformer", "logger.plots=false"]
# burn-in, then exchanges before steps 5, 10, 15, 20; 2 micro-batches per replica and global-norm clipping
SCHEDULE = ["trainer.max_steps=24", "distill.burn_in_steps=5", "distill.exchange_every=5", "trainer.eval_every=12",
            "trainer.grad_accum=2", "optim.grad_clip=0.5", "topology.groups=2"]
FSDP = "topology.strategy=fsdp"


def rank_logs(run_dir: Path) -> list[str]:
    return [p.read_text() for p in sorted((run_dir / "logs").glob("rank*.log"))]


def sent_bytes(run_dir: Path) -> set[int]:
    """Bytes each rank sent to each peer per exchange, over all ranks and exchanges."""
    return {int(b) for text in rank_logs(run_dir) for b in re.findall(r"exchange at step \d+: sent (\d+) bytes", text)}


def losses(run_dir: Path) -> dict[tuple[int, int], float]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {(r["step"], r["group"]): r["train/loss"] for r in records if r.get("group") is not None}


@pytest.mark.torchrun
def test_fsdp_groups_equal_simulated_and_move_one_rth(tmp_path: Path) -> None:
    fsdp, ddp, sim = tmp_path / "fsdp", tmp_path / "ddp", tmp_path / "simulated"
    job = run_torchrun(4, [*SCHEDULE, FSDP, f"hydra.run.dir={fsdp}"], base=MODEL)
    assert job.returncode == 0, job.stderr[-3000:]
    job = run_torchrun(4, [*SCHEDULE, f"hydra.run.dir={ddp}"], base=MODEL)
    assert job.returncode == 0, job.stderr[-3000:]
    job = run_cli([*SCHEDULE, FSDP, "topology.replicas=2", f"hydra.run.dir={sim}"], base=MODEL)
    assert job.returncode == 0, job.stderr[-3000:]
    for g in (0, 1):
        assert max_abs_diff(load_final(fsdp, g), load_final(sim, g)) < 1e-5
    logs = rank_logs(fsdp)
    assert len(logs) == 4
    prints = [re.search(r"group (\d) replica\(s\) \[\d\]: parameter fingerprint (\w+)", t).groups() for t in logs]
    assert prints[0] == prints[1] and prints[2] == prints[3] and prints[0][1] != prints[2][1]  # replicas agree
    # every rank holds half of its peer's teacher copy ...
    for text in logs:
        here, total = map(int, re.search(r"teacher copy of group \d: (\d+) of its (\d+) parameter values", text).groups())
        assert here * 2 == total
    # ... and sends half of the bytes a DDP rank sends, at each of the 4 exchanges
    assert all(len(re.findall(r"exchange at step \d+: sent", t)) == 4 for t in logs)
    (fsdp_sent,), (ddp_sent,) = sent_bytes(fsdp), sent_bytes(ddp)
    assert fsdp_sent * 2 == ddp_sent == total * 4  # float32, no buffers
    records = losses(fsdp)
    assert records[(24, 0)] < records[(5, 0)]
    distill = [json.loads(line).get("train/distill", 0) for line in (fsdp / "metrics.jsonl").read_text().splitlines()]
    assert max(distill) > 0


@pytest.mark.torchrun
def test_fsdp_diloco_equals_simulated(tmp_path: Path) -> None:
    """DiLoCo's outer step on sharded groups: each replica steps its own shard of the outer parameters and sends
    its shard of the pseudo-gradient.

    The inner optimizer is SGD, not Adam: TinyTransformer's key bias has no gradient (softmax is shift-invariant),
    only float rounding (~1e-10), which Adam divides by its own square root into lr-sized steps whose sign depends
    on summation order. With Adam those entries differ by ~3e-3 between any two topologies (DDP and codistill
    included) while every loss agrees; SGD keeps the comparison about the outer step."""
    diloco = [*SCHEDULE, FSDP, "distill=diloco"]
    fsdp, sim = tmp_path / "fsdp", tmp_path / "simulated"
    job = run_torchrun(4, [*diloco, f"hydra.run.dir={fsdp}"], base=MODEL)
    assert job.returncode == 0, job.stderr[-3000:]
    job = run_cli([*diloco, "topology.replicas=2", f"hydra.run.dir={sim}"], base=MODEL)
    assert job.returncode == 0, job.stderr[-3000:]
    for g in (0, 1):
        assert max_abs_diff(load_final(fsdp, g), load_final(sim, g)) < 1e-5
    # an outer step before steps 0-5, 10, 15, 20; each rank sends half of its group's float32 pseudo-gradient
    total = sum(t.numel() for t in load_final(fsdp, 0).values())  # no buffers
    assert all(len(re.findall(r"exchange at step \d+: sent", t)) == 9 for t in rank_logs(fsdp))
    assert sent_bytes(fsdp) == {total * 4 // 2}


@pytest.mark.torchrun
def test_fsdp_bf16_trains_with_sharded_bf16_teachers(tmp_path: Path) -> None:
    """bf16 compute (FSDP2 mixed precision: bf16 gathers, float32 reduction and master weights), bf16 teacher copies
    kept sharded; close to the simulated bf16 run (both round to bf16, in different places)."""
    args = [*SCHEDULE, FSDP, "trainer.precision=bf16", "distill.teacher_dtype=bfloat16"]
    job = run_torchrun(4, [*args, f"hydra.run.dir={tmp_path / 'fsdp'}"], base=MODEL)
    assert job.returncode == 0, job.stderr[-3000:]
    job = run_cli([*args, "topology.replicas=2", f"hydra.run.dir={tmp_path / 'sim'}"], base=MODEL)
    assert job.returncode == 0, job.stderr[-3000:]
    for text in rank_logs(tmp_path / "fsdp"):
        here, total = map(int, re.search(r"teacher copy of group \d: (\d+) of its (\d+) parameter values", text).groups())
        assert here * 2 == total
        (sent,) = set(map(int, re.findall(r"exchange at step \d+: sent (\d+) bytes", text)))
        assert sent == total  # half the values, 2 bytes each
    fsdp, sim = losses(tmp_path / "fsdp"), losses(tmp_path / "sim")
    assert all(abs(fsdp[k] - sim[k]) < 0.02 for k in sim)


@pytest.mark.torchrun
def test_fsdp_resume_bit_exact_and_at_another_r(tmp_path: Path) -> None:
    """A sharded checkpoint at step 4 (teacher copies from the exchange before step 3, the next before step 6):
    resumed with R = 2 it ends bit-for-bit where the uninterrupted run does; resumed with R = 1 (resharded by
    torch.distributed.checkpoint) its next steps' losses match the R = 2 run's."""
    args = ["trainer.max_steps=8", "distill.burn_in_steps=2", "distill.exchange_every=3", "trainer.checkpoint_every=4",
            "trainer.checkpoint_keep=3", "trainer.eval_every=0", "trainer.log_every=1", "topology.groups=2", FSDP,
            "+data.train.augment=false"]  # the group's batch must not depend on R
    full, again, one = tmp_path / "full", tmp_path / "again", tmp_path / "r1"
    job = run_torchrun(4, [*args, f"hydra.run.dir={full}"], base=MODEL)
    assert job.returncode == 0, job.stderr[-3000:]
    ckpt = full / "checkpoints" / "step000000004"
    job = run_torchrun(4, [*args, f"trainer.resume={ckpt}", f"hydra.run.dir={again}"], base=MODEL)
    assert job.returncode == 0, job.stderr[-3000:]
    for g in (0, 1):
        assert max_abs_diff(load_final(full, g), load_final(again, g)) == 0.0
    job = run_torchrun(2, [*args, "trainer.max_steps=6", f"trainer.resume={ckpt}", f"hydra.run.dir={one}"], base=MODEL)
    assert job.returncode == 0, job.stderr[-3000:]
    want, got = losses(full), losses(one)
    assert sorted(got) == [(s, g) for s in (5, 6) for g in (0, 1)]
    assert all(abs(got[k] - want[k]) < 1e-5 for k in got)
    assert "resumed" in rank_logs(one)[0] and "written with another R" in rank_logs(one)[0]

    # the same checkpoint with another model: one line on every rank, no hang
    job = run_torchrun(2, [*args, "model.dim=32", f"trainer.resume={ckpt}", f"hydra.run.dir={tmp_path / 'other'}"],
                       base=MODEL, timeout=120)
    assert job.returncode != 0
    lines = [line for line in job.stderr.splitlines() if line.startswith("codistill: error:")]
    assert len(lines) == 2 and all("written by another model" in line for line in lines), job.stderr[-2000:]


@pytest.mark.torchrun
@pytest.mark.parametrize(("blocks", "message"), [
    ("[tests.user_components.NoSuchBlock]", "topology.fsdp_blocks: tests.user_components.NoSuchBlock does not resolve"),
    ("[torch.nn.Conv2d]", "topology.fsdp_blocks=[Conv2d] matches no module of group"),
])
def test_fsdp_bad_blocks_fail_on_every_rank(tmp_path: Path, blocks: str, message: str) -> None:
    job = run_torchrun(2, ["trainer.max_steps=2", FSDP, f"topology.fsdp_blocks={blocks}", f"hydra.run.dir={tmp_path}"],
                       base=MODEL, timeout=120)
    assert job.returncode != 0
    lines = [line for line in job.stderr.splitlines() if line.startswith("codistill: error:")]
    assert len(lines) == 2 and all(message in line for line in lines), job.stderr[-2000:]


@pytest.mark.torchrun
def test_fsdp_filesystem_exchange_equals_simulated(tmp_path: Path) -> None:
    """Every replica publishes its shard, reads shard r of its peer's version: the simulated run's numbers."""
    fsdp, sim = tmp_path / "fsdp", tmp_path / "simulated"
    fs = [*SCHEDULE, "trainer.max_steps=12", FSDP, "distill.exchange=filesystem"]
    job = run_torchrun(4, [*fs, f"hydra.run.dir={fsdp}"], base=MODEL)
    assert job.returncode == 0, job.stderr[-3000:]
    job = run_cli([*fs, "topology.replicas=2", f"hydra.run.dir={sim}"], base=MODEL)
    assert job.returncode == 0, job.stderr[-3000:]
    for g in (0, 1):
        assert max_abs_diff(load_final(fsdp, g), load_final(sim, g)) < 1e-5
    for g in (0, 1):  # R shards and manifests per version, no whole snapshot
        assert snapshot_steps(fsdp / "exchange" / f"group{g}", 2) == [10, 5]
        assert snapshot_steps(fsdp / "exchange" / f"group{g}") == []
    for text in rank_logs(fsdp):  # 2 exchanges; each rank wrote and read one shard (half of the state) each time
        here, total = map(int, re.search(r"teacher copy of group \d: (\d+) of its (\d+) parameter values", text).groups())
        moved = re.findall(r"exchange at step \d+: wrote (\d+) snapshot bytes to the exchange directory, read (\d+)", text)
        assert len(moved) == 2 and {(int(w), int(r)) for w, r in moved} == {(here * 4, here * 4)}


@pytest.mark.torchrun
def test_fsdp_filesystem_torn_shard_and_other_r_rejected(tmp_path: Path) -> None:
    """A torn shard of one replica keeps the whole reader group's previous copy; a version written with R = 3 is
    rejected; both with a logged reason (tests/integration/fsdp_filesystem_probe.py)."""
    args = [*MODEL, "topology.groups=2", FSDP, "distill.exchange=filesystem", "topology.timeout_s=30"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=4",
           "-m", "tests.integration.fsdp_filesystem_probe", str(tmp_path), *args]
    job = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=clean_env(), cwd=REPO)
    assert job.returncode == 0, job.stderr[-3000:]
    assert job.stderr.count(": ok") == 4, job.stderr[-3000:]
    torn = re.findall(r"rejected snapshot \S+/group1/step000000006.shard1of2 of group 1: checksum mismatch", job.stderr)
    assert len(torn) == 1, job.stderr[-3000:]  # on replica 1 of group 0; replica 0 says another replica's shard was bad
    assert "group 1 has a bad shard on another replica; the group keeps its previous copy" in job.stderr
    other = re.findall(r"rejected snapshot \S+step000000009 of group \d: written with R=3 shards, this run reads R=2",
                       job.stderr)
    assert len(other) == 2, job.stderr[-3000:]  # replica 0 of each group, once
