"""Benchmark: the codistillation step against plain (DDP) training and the forward-count bound, in one run.

    python scripts/bench.py                                      # simulated mode, G = 2, 784-800-800-10, batch 128
    python scripts/bench.py --threads 1 --json bench.json
    python scripts/bench.py --data-workers 0,1,2                 # data rows: 0, 1, 2 loader workers ('' = skip them)
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

The data rows time the same two steps fed by a DataLoader, for the in-memory synthetic set and for an augmenting
image dataset (a random affine, flip and noise per sample in __getitem__), with each --data-workers count
(data.num_workers): the data wait is the time a step spends in GroupWorker._batch (the loader's next()). Each timed
call there runs --data-burst consecutive steps, more than the loader prefetches (num_workers x prefetch_factor), so
the wait is that of back-to-back training, not of a loader that refilled while the other variants ran.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from omegaconf import DictConfig  # noqa: E402
from torch.utils.data import Dataset  # noqa: E402

from codistill import cohort  # noqa: E402
from codistill.components import Components, from_config, training_data  # noqa: E402
from codistill.compose import compose_config  # noqa: E402
from codistill.config import validate  # noqa: E402
from codistill.data.pipeline import TrainingData, fetch  # noqa: E402
from codistill.exchange import CollectiveExchange  # noqa: E402
from codistill.topology import Topology, resolve_layout  # noqa: E402
from codistill.trainer import Trainer  # noqa: E402
from codistill.worker import GroupWorker  # noqa: E402

DataFactory = Callable[[DictConfig], TrainingData]  # the run's config -> its training data


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
    p.add_argument("--data-workers", type=workers_list, default=[0, 2],
                   help="data.num_workers of the augmenting-data rows, comma-separated ('' = skip the data rows)")
    p.add_argument("--data-burst", type=int, default=10, help="consecutive steps per timed call in the data rows")
    p.add_argument("--data-repeats", type=int, default=20, help="timed calls per variant in the data rows")
    p.add_argument("--json", type=Path, default=None, help="write the results as JSON here")
    return p.parse_args(argv)


def workers_list(text: str) -> list[int]:
    return [int(w) for w in text.split(",") if w.strip()]


def base_overrides(a: argparse.Namespace, groups: int, features: int, hidden: str, batch: int) -> list[str]:
    return [
        "data=synthetic", f"data.train.features={features}", f"model.hidden=[{hidden}]", f"trainer.batch_size={batch}",
        f"topology.groups={groups}", "topology.device=cpu", "trainer.max_steps=1000000", "trainer.eval_every=0",
        "logger.plots=false", "distill.burn_in_steps=0", f"distill.exchange_every={a.exchange_every}",
        f"distill.shard_exchange={str(a.shard_exchange).lower()}",
    ]


def build(topo: Topology, overrides: list[str], run_dir: Path, data: Optional[DataFactory] = None) -> Trainer:
    """A Trainer of the config `overrides`, on the config's datasets or on `data(cfg)`."""
    cfg = compose_config(overrides, run_id="bench")
    validate(cfg, topo.replicas)
    components = from_config(cfg) if data is None else Components(cohort.factories(cfg), data(cfg))
    return Trainer(cfg, topo, run_dir, components)


class AugmentedImages(Dataset):
    """Seeded random grey images [1, 28, 28] with 10 classes, augmented sample by sample in `__getitem__` as a
    torchvision pipeline would: a random affine (rotation <= 15 degrees, shift <= 2 px), a horizontal flip with
    probability 1/2, Gaussian noise, standardisation. The pipeline seeds the draws per batch."""

    MAX_ANGLE, NOISE = math.radians(15.0), 0.05
    MAX_SHIFT = 2 / 14  # 2 px in affine_grid's units (the image spans [-1, 1])
    MEAN, STD = 0.5, 0.29  # of uniform pixels in [0, 1]

    def __init__(self, num_examples: int = 4096, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.images = torch.randint(0, 256, (num_examples, 1, 28, 28), dtype=torch.uint8, generator=g)
        self.targets = torch.randint(0, 10, (num_examples,), generator=g)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.images[i].float().div_(255.0)
        angle = self.MAX_ANGLE * (2 * torch.rand(()).item() - 1)
        dx, dy = (self.MAX_SHIFT * (2 * torch.rand(2) - 1)).tolist()
        theta = torch.tensor([[[math.cos(angle), -math.sin(angle), dx], [math.sin(angle), math.cos(angle), dy]]])
        grid = F.affine_grid(theta, [1, *x.shape], align_corners=False)
        x = F.grid_sample(x.unsqueeze(0), grid, align_corners=False)[0]
        if torch.rand(()) < 0.5:
            x = x.flip(-1)
        x = x + self.NOISE * torch.randn_like(x)
        return (x - self.MEAN) / self.STD, self.targets[i]


def augmenting_data(cfg: DictConfig) -> TrainingData:
    images = AugmentedImages(seed=cfg.seed)
    return training_data(images, images, None, cfg.seed, cfg.data)


class TimedSteps:
    """A variant that runs `burst` consecutive train_steps of one worker per call, and records the seconds per step
    that the call waited in GroupWorker._batch (the DataLoader's next())."""

    def __init__(self, worker: GroupWorker, burst: int) -> None:
        self.worker, self.burst, self.step = worker, burst, 0
        self.waits: list[float] = []  # one per call
        self._fetch, self._wait = worker._batch, 0.0
        worker._batch = self._timed_fetch  # type: ignore[method-assign]

    def _timed_fetch(self, step: int, replica: int) -> tuple[Any, torch.Tensor]:
        t0 = time.perf_counter()
        batch = self._fetch(step, replica)
        self._wait += time.perf_counter() - t0
        return batch

    def __call__(self, i: int) -> None:
        self._wait = 0.0
        for _ in range(self.burst):
            self.worker.train_step(self.step)
            self.step += 1
        self.waits.append(self._wait / self.burst)


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


def step_times(topo: Topology, plain: Trainer, codist: Trainer, burst: int, repeats: int, warmup: int,
               exchange: bool) -> dict[str, float]:
    """Median seconds of a plain and a codistill step (per step, and the data wait in each), of one micro-batch's
    teacher forwards and, if `exchange`, of an exchange; interleaved, the slowest rank's under torchrun.

    Steps and teacher forwards run `burst` at a time, so all three share the CPU alike with loader workers that
    refill their queues after a burst."""
    codist._exchange(0)  # load teacher copies, as after burn-in
    g = topo.local_groups[0]
    wp, wc = plain.workers[g], codist.workers[g]
    x, _ = fetch(codist.data.dataset, wc.stream.batch_indices(0, wc.replicas[0]).tolist(), codist.data.collate)
    steps = {"plain": TimedSteps(wp, burst), "codistill": TimedSteps(wc, burst)}
    variants: dict[str, Callable[[int], object]] = {
        "plain_step": steps["plain"],
        "codistill_step": steps["codistill"],
        "teacher_forwards": lambda i: [wc.teachers.predict(x) for _ in range(burst)],
    }
    if exchange:
        variants["exchange"] = codist._exchange
    med = interleaved(variants, repeats, warmup, topo.barrier)
    for k in ("plain_step", "codistill_step", "teacher_forwards"):
        med[k] /= burst
    med.update({f"{k}_data_wait": statistics.median(s.waits[warmup:]) for k, s in steps.items()})
    return worst_over_ranks(med)


def ratio_to_bound(med: dict[str, float], groups: int, micro: int) -> dict[str, float]:
    """ratio = t_codistill / t_plain against B = (t_plain + (G - 1) t_fwd x micro-batches) / t_plain."""
    t_plain = med["plain_step"]
    t_fwd = med["teacher_forwards"] / max(1, groups - 1)
    bound = (t_plain + (groups - 1) * t_fwd * micro) / t_plain  # simulated: a group's step runs R micro-batches
    ratio = med["codistill_step"] / t_plain
    return {"ratio_vs_ddp": ratio, "bound": bound, "ratio_over_bound": ratio / bound}


def step_benchmark(a: argparse.Namespace, topo: Topology, tmp: Path) -> dict:
    G, R = topo.groups, topo.replicas
    common = base_overrides(a, G, a.features, a.hidden, a.batch) + ["topology.mode=" + topo.layout.mode]
    plain = build(topo, [*common, "distill=none"], tmp / "plain")
    codist = build(topo, common, tmp / "codistill")
    med = step_times(topo, plain, codist, 1, a.repeats, a.warmup, exchange=True)
    wc = codist.workers[topo.local_groups[0]]
    t_ex = med["exchange"] / len(topo.local_groups)
    K = a.exchange_every
    share = t_ex / (K * med["codistill_step"] + t_ex)

    params = sum(p.numel() for p in wc.model.parameters())
    state = wc.flattener.numel
    ex = codist.exchange
    per_exchange = (
        ex.cross_group_bytes() if isinstance(ex, CollectiveExchange) else (G - 1) * -(-state // (R if a.shard_exchange else 1)) * 4
    )
    W = G * R
    plain.close()
    codist.close()
    return {
        "groups": G, "replicas": R, "mode": topo.layout.mode,
        "median_ms": {k: v * 1e3 for k, v in med.items()},
        **ratio_to_bound(med, G, len(wc.replicas)),
        "exchange_every": K, "exchange_share": share,
        "parameters": params, "state_values": state,
        "bytes_per_step": {
            "codistill_cross_group": per_exchange / K,
            "codistill_in_group_allreduce": 2 * (R - 1) / R * params * 4,
            "ddp_all_ranks_allreduce": 2 * (W - 1) / W * params * 4,
        },
    }


def data_row(a: argparse.Namespace, topo: Topology, tmp: Path, data: Optional[DataFactory], workers: int) -> dict:
    """Plain and codistill steps on the in-memory synthetic set (data=None) or the augmenting images, timed in
    bursts of back-to-back steps, with `workers` DataLoader worker processes per replica."""
    name = "in-memory" if data is None else "augmenting"
    common = base_overrides(a, topo.groups, a.features, a.hidden, a.batch) + [
        "topology.mode=" + topo.layout.mode, f"data.num_workers={workers}",
        *([] if data is None else ["data.input_shape=[1,28,28]"]),
    ]
    run_dir = tmp / f"data-{name}-{workers}"
    plain = build(topo, [*common, "distill=none"], run_dir / "plain", data)
    codist = build(topo, common, run_dir / "codistill", data)
    warmup = -(-a.warmup // a.data_burst)  # at least --warmup steps
    med = step_times(topo, plain, codist, a.data_burst, a.data_repeats, warmup, exchange=False)
    micro = len(codist.workers[topo.local_groups[0]].replicas)
    plain.close()
    codist.close()
    return {"data": name, "num_workers": workers, "median_ms": {k: v * 1e3 for k, v in med.items()},
            **ratio_to_bound(med, topo.groups, micro)}


def data_benchmark(a: argparse.Namespace, topo: Topology, tmp: Path) -> list[dict]:
    """The in-memory row (no loader workers), then the augmenting dataset with each --data-workers count."""
    return [data_row(a, topo, tmp, None, 0)] + [data_row(a, topo, tmp, augmenting_data, w) for w in a.data_workers]


def vectorized_benchmark(a: argparse.Namespace, tmp: Path) -> dict:
    common = base_overrides(a, a.vec_groups, a.vec_features, a.vec_hidden, a.vec_batch) + ["topology.mode=simulated"]
    topo = Topology.start(resolve_layout(compose_config(common, run_id="bench").topology, env={}), "cpu")  # its own G
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


def data_markdown(rows: list[dict], burst: int) -> list[str]:
    lines = [
        "",
        f"## data wait, {burst} back-to-back steps per timed call (per-step medians, ms)",
        "",
        "| data | num_workers | plain step | its data wait | codistill step | its data wait | teacher fwd "
        "| ratio | bound B | ratio / B |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        ms = r["median_ms"]
        lines.append(
            f"| {r['data']} | {r['num_workers']} | {ms['plain_step']:.2f} | {ms['plain_data_wait']:.2f} "
            f"| {ms['codistill_step']:.2f} | {ms['codistill_data_wait']:.2f} | {ms['teacher_forwards']:.2f} "
            f"| {r['ratio_vs_ddp']:.3f} | {r['bound']:.3f} | {r['ratio_over_bound']:.3f} |"
        )
    return lines


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
    if "data" in res:
        lines += data_markdown(res["data"], res["config"]["data_burst"])
    return "\n".join(lines)


def main(argv: Sequence[str]) -> None:
    a = parse_args(argv)
    if a.threads is not None:
        torch.set_num_threads(a.threads)
    cfg = compose_config([f"topology.groups={a.groups}"], run_id="bench")
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
                "config": {
                    "model": f"MLP {a.features}-{a.hidden.replace(',', '-')}-10", "batch": a.batch,
                    "data_burst": a.data_burst,
                },
                "step": step_benchmark(a, topo, tmp),
            }
            res.update({k: res["step"][k] for k in ("ratio_vs_ddp", "bound", "ratio_over_bound", "exchange_share")})
            if topo.simulated and a.vec_groups > 1:
                res["vectorized"] = vectorized_benchmark(a, tmp)
            if a.data_workers:
                res["data"] = data_benchmark(a, topo, tmp)
        clean = True
    finally:
        topo.shutdown(clean)
    if topo.is_main:
        print(markdown(res))
        if a.json is not None:
            a.json.write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
