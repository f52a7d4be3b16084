"""Benchmark: the codistillation step against plain (DDP) training and the forward-count bound, in one run.

    python scripts/bench.py                                      # simulated mode, G = 2, 784-800-800-10, batch 128
    python scripts/bench.py --threads 1 --json bench.json
    python scripts/bench.py --data-workers 0,1,2                 # data rows: 0, 1, 2 loader workers ('' = skip them)
    torchrun --standalone --nproc-per-node=4 scripts/bench.py --groups 2    # 2 x 2 ranks, real gloo collectives
    python scripts/bench.py --threads 1 --data-workers '' --hardware --memory    # + bf16 / compile / memory sections
    python scripts/bench.py --vocab                              # output layer + loss at V = 32k, 128k (bench_vocab.py)

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

--hardware (simulated mode) adds, with the CPU's capability (torch.backends.cpu.get_cpu_capability())
and its bf16 units from /proc/cpuinfo:

    matmul chain      512x784 @ 784x2048 @ 2048x2048 in fp32 and bf16: the hardware's bf16 speed-up
    precision rows    per --hw-hidden MLP (784-2048-2048-10 and 784-512-512-10, batch 512, G = 2): one group's
                      plain and codistill steps in fp32 and under trainer.precision=bf16 (with float32 and with
                      bfloat16 teacher copies), the teacher forwards, and the same steps written by hand (HandStep:
                      no loader or bookkeeping): the reference the targets were set with.
                      target: t(codistill, bf16, bf16 copies) / t(plain, fp32) <= 0.45 (2048) and 0.6 (512)
    compile rows      the codistill step eager vs trainer.compile=true in fp32 and bf16: compile time (cold inductor
                      cache), steady-state speed-up, and recompiles after an exchange (target: 0)
    vectorised rows   the per-group loop vs topology.vectorize=true, each in fp32 and bf16

These rows report two medians per variant: CPU time of this process (time.process_time: the work the call did)
and wall time. With 1 thread on an idle machine they agree; on a shared machine the wall time also counts the
waits for a core, and the CPU-time ratios are the ones that carry over.

--link-mbps M runs only the slow-link section (scripts/bench_link.py): step time over a simulated link of M Mbit/s
with no exchange, a blocking exchange, a tau-overlapped one, fragments and each snapshot codec, side by side.

--memory runs, in a subprocess each, simulated G = 2, 4, 8 groups of the 784-2048-2048-10 MLP (fp32 and bfloat16
teacher copies with SGD, fp32 copies with Adam) and reports the expected bytes of parameters, gradients,
optimizer state and teacher copies (per torchrun rank and per simulated process) next to the measured peak RSS of
each phase (build, steps, exchange, distilling steps).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import os
import platform
import statistics
import subprocess
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
from torch import nn  # noqa: E402
from torch.utils.data import Dataset  # noqa: E402

from codistill import cohort  # noqa: E402
from codistill.components.registry import Components, training_data  # noqa: E402
from codistill.compose import compose_config  # noqa: E402
from codistill.config import validate  # noqa: E402
from codistill.components.data.pipeline import TrainingData, fetch  # noqa: E402
from codistill.distributed.exchange import CollectiveExchange  # noqa: E402
from codistill.engine.optim import build_optimizer  # noqa: E402
from codistill.engine.precision import PRECISIONS  # noqa: E402
from codistill.distributed.topology import Topology, resolve_layout  # noqa: E402
from codistill.build import build_trainer, cohort_of, components_from_config  # noqa: E402
from codistill.engine.trainer import Trainer  # noqa: E402
from codistill.engine.worker import GroupWorker  # noqa: E402

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
    p.add_argument("--hardware", action="store_true",
                   help="add the hardware rows: bf16 / fp32 steps against a hand-written loop, compile, vectorised bf16")
    p.add_argument("--hw-hidden", type=hidden_list, default=["2048,2048", "512,512"],
                   help="hidden widths of the precision rows' MLPs, ';'-separated (784 inputs, 10 classes)")
    p.add_argument("--hw-batch", type=int, default=512, help="global batch of one group in the precision rows")
    p.add_argument("--hw-repeats", type=int, default=15, help="timed rounds of the precision and compile rows")
    p.add_argument("--compile-hidden", default="512,512", help="hidden widths of the compile rows' MLP ('' = skip)")
    p.add_argument("--compile-steps", type=int, default=3, help="first steps timed as the compile time")
    p.add_argument("--memory", action="store_true",
                   help="add the memory section: expected bytes and the peak RSS of a process per G (simulated)")
    p.add_argument("--mem-groups", default="2,4,8", help="G of the memory section, comma-separated")
    p.add_argument("--mem-hidden", default="2048,2048", help="hidden widths of the memory section's MLP")
    p.add_argument("--mem-batch", type=int, default=128)
    p.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)  # internal: one memory measurement
    p.add_argument("--link-mbps", type=float, default=None,
                   help="run only the slow-link section (scripts/bench_link.py): a simulated link of M Mbit/s")
    p.add_argument("--link-latency-ms", type=float, default=50.0, help="the slow link's latency")
    p.add_argument("--link-features", type=int, default=3200, help="input width of the slow-link section's MLP")
    p.add_argument("--link-hidden", default="3200,3200,3200,3200,3200",
                   help="hidden widths of the slow-link section's MLP (default: 51 M parameters in 5 equal layers)")
    p.add_argument("--link-batch", type=int, default=32, help="global batch of one group in the slow-link section")
    p.add_argument("--json", type=Path, default=None, help="write the results as JSON here")
    return p.parse_args(argv)


def workers_list(text: str) -> list[int]:
    return [int(w) for w in text.split(",") if w.strip()]


def hidden_list(text: str) -> list[str]:
    return [h.strip() for h in text.split(";") if h.strip()]


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
    components = components_from_config(cfg) if data is None else Components(cohort.factories(cohort_of(cfg)), data(cfg))
    return build_trainer(cfg, topo, run_dir, components)


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


def interleaved(variants: dict[str, Callable[[int], object]], repeats: int, warmup: int, sync: Callable[[], None],
                cpu: Optional[dict[str, float]] = None) -> dict[str, float]:
    """Median seconds of each variant, run round-robin (variant order rotates each repeat) after a warm-up.

    `sync` lines the ranks up before each timed call (a no-op in one process). If `cpu` is given, it receives the
    median CPU seconds of this process per call (time.process_time: every thread's, none of other processes'):
    on a shared machine that is the work a call did, without the time it waited for a core."""
    times: dict[str, list[float]] = {k: [] for k in variants}
    cpu_times: dict[str, list[float]] = {k: [] for k in variants}
    names = list(variants)
    for i in range(warmup + repeats):
        order = names[i % len(names) :] + names[: i % len(names)]
        for name in order:
            sync()
            c0, t0 = time.process_time(), time.perf_counter()
            variants[name](i)
            if i >= warmup:
                times[name].append(time.perf_counter() - t0)
                cpu_times[name].append(time.process_time() - c0)
    if cpu is not None:
        cpu.update({k: statistics.median(v) for k, v in cpu_times.items()})
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
    x, _ = fetch(codist.data.dataset, wc.batches.stream.batch_indices(0, wc.local_replicas[0]).tolist(), codist.data.collate)
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
    ex = codist.exchange.transport
    per_exchange = (
        ex.cross_group_bytes(1) if isinstance(ex, CollectiveExchange) else (G - 1) * -(-state // (R if a.shard_exchange else 1)) * 4
    )
    W = G * R
    plain.close()
    codist.close()
    return {
        "groups": G, "replicas": R, "mode": topo.layout.mode,
        "median_ms": {k: v * 1e3 for k, v in med.items()},
        **ratio_to_bound(med, G, len(wc.local_replicas)),
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
    micro = len(codist.workers[topo.local_groups[0]].local_replicas)
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


# --- the hardware rows: bf16 and fp32 steps, torch.compile, the vectorised mode in bf16 -----------------

MATMUL_CHAIN = (512, 784, 2048, 2048)  # x [512, 784] @ [784, 2048] @ [2048, 2048]: the first two layers of the MLP
BF16_UNITS = ("avx512_bf16", "amx_bf16")  # x86 flags of CPUs that compute bf16 dot products natively
# the targets: t(codistill step, bf16 autocast, bf16 teacher copies) / t(plain fp32 step), per hidden widths
BF16_TARGETS = {"2048,2048": 0.45, "512,512": 0.6}


def cpu_info() -> dict:
    """torch's CPU capability (the vector ISA its kernels use) and the CPU's bf16 units from /proc/cpuinfo (x86)."""
    flags: list[str] = []
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = value.split()
    units = [f for f in BF16_UNITS if f in flags]
    isa = os.environ.get("ONEDNN_MAX_CPU_ISA")  # oneDNN (bf16 matmuls) told to use no more than this ISA
    if isa and "BF16" not in isa.upper() and "AMX" not in isa.upper() and isa.upper() != "ALL":
        units = []  # an emulation of a CPU without bf16 units (e.g. AVX512_CORE: Skylake; AVX2)
    return {"capability": torch.backends.cpu.get_cpu_capability(), "model": model, "onednn_max_cpu_isa": isa,
            "bf16_units": units, "amx": "amx_bf16" in units}


def matmul_chain(repeats: int, warmup: int) -> dict:
    """The two big matmuls of the 784-2048-2048 MLP's forward at batch 512, in fp32 and in bf16: the hardware's
    bf16 speed-up before any framework."""
    g = torch.Generator().manual_seed(0)
    B, D, H1, H2 = MATMUL_CHAIN
    mats = [torch.randn(B, D, generator=g), torch.randn(D, H1, generator=g), torch.randn(H1, H2, generator=g)]
    by_dtype = {name: [m.to(dt) for m in mats] for name, dt in (("fp32", torch.float32), ("bf16", torch.bfloat16))}
    cpu: dict[str, float] = {}
    med = interleaved({k: (lambda i, m=m: (m[0] @ m[1]) @ m[2]) for k, m in by_dtype.items()}, repeats, warmup,
                      lambda: None, cpu)
    return {"shape": "x".join(map(str, MATMUL_CHAIN)), "median_ms": {k: v * 1e3 for k, v in med.items()},
            "cpu_ms": {k: v * 1e3 for k, v in cpu.items()},
            "bf16_over_fp32": med["bf16"] / med["fp32"], "cpu_bf16_over_fp32": cpu["bf16"] / cpu["fp32"]}


class HandStep:
    """The step written by hand, as the reference loop: a copy of the engine's student (and of a teacher
    copy, in its stored dtype), the engine's optimizer, autocast around the forwards, the float32 loss of
    Algorithm 1 (CE + KL at T = 1), on one in-memory batch: no data loader, schedule or bookkeeping."""

    def __init__(self, worker: GroupWorker, x: torch.Tensor, y: torch.Tensor, precision: str,
                 teacher: Optional[nn.Module] = None) -> None:
        self.student = copy.deepcopy(worker.model).train()
        self.teacher = copy.deepcopy(teacher) if teacher is not None else None
        self.optimizer = build_optimizer(self.student.parameters(), worker.optimizer_factory.optim)
        self.dtype, self.x, self.y = PRECISIONS[precision], x, y

    def __call__(self, i: int) -> None:
        region = torch.autocast("cpu", dtype=self.dtype) if self.dtype is not None else contextlib.nullcontext()
        with region:
            if self.teacher is not None:
                with torch.no_grad():
                    t = self.teacher(self.x)
            z = self.student(self.x)
        log_p = F.log_softmax(z.float(), -1)
        loss = F.nll_loss(log_p, self.y)
        if self.teacher is not None:
            loss = loss + F.kl_div(log_p, F.softmax(t.float(), -1), reduction="batchmean")
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


def simulated(overrides: list[str]) -> Topology:
    """A one-process topology of the config `overrides` (its own G, whatever the run's)."""
    return Topology.start(resolve_layout(compose_config(overrides, run_id="bench").topology, env={}), "cpu")


BF16 = ["trainer.precision=bf16", "distill.teacher_dtype=bfloat16"]  # bf16 autocast and bf16 teacher copies


def precision_rows(a: argparse.Namespace, hidden: str, tmp: Path) -> dict:
    """One group's step of five engine configs, two teacher forwards and three hand-written steps, interleaved:

        plain_fp32 / codistill_fp32                    distill.mode=none / codistill, float32
        plain_bf16                                     trainer.precision=bf16
        codistill_bf16_fp32_teachers                   trainer.precision=bf16, float32 teacher copies
        codistill_bf16                                 trainer.precision=bf16 distill.teacher_dtype=bfloat16
        teacher_fwd_fp32 / _bf16                       TeacherCopies.predict of the codistill_fp32 / _bf16 worker
        hand_plain_fp32 / hand_plain_bf16 / hand_codistill_bf16     HandStep (the hardware's reference)
    """
    G, batch = 2, a.hw_batch
    common = base_overrides(a, G, a.features, hidden, batch) + ["topology.mode=simulated"]
    topo = simulated(common)
    configs = {
        "plain_fp32": ["distill=none"], "codistill_fp32": [], "plain_bf16": ["distill=none", BF16[0]],
        "codistill_bf16_fp32_teachers": [BF16[0]], "codistill_bf16": BF16,
    }
    trainers = {k: build(topo, [*common, *o], tmp / f"{k}-{hidden}") for k, o in configs.items()}
    for k, t in trainers.items():
        if k.startswith("codistill"):
            t._exchange(0)  # load the teacher copies
    g = topo.local_groups[0]
    w = {k: t.workers[g] for k, t in trainers.items()}
    wc = w["codistill_bf16"]
    x, y = fetch(wc.batches.data.dataset, wc.batches.stream.batch_indices(0, wc.local_replicas[0]).tolist(), wc.batches.data.collate)
    steps = {k: TimedSteps(worker, 1) for k, worker in w.items()}
    variants: dict[str, Callable[[int], object]] = {
        **steps,
        "teacher_fwd_fp32": lambda i: w["codistill_fp32"].teachers.predict(x),
        "teacher_fwd_bf16": lambda i: wc.teachers.predict(x),
        "hand_plain_fp32": HandStep(w["plain_fp32"], x, y, "fp32"),
        "hand_plain_bf16": HandStep(w["plain_bf16"], x, y, "bf16"),
        "hand_codistill_bf16": HandStep(wc, x, y, "bf16", next(iter(wc.teachers.models.values()))),
    }
    cpu: dict[str, float] = {}
    wall = interleaved(variants, a.hw_repeats, max(2, a.warmup // 2), lambda: None, cpu)
    params = sum(p.numel() for p in wc.model.parameters())
    for t in trainers.values():
        t.close()
    target = BF16_TARGETS.get(hidden)
    return {
        "model": f"MLP {a.features}-{hidden.replace(',', '-')}-10", "hidden": hidden, "batch": batch, "groups": G,
        "parameters": params, "target": target,
        "data_wait_ms": {k: 1e3 * statistics.median(s.waits) for k, s in steps.items()},
        "cpu": precision_summary(cpu, G, target), "wall": precision_summary(wall, G, target),
    }


def precision_summary(med: dict[str, float], G: int, target: Optional[float]) -> dict:
    """The precision rows' ratios from one clock's medians."""
    t32 = med["plain_fp32"]
    ratio = med["codistill_bf16"] / t32
    return {
        "median_ms": {k: v * 1e3 for k, v in med.items()},
        "x_plain_fp32": {k: v / t32 for k, v in med.items() if not k.startswith(("hand", "teacher"))},
        "hand_x_hand_plain_fp32": {k: v / med["hand_plain_fp32"] for k, v in med.items() if k.startswith("hand")},
        "bf16_codistill_x_plain_fp32": ratio, "met": None if target is None else ratio <= target,
        "hand_bf16_codistill_x_plain_fp32": med["hand_codistill_bf16"] / med["hand_plain_fp32"],
        "engine_over_hand_bf16_codistill": med["codistill_bf16"] / med["hand_codistill_bf16"],
        "engine_over_hand_plain_fp32": t32 / med["hand_plain_fp32"],
        "fp32_bound": ratio_to_bound({"plain_step": t32, "teacher_forwards": med["teacher_fwd_fp32"],
                                      "codistill_step": med["codistill_fp32"]}, G, 1),
        "bf16_bound": ratio_to_bound({"plain_step": med["plain_bf16"], "teacher_forwards": med["teacher_fwd_bf16"],
                                      "codistill_step": med["codistill_bf16"]}, G, 1),
    }


def dynamo_graphs() -> int:
    """Graphs torch.compile has compiled so far in this process (a recompile adds one)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def compile_rows(a: argparse.Namespace, tmp: Path) -> dict:
    """Eager against trainer.compile=true, for the codistill step in fp32 and in bf16 (bf16 teacher copies).

    Compile time: the first --compile-steps steps of a compiled trainer beyond as many steady compiled steps (the
    inductor cache is a fresh directory, so every graph compiles cold; loading inductor itself, once per process,
    is timed apart). Then an exchange and a step check that reloading the teacher copies does not recompile."""
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(tmp / "inductor-cache")  # cold: no graphs from an earlier run
    t0 = time.perf_counter()
    torch.compile(lambda v: torch.relu(v) * 2)(torch.ones(8))
    first_compile = time.perf_counter() - t0
    G, hidden = 2, a.compile_hidden
    common = base_overrides(a, G, a.features, hidden, a.hw_batch) + ["topology.mode=simulated"]
    topo = simulated(common)
    configs = {"fp32": [], "bf16": BF16}
    g = topo.local_groups[0]
    trainers, steps, first_steps, graphs = {}, {}, {}, {}
    for prec, o in configs.items():
        for kind, extra in (("eager", []), ("compiled", ["trainer.compile=true"])):
            k = f"{kind}_{prec}"
            trainers[k] = build(topo, [*common, *o, *extra], tmp / f"compile-{k}")
            trainers[k]._exchange(0)
            steps[k] = TimedSteps(trainers[k].workers[g], 1)
            before = dynamo_graphs()
            times = []
            for i in range(a.compile_steps):
                t0 = time.perf_counter()
                steps[k](i)
                times.append(time.perf_counter() - t0)
            first_steps[k], graphs[k] = times, dynamo_graphs() - before
    cpu: dict[str, float] = {}
    med = interleaved(dict(steps), a.hw_repeats, 2, lambda: None, cpu)
    recompiles = {}
    for prec in configs:  # an exchange reloads the copies in place: the compiled forwards must not recompile
        k = f"compiled_{prec}"
        before = dynamo_graphs()
        trainers[k]._exchange(steps[k].step)
        steps[k](0)
        recompiles[prec] = dynamo_graphs() - before
    for t in trainers.values():
        t.close()
    rows = {}
    for prec in configs:
        c, e = f"compiled_{prec}", f"eager_{prec}"
        rows[prec] = {
            "eager_ms": med[e] * 1e3, "compiled_ms": med[c] * 1e3, "speedup": med[e] / med[c],
            "cpu_eager_ms": cpu[e] * 1e3, "cpu_compiled_ms": cpu[c] * 1e3, "cpu_speedup": cpu[e] / cpu[c],
            "cpu_x_eager_fp32": cpu[c] / cpu["eager_fp32"],
            "compile_s": sum(first_steps[c]) - len(first_steps[c]) * med[c],
            "first_steps_s": first_steps[c], "graphs_compiled": graphs[c], "recompiles_after_exchange": recompiles[prec],
            "x_eager_fp32": med[c] / med["eager_fp32"],
        }
    return {"model": f"MLP {a.features}-{hidden.replace(',', '-')}-10", "batch": a.hw_batch, "groups": G,
            "inductor_first_use_s": first_compile, "rows": rows}


def loop_vs_vectorized(a: argparse.Namespace, tmp: Path, groups: int, features: int, hidden: str, batch: int) -> dict:
    """The per-group loop and topology.vectorize=true, each in fp32 and in bf16 (bf16 teacher copies), interleaved."""
    common = base_overrides(a, groups, features, hidden, batch) + ["topology.mode=simulated"]
    topo = simulated(common)
    variants: dict[str, Callable[[int], object]] = {}
    trainers = []
    for prec, o in (("fp32", []), ("bf16", BF16)):
        loop = build(topo, [*common, *o], tmp / f"vloop-{prec}-{hidden}")
        vec = build(topo, [*common, *o, "topology.vectorize=true"], tmp / f"vvec-{prec}-{hidden}")
        if vec.vectorized is None:
            raise SystemExit("bench: the vectorised trainer fell back to the loop (see the log above)")
        loop._exchange(0)
        vec._exchange(0)
        trainers += [loop, vec]
        variants[f"loop_{prec}"] = lambda i, ws=list(loop.workers.values()): [w.train_step(i) for w in ws]
        variants[f"vectorized_{prec}"] = vec.vectorized.train_step
    cpu: dict[str, float] = {}
    wall = interleaved(variants, a.repeats, a.warmup, lambda: None, cpu)
    for t in trainers:
        t.close()
    clocks = {
        name: {"median_ms": {k: v * 1e3 for k, v in med.items()},
               "x_loop_fp32": {k: v / med["loop_fp32"] for k, v in med.items()},
               "speedup_fp32": med["loop_fp32"] / med["vectorized_fp32"],
               "speedup_bf16": med["loop_bf16"] / med["vectorized_bf16"]}
        for name, med in (("cpu", cpu), ("wall", wall))
    }
    return {"groups": groups, "model": f"MLP {features}-{hidden.replace(',', '-')}-10", "batch": batch, **clocks}


def hardware_benchmark(a: argparse.Namespace, tmp: Path) -> dict:
    res: dict = {"cpu": cpu_info(), "matmul": matmul_chain(a.hw_repeats, 1),
                 "precision": [precision_rows(a, h, tmp) for h in a.hw_hidden]}
    if a.compile_hidden:
        res["compile"] = compile_rows(a, tmp)
    res["vectorized"] = []
    if a.vec_groups > 1:
        res["vectorized"].append(loop_vs_vectorized(a, tmp, a.vec_groups, a.vec_features, a.vec_hidden, a.vec_batch))
    if a.hw_hidden:
        res["vectorized"].append(loop_vs_vectorized(a, tmp, 2, a.features, a.hw_hidden[-1], a.hw_batch))
    return res


def cpu_line(cpu: dict) -> str:
    units = ", ".join(cpu["bf16_units"]) or "none"
    line = f"CPU: {cpu['model']}; torch CPU capability **{cpu['capability']}**; bf16 units: **{units}**"
    if cpu.get("onednn_max_cpu_isa"):
        line += f" (ONEDNN_MAX_CPU_ISA={cpu['onednn_max_cpu_isa']})"
    if not cpu["bf16_units"]:
        line += (" -- this CPU has no bf16 dot-product units (or is not x86): bf16 matmuls are emulated, so the bf16 "
                 "rows run SLOWER than fp32 here")
    elif not cpu["amx"]:
        line += " (no AMX: bf16 matmuls are about 2x fp32's speed, not the 10x+ of AMX tiles)"
    return line


def hardware_markdown(hw: dict, threads: int) -> list[str]:
    m = hw["matmul"]
    lines = [
        "", f"## hardware rows ({threads} thread(s)); medians of CPU time (this process's, the work done) and of "
        "wall time (with the waits for a core of a shared machine)", "", cpu_line(hw["cpu"]), "",
        f"- matmul chain {m['shape']}: CPU fp32 {m['cpu_ms']['fp32']:.1f} ms, bf16 {m['cpu_ms']['bf16']:.1f} ms: "
        f"bf16 / fp32 = **{m['cpu_bf16_over_fp32']:.3f}** (wall {m['bf16_over_fp32']:.3f})",
    ]
    for r in hw["precision"]:
        c, w = r["cpu"], r["wall"]
        lines += [
            "", f"### precision: {r['model']} ({r['parameters']:,} parameters), batch {r['batch']}, simulated G = "
            f"{r['groups']}, one group's step", "",
            "| step | CPU ms | CPU x plain fp32 | wall ms | wall x plain fp32 | data wait ms (wall) |",
            "|---|---:|---:|---:|---:|---:|",
            *(f"| {k.replace('_', ' ')} | {c['median_ms'][k]:.1f} | {c['x_plain_fp32'][k]:.3f} | {w['median_ms'][k]:.1f} "
              f"| {w['x_plain_fp32'][k]:.3f} | {r['data_wait_ms'][k]:.2f} |" for k in c["x_plain_fp32"]),
            *(f"| {k.replace('_', ' ')} | {c['median_ms'][k]:.1f} | | {w['median_ms'][k]:.1f} | | |"
              for k in c["median_ms"] if k.startswith("teacher")),
            *(f"| {k.replace('_', ' ')} | {c['median_ms'][k]:.1f} | {c['hand_x_hand_plain_fp32'][k]:.3f} (x hand plain "
              f"fp32) | {w['median_ms'][k]:.1f} | {w['hand_x_hand_plain_fp32'][k]:.3f} | |"
              for k in c["hand_x_hand_plain_fp32"]),
            "",
        ]
        t = r["target"]
        for clock, v in (("CPU", c), ("wall", w)):
            verdict = "" if t is None else f" (target <= {t}: **{'met' if v['met'] else 'MISSED'}**)"
            lines.append(
                f"- {clock}: codistill bf16 (bf16 copies) / plain fp32 = **{v['bf16_codistill_x_plain_fp32']:.3f}**"
                f"{verdict}; hand-written loop {v['hand_bf16_codistill_x_plain_fp32']:.3f}; engine / hand: bf16 "
                f"codistill {v['engine_over_hand_bf16_codistill']:.3f}, fp32 plain {v['engine_over_hand_plain_fp32']:.3f}; "
                f"fp32 ratio / B **{v['fp32_bound']['ratio_over_bound']:.3f}** (ratio {v['fp32_bound']['ratio_vs_ddp']:.3f}, "
                f"B {v['fp32_bound']['bound']:.3f}; target <= 1.05); bf16 ratio / B {v['bf16_bound']['ratio_over_bound']:.3f} "
                f"(against plain bf16: ratio {v['bf16_bound']['ratio_vs_ddp']:.3f}, B {v['bf16_bound']['bound']:.3f})")
    if "compile" in hw:
        c = hw["compile"]
        lines += [
            "", f"### trainer.compile=true, codistill step, {c['model']}, batch {c['batch']}, G = {c['groups']} "
            f"(loading inductor, once per process: {c['inductor_first_use_s']:.1f} s wall)", "",
            "| precision | eager CPU ms | compiled CPU ms | speed-up CPU | speed-up wall | compile s (wall) | graphs "
            "| recompiles after an exchange | compiled x eager fp32 (CPU) |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
            *(f"| {p} | {v['cpu_eager_ms']:.1f} | {v['cpu_compiled_ms']:.1f} | {v['cpu_speedup']:.2f}x | {v['speedup']:.2f}x "
              f"| {v['compile_s']:.1f} | {v['graphs_compiled']} | {v['recompiles_after_exchange']} "
              f"| {v['cpu_x_eager_fp32']:.3f} |" for p, v in c["rows"].items()),
        ]
    for v in hw["vectorized"]:
        c, w = v["cpu"], v["wall"]
        lines += [
            "", f"### vectorised vs loop, {v['groups']} groups, {v['model']}, batch {v['batch']} (all groups' step)", "",
            "| variant | CPU ms | CPU x loop fp32 | wall ms | wall x loop fp32 |", "|---|---:|---:|---:|---:|",
            *(f"| {k.replace('_', ' ')} | {c['median_ms'][k]:.2f} | {c['x_loop_fp32'][k]:.3f} | {w['median_ms'][k]:.2f} "
              f"| {w['x_loop_fp32'][k]:.3f} |" for k in c["median_ms"]), "",
            f"- vectorised speed-up (CPU): fp32 {c['speedup_fp32']:.2f}x, bf16 {c['speedup_bf16']:.2f}x; wall: fp32 "
            f"{w['speedup_fp32']:.2f}x, bf16 {w['speedup_bf16']:.2f}x",
        ]
    return lines


# --- memory : what a process holds per G, expected and measured ------------------------------

MB = 1e6


def rss_kb(field: str) -> int:
    """VmHWM (peak) or VmRSS (now) of this process in kB, from /proc (Linux); ru_maxrss elsewhere."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def reset_peak() -> bool:
    """Reset this process's peak RSS (Linux >= 4.0: /proc/self/clear_refs = 5), to read the peak of each phase."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def tensor_bytes(tensors: Any) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def memory_child(a: argparse.Namespace, spec: dict) -> dict:
    """One simulated run of G groups: the peak RSS of each phase and the bytes its tensors hold."""
    torch.set_num_threads(1)
    G = spec["groups"]
    common = base_overrides(a, G, a.features, a.mem_hidden, a.mem_batch) + [
        "topology.mode=simulated", f"distill.teacher_dtype={spec['teacher_dtype']}", f"optim={spec['optim']}"]
    resettable = reset_peak()
    baseline = rss_kb("VmHWM")  # python, torch and codistill imported
    topo = simulated(common)
    with tempfile.TemporaryDirectory(prefix="codistill-mem-") as d:
        phases = {}

        def phase(name: str, run: Callable[[], object]) -> None:
            reset_peak()
            run()
            phases[name] = {"peak_mb": rss_kb("VmHWM") * 1e3 / MB, "now_mb": rss_kb("VmRSS") * 1e3 / MB}

        holder: dict = {}
        phase("build", lambda: holder.setdefault("t", build(topo, common, Path(d))))
        trainer: Trainer = holder["t"]
        workers = list(trainer.workers.values())
        phase("steps_without_copies", lambda: [w.train_step(s) for s in range(2) for w in workers])
        phase("exchange", lambda: trainer._exchange(2))
        phase("steps_distilling", lambda: [w.train_step(s) for s in range(2, 4) for w in workers])
        pool = workers[0].teachers.pool
        held = {
            "parameters": tensor_bytes(p for w in workers for p in w.model.parameters()),
            "optimizer_state": tensor_bytes(
                t for w in workers for st in w.optimizer.state.values() for t in st.values()
                if isinstance(t, torch.Tensor) and t.dim() > 0),
            "teacher_copies": tensor_bytes(p for m in pool.models.values() for p in m.parameters()),
            "teacher_copies_count": len(pool.models),
            "data": tensor_bytes(v for ds in (trainer.data.dataset, trainer.data.eval_dataset)
                                 for v in vars(ds).values() if isinstance(v, torch.Tensor)),
        }
        params = sum(p.numel() for p in workers[0].model.parameters())
        trainer.close()
    return {**spec, "parameters": params, "baseline_mb": baseline * 1e3 / MB, "phases": phases, "held_bytes": held,
            "peak_resettable": resettable,
            "peak_mb": max(p["peak_mb"] for p in phases.values()) if resettable else rss_kb("VmHWM") * 1e3 / MB}


def expected_memory(params: int, groups: int, teacher_bytes: int, optim: str) -> dict:
    """Bytes the tensors of the training state take (float32 master weights), per rank and per process.

    torchrun (R = 1): one student, its gradient and optimizer state, G - 1 teacher copies. Simulated: G students and
    their optimizer states, the gradient of one group at a time (the loop frees each group's gradient after its
    step: zero_grad(set_to_none=True); the vectorised mode holds all G), G shared teacher copies (G x (G - 1)
    before the sharing)."""
    p4 = 4 * params
    opt = {"sgd": p4, "adam": 2 * p4}[optim]  # SGD momentum buffer; Adam exp_avg + exp_avg_sq
    copy_ = teacher_bytes * params
    return {
        "parameters": p4, "gradients": p4, "optimizer_state": opt, "teacher_copy": copy_,
        "per_rank_torchrun": p4 + p4 + opt + (groups - 1) * copy_,
        "per_process_simulated": groups * (p4 + opt) + p4 + groups * copy_,
        "per_process_simulated_unshared": groups * (p4 + opt) + p4 + groups * (groups - 1) * copy_,
        "exchange_transient_simulated": 2 * groups * copy_,  # flat_state of every group + LocalExchange's clones
        # the peak: students, optimizer states and copies, plus the larger of one group's gradient (during its step)
        # and the exchange's flat buffers (no gradient is held between steps)
        "peak_simulated": groups * (p4 + opt) + groups * copy_ + max(p4, 2 * groups * copy_),
    }


def memory_benchmark(a: argparse.Namespace) -> dict:
    groups = [int(g) for g in a.mem_groups.split(",") if g.strip()]
    specs = [{"groups": G, "teacher_dtype": dt, "optim": "sgd"} for G in groups for dt in ("float32", "bfloat16")]
    specs += [{"groups": G, "teacher_dtype": "float32", "optim": "adam"} for G in groups]
    runs = []
    for spec in specs:
        argv = [sys.executable, str(Path(__file__).resolve()), "--memory-child", json.dumps(spec),
                "--mem-hidden", a.mem_hidden, "--mem-batch", str(a.mem_batch), "--features", str(a.features)]
        out = subprocess.run(argv, capture_output=True, text=True, check=False)
        if out.returncode != 0:
            raise SystemExit(f"bench: the memory run {spec} failed:\n{out.stderr[-2000:]}")
        run = json.loads(out.stdout.strip().splitlines()[-1])
        tb = 2 if spec["teacher_dtype"] == "bfloat16" else 4
        run["expected_bytes"] = expected_memory(run["parameters"], spec["groups"], tb, spec["optim"])
        runs.append(run)
    return {"model": f"MLP {a.features}-{a.mem_hidden.replace(',', '-')}-10", "batch": a.mem_batch, "runs": runs}


def memory_markdown(mem: dict) -> list[str]:
    runs = mem["runs"]
    P = runs[0]["parameters"]
    lines = [
        "", f"## memory: {mem['model']} ({P:,} parameters), simulated mode, batch {mem['batch']}, MB = 10^6 bytes", "",
        "Expected bytes of the training state (float32 weights, gradients and optimizer state):", "",
        "| G | optimizer | teacher copies | per rank (torchrun, R = 1) | per process (simulated, shared copies) "
        "| before the sharing (G x (G - 1) copies) | exchange transient (simulated) | expected peak (simulated) |",
        "|---:|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in runs:
        e = r["expected_bytes"]
        lines.append(
            f"| {r['groups']} | {r['optim']} | {r['teacher_dtype']} | {e['per_rank_torchrun'] / MB:.0f} "
            f"| {e['per_process_simulated'] / MB:.0f} | {e['per_process_simulated_unshared'] / MB:.0f} "
            f"| {e['exchange_transient_simulated'] / MB:.0f} | {e['peak_simulated'] / MB:.0f} |")
    lines += [
        "", "Measured peak RSS of a process (a subprocess per row: build, 2 steps, an exchange, 2 distilling steps; "
        "the peak of each phase), MB. 'growth' compares with the smallest G of the same optimizer and copy dtype:", "",
        "| G | optimizer | teacher copies | copies held | peak RSS | growth measured | growth expected | build "
        "| steps | exchange | distilling steps |",
        "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    first: dict = {}
    for r in runs:
        ph, h = r["phases"], r["held_bytes"]
        ref = first.setdefault((r["optim"], r["teacher_dtype"]), r)
        growth = r["peak_mb"] - ref["peak_mb"]
        expected = (r["expected_bytes"]["peak_simulated"] - ref["expected_bytes"]["peak_simulated"]) / MB
        lines.append(
            f"| {r['groups']} | {r['optim']} | {r['teacher_dtype']} | {h['teacher_copies_count']} | {r['peak_mb']:.0f} "
            f"| {growth:+.0f} | {expected:+.0f} "
            + " ".join(f"| {ph[k]['peak_mb']:.0f}" for k in ("build", "steps_without_copies", "exchange", "steps_distilling"))
            + " |")
    return lines


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
        f"Machine: {res['machine']['processor']}, {res['machine']['cpus']} CPUs, torch {res['machine']['torch']}, "
        f"CPU capability {res['machine']['cpu_capability']}",
        "",
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
    if "hardware" in res:
        lines += hardware_markdown(res["hardware"], res["machine"]["threads"])
    if "memory" in res:
        lines += memory_markdown(res["memory"])
    return "\n".join(lines)


def main(argv: Sequence[str]) -> None:
    if "--vocab" in argv:  # the output layer + loss at large vocabularies: scripts/bench_vocab.py
        import bench_vocab

        bench_vocab.main([arg for arg in argv if arg != "--vocab"])
        return
    a = parse_args(argv)
    if a.memory_child is not None:  # one memory measurement, in a process of its own
        print(json.dumps(memory_child(a, json.loads(a.memory_child))))
        return
    if a.threads is not None:
        torch.set_num_threads(a.threads)
    if a.link_mbps is not None:
        import bench_link  # scripts/ is this script's directory

        with tempfile.TemporaryDirectory(prefix="codistill-bench-") as d:
            res = bench_link.link_benchmark(a, build, simulated, Path(d))
        res["command"] = " ".join(["python scripts/bench.py", *argv])
        print(f"{res['command']}\n\n{bench_link.markdown(res)}")
        if a.json is not None:
            a.json.write_text(json.dumps(res, indent=2) + "\n")
        return
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
                    "world_size": layout.world_size, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
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
            if topo.simulated and a.hardware:
                res["hardware"] = hardware_benchmark(a, tmp)
            if topo.is_main and a.memory:
                res["memory"] = memory_benchmark(a)
        clean = True
    finally:
        topo.shutdown(clean)
    if topo.is_main:
        print(markdown(res))
        if a.json is not None:
            a.json.write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
