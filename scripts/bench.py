"""Benchmark: the codistillation step against plain (DDP) training and the forward-count bound, in one run.

    python scripts/bench.py                                      # simulated mode, G = 2, 784-800-800-10, batch 128
    python scripts/bench.py --threads 1 --json bench.json
    torchrun --standalone --nproc-per-node=4 scripts/bench.py --groups 2    # 2 x 2 ranks, real gloo collectives

It drives the real engine: two Trainers built from the same config, one with distill.mode=none (plain: DDP inside a
group) and one codistilling with loaded teacher copies, and times, interleaved so machine noise hits all alike:

    plain step        GroupWorker.train_step of the plain trainer (forward + backward + DDP all-reduce + SGD)
    codistill step    GroupWorker.train_step of the codistilling trainer
    teacher forwards  TeacherCopies.predict on one micro-batch (G - 1 forwards, no autograd graph)
    exchange          Trainer._exchange: flatten, all-gather (torchrun) or copy (simulated), load the copies

    bound B = (t_plain + (G - 1) t_teacher_fwd) / t_plain     the step can't cost less than its forwards
    ratio   = t_codistill / t_plain                            target: ratio <= 1.05 B
    exchange share at K = t_exchange / (K t_codistill + t_exchange) per group       target: <= 1 % at K = 50

Bytes per step are the collectives' payloads per rank, from the tensor sizes: codistillation's cross-group
all-gather every K steps (divided by R with --shard-exchange) against the gradient all-reduce of plain DDP over all
G x R ranks (ring all-reduce: 2 (W - 1) / W x the gradient). In simulated mode it also times the vectorised step
(topology.vectorize) against the per-group loop for --vec-groups small MLPs. All times are medians over --repeats.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Sequence

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

from codistill.config import register_configs, validate  # noqa: E402
from codistill.exchange import CollectiveExchange  # noqa: E402
from codistill.topology import Topology, resolve_layout  # noqa: E402
from codistill.trainer import Trainer  # noqa: E402


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--groups", type=int, default=2, help="G")
    p.add_argument("--hidden", default="800,800", help="MLP hidden widths (Hinton's 784-800-800-10 student)")
    p.add_argument("--features", type=int, default=784, help="input width (synthetic data)")
    p.add_argument("--batch", type=int, default=128, help="global batch of one group")
    p.add_argument("--exchange-every", type=int, default=50, help="K for the exchange share")
    p.add_argument("--shard-exchange", action="store_true", help="distill.shard_exchange (torchrun)")
    p.add_argument("--repeats", type=int, default=40)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--vec-groups", type=int, default=4, help="G of the vectorised-vs-loop comparison (0 = skip)")
    p.add_argument("--vec-features", type=int, default=32, help="input width of its small MLPs")
    p.add_argument("--vec-hidden", default="64,64", help="hidden widths of its small MLPs")
    p.add_argument("--vec-batch", type=int, default=64)
    p.add_argument("--json", type=Path, default=None, help="write the results as JSON here")
    return p.parse_args(argv)


def make_config(overrides: Sequence[str]) -> DictConfig:
    register_configs()
    OmegaConf.register_new_resolver("codistill_run_id", lambda: "bench", replace=True)
    OmegaConf.register_new_resolver("codistill_output_subdir", lambda: None, replace=True)
    with initialize_config_dir(str(REPO / "codistill" / "conf"), version_base="1.3"):
        return compose("config", overrides=list(overrides))


def base_overrides(a: argparse.Namespace, groups: int, features: int, hidden: str, batch: int) -> list[str]:
    return [
        "data=synthetic", f"data.num_features={features}", f"model.hidden=[{hidden}]", f"trainer.batch_size={batch}",
        f"topology.groups={groups}", "topology.device=cpu", "trainer.max_steps=1000000", "trainer.eval_every=0",
        "logger.plots=false", "distill.burn_in_steps=0", f"distill.exchange_every={a.exchange_every}",
        f"distill.shard_exchange={str(a.shard_exchange).lower()}",
    ]


def build(topo: Topology, overrides: list[str], run_dir: Path) -> Trainer:
    cfg = make_config(overrides)
    validate(cfg, topo.replicas)
    return Trainer(cfg, topo, run_dir)


def interleaved(variants: dict[str, Callable[[int], object]], repeats: int, warmup: int, sync: Callable[[], None]) -> dict[str, float]:
    """Median seconds of each variant, run round-robin (variant order rotates each repeat) after a warm-up.

    `sync` lines the ranks up before each timed call (a no-op in one process)."""
    times: dict[str, list[float]] = {k: [] for k in variants}
    names = list(variants)
    for i in range(warmup + repeats):
        order = names[i % len(names) :] + names[: i % len(names)]
        for name in order:
            sync()
            t0 = time.perf_counter()
            variants[name](i)
            if i >= warmup:
                times[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def worst_over_ranks(medians: dict[str, float]) -> dict[str, float]:
    """Under torchrun, the slowest rank's median (a synchronous step is as slow as its slowest rank)."""
    if not dist.is_initialized():
        return medians
    t = torch.tensor(list(medians.values()), dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return dict(zip(medians, t.tolist()))


def step_benchmark(a: argparse.Namespace, topo: Topology, tmp: Path) -> dict:
    G, R = topo.groups, topo.replicas
    common = base_overrides(a, G, a.features, a.hidden, a.batch) + ["topology.mode=" + topo.layout.mode]
    plain = build(topo, [*common, "distill=none"], tmp / "plain")
    codist = build(topo, common, tmp / "codistill")
    codist._exchange(0)  # load teacher copies, as after burn-in
    g = topo.local_groups[0]
    wp, wc = plain.workers[g], codist.workers[g]
    x, _ = wc._batch(0, wc.replicas[0])
    sync = topo.barrier
    med = worst_over_ranks(interleaved(
        {
            "plain_step": wp.train_step,
            "codistill_step": wc.train_step,
            "teacher_forwards": lambda i: wc.teachers.predict(x),
            "exchange": lambda i: codist._exchange(i),
        },
        a.repeats, a.warmup, sync,
    ))
    t_plain, t_cod, t_teach = med["plain_step"], med["codistill_step"], med["teacher_forwards"]
    t_fwd = t_teach / max(1, G - 1)
    micro = len(wc.replicas)  # simulated: a group's step runs R micro-batches; the teachers see each
    bound = (t_plain + (G - 1) * t_fwd * micro) / t_plain
    ratio = t_cod / t_plain
    t_ex = med["exchange"] / len(topo.local_groups)
    K = a.exchange_every
    share = t_ex / (K * t_cod + t_ex)

    params = sum(p.numel() for p in wc.model.parameters())
    state = wc.flattener.numel
    ex = codist.exchange
    per_exchange = (
        ex.cross_group_bytes() if isinstance(ex, CollectiveExchange) else (G - 1) * -(-state // (R if a.shard_exchange else 1)) * 4
    )
    W = G * R
    return {
        "groups": G, "replicas": R, "mode": topo.layout.mode,
        "median_ms": {k: v * 1e3 for k, v in med.items()},
        "ratio_vs_ddp": ratio, "bound": bound, "ratio_over_bound": ratio / bound,
        "exchange_every": K, "exchange_share": share,
        "parameters": params, "state_values": state,
        "bytes_per_step": {
            "codistill_cross_group": per_exchange / K,
            "codistill_in_group_allreduce": 2 * (R - 1) / R * params * 4,
            "ddp_all_ranks_allreduce": 2 * (W - 1) / W * params * 4,
        },
    }


def vectorized_benchmark(a: argparse.Namespace, tmp: Path) -> dict:
    common = base_overrides(a, a.vec_groups, a.vec_features, a.vec_hidden, a.vec_batch) + ["topology.mode=simulated"]
    topo = Topology.start(resolve_layout(make_config(common).topology, env={}), "cpu")  # its own G, one process
    loop = build(topo, common, tmp / "loop")
    vec = build(topo, [*common, "topology.vectorize=true"], tmp / "vec")
    if vec.vectorized is None:
        raise SystemExit("bench: the vectorised trainer fell back to the loop (see the log above)")
    loop._exchange(0)
    vec._exchange(0)

    def loop_step(i: int) -> None:
        for w in loop.workers.values():
            w.train_step(i)

    med = interleaved({"loop_step": loop_step, "vectorized_step": vec.vectorized.train_step}, a.repeats, a.warmup, lambda: None)
    return {
        "groups": a.vec_groups, "model": f"MLP {a.vec_features}-{a.vec_hidden.replace(',', '-')}-10", "batch": a.vec_batch,
        "median_ms": {k: v * 1e3 for k, v in med.items()},
        "speedup": med["loop_step"] / med["vectorized_step"],
    }


def markdown(res: dict) -> str:
    s = res["step"]
    ms = s["median_ms"]
    b = s["bytes_per_step"]
    lines = [
        f"## codistill step vs plain, {s['groups']} groups x {s['replicas']} replicas ({s['mode']}), "
        f"{res['config']['model']}, batch {res['config']['batch']}, {res['machine']['threads']} thread(s)",
        "",
        "| part | median ms |",
        "|---|---:|",
        *(f"| {k.replace('_', ' ')} | {v:.2f} |" for k, v in ms.items()),
        "",
        f"- ratio codistill / plain: **{s['ratio_vs_ddp']:.3f}**, bound B = {s['bound']:.3f}, "
        f"ratio / B = {s['ratio_over_bound']:.3f} (target <= 1.05)",
        f"- exchange share of wall time at K = {s['exchange_every']}: **{100 * s['exchange_share']:.3f} %** (target <= 1 %)",
        f"- bytes per step and rank: codistill cross-group {b['codistill_cross_group'] / 1e3:.1f} kB "
        f"(+ in-group all-reduce {b['codistill_in_group_allreduce'] / 1e6:.2f} MB) vs DDP over all ranks "
        f"{b['ddp_all_ranks_allreduce'] / 1e6:.2f} MB ({s['parameters']:,} parameters)",
    ]
    if "vectorized" in res:
        v = res["vectorized"]
        lines += [
            "",
            f"## vectorised vs per-group loop, {v['groups']} groups, {v['model']}, batch {v['batch']}",
            "",
            f"- loop {v['median_ms']['loop_step']:.2f} ms, vectorised {v['median_ms']['vectorized_step']:.2f} ms: "
            f"**{v['speedup']:.2f}x** (target >= 2x)",
        ]
    return "\n".join(lines)


def main(argv: Sequence[str]) -> None:
    a = parse_args(argv)
    if a.threads is not None:
        torch.set_num_threads(a.threads)
    cfg = make_config([f"topology.groups={a.groups}"])
    layout = resolve_layout(cfg.topology)
    topo = Topology.start(layout, "cpu", 120.0)
    clean = False
    try:
        with tempfile.TemporaryDirectory(prefix="codistill-bench-") as d:
            tmp = Path(d) if topo.simulated else Path(d) / f"rank{layout.rank}"
            res: dict = {
                "command": " ".join([Path(sys.argv[0]).name, *argv]),
                "machine": {
                    "platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cpus": os.cpu_count(), "threads": torch.get_num_threads(), "torch": torch.__version__,
                    "world_size": layout.world_size,
                },
                "config": {"model": f"MLP {a.features}-{a.hidden.replace(',', '-')}-10", "batch": a.batch},
                "step": step_benchmark(a, topo, tmp),
            }
            res.update({k: res["step"][k] for k in ("ratio_vs_ddp", "bound", "ratio_over_bound", "exchange_share")})
            if topo.simulated and a.vec_groups > 1:
                res["vectorized"] = vectorized_benchmark(a, tmp)
        clean = True
    finally:
        topo.shutdown(clean)
    if topo.is_main:
        print(markdown(res))
        if a.json is not None:
            a.json.write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
