"""Per-rank peak memory of DDP and FSDP2 groups, measured next to the bytes expected (docs/fsdp.md).

    python scripts/bench_fsdp_memory.py                  # G = 2, R = 1, 2, 4; ~50 M-parameter char transformer
    python scripts/bench_fsdp_memory.py --replicas 1,2 --dim 512 --layers 2    # smaller and faster

For each strategy and R it launches one real `torchrun --standalone --nproc-per-node=G*R` job of a few steps (Adam,
fp32, exchange every step, so every rank holds its teacher copy) of the examples' character transformer on KJV, and
reads every rank's peak RSS (resource.getrusage, on CPU; torch.cuda.max_memory_allocated where a GPU runs it).
Expected bytes per rank: parameters 4P, gradients 4P, Adam state 8P, teacher copies (G - 1) x 4P; FSDP2 divides all
four by R (plus an all-gathered block in flight). RSS also holds the interpreter, torch and activations: the
'base' column is the DDP R = 1 run's RSS minus its expected bytes, and the same base is assumed for every row.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def worker(out_dir: str, overrides: list[str]) -> None:
    """One torchrun rank: train, then record this process's peak memory."""
    sys.path.insert(0, str(REPO))
    sys.argv = ["codistill-train", *overrides]
    from codistill import train

    try:
        train.main()
    finally:
        import torch

        peak = (torch.cuda.max_memory_allocated() if torch.cuda.is_available()
                else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
        Path(out_dir, f"rss-rank{os.environ.get('RANK', '0')}.txt").write_text(str(peak))


def run(strategy: str, groups: int, replicas: int, a: argparse.Namespace, work: Path) -> dict:
    out = work / f"{strategy}-R{replicas}"
    out.mkdir(parents=True)
    overrides = [
        "--config-dir", str(REPO / "examples" / "char_transformer" / "conf"), "model=char_transformer",
        "data=kjv_chars", f"model.dim={a.dim}", f"model.layers={a.layers}", "model.heads=8",
        "data.train.seq_len=32", "data.eval_examples=16", "data.eval_batch_size=16", f"trainer.batch_size={8 * replicas}",
        f"trainer.max_steps={a.steps}", "trainer.eval_every=0", "trainer.log_every=1", "distill.burn_in_steps=1",
        "distill.exchange_every=1", "optim=adam", "optim.lr=0.0003", f"topology.groups={groups}",
        f"topology.strategy={strategy}", "topology.timeout_s=300", "logger.plots=false", f"hydra.run.dir={out / 'run'}",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled",
           "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "examples" / "char_transformer")])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={groups * replicas}",
           __file__, "--worker", str(out), *overrides]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=a.timeout)
    if done.returncode != 0:
        raise SystemExit(f"{strategy} R={replicas} failed:\n{done.stderr[-3000:]}")
    peaks = [int(p.read_text()) for p in sorted(out.glob("rss-rank*.txt"))]
    return {"strategy": strategy, "replicas": replicas, "peak_max": max(peaks), "peak_mean": sum(peaks) / len(peaks)}


def parameters(dim: int, layers: int, vocab: int = 73, max_len: int = 32) -> int:
    """The character transformer's parameter count (embeddings, pre-LN blocks of attention + 4x MLP, head)."""
    block = 2 * 2 * dim + (3 * dim * dim + 3 * dim) + (dim * dim + dim) + (4 * dim * dim + 4 * dim) + (4 * dim * dim + dim)
    return vocab * dim + max_len * dim + layers * block + 2 * dim + (dim * vocab + vocab)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(sys.argv[2], sys.argv[3:])
        return
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--groups", type=int, default=2)
    p.add_argument("--replicas", default="1,2,4")
    p.add_argument("--dim", type=int, default=1024)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--timeout", type=int, default=1200)
    p.add_argument("--json", type=Path, default=None)
    a = p.parse_args()
    P = parameters(a.dim, a.layers)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for replicas in (int(r) for r in a.replicas.split(",")):
            for strategy in ("ddp", "fsdp"):
                rows.append(run(strategy, a.groups, replicas, a, Path(tmp)))
                print(f"done: {strategy} R={replicas}", flush=True)
    mb = 1 / 2**20
    expected = {(r["strategy"], r["replicas"]): (16 + 4 * (a.groups - 1)) * P / (r["replicas"] if r["strategy"] == "fsdp" else 1)
                for r in rows}
    ddp1 = next((r for r in rows if r["strategy"] == "ddp" and r["replicas"] == 1), rows[0])
    base = ddp1["peak_max"] - expected[("ddp", ddp1["replicas"])]
    print(f"\nchar transformer dim {a.dim} x {a.layers} layers: {P:,} parameters; G = {a.groups}; Adam, fp32; "
          f"base (RSS beyond the expected bytes, from ddp R={ddp1['replicas']}): {base * mb:.0f} MB\n")
    print("| strategy | R | expected per rank (MB) | expected + base | measured peak RSS, max over ranks (MB) |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        e = expected[(r["strategy"], r["replicas"])]
        print(f"| {r['strategy']} | {r['replicas']} | {e * mb:.0f} | {(e + base) * mb:.0f} | {r['peak_max'] * mb:.0f} |")
    if a.json:
        a.json.write_text(json.dumps({"parameters": P, "groups": a.groups, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
