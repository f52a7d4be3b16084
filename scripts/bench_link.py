"""Slow-link benchmark (scripts/bench.py --link-mbps M): step time when the groups exchange over a slow link.

    python scripts/bench.py --link-mbps 400 --exchange-every 50 --threads 2     # G = 2, MLP 3200-(3200 x 5)-10

One simulated-mode Trainer (G groups of an MLP, >= 50 M parameters by default) trains with teacher copies loaded;
each variant builds its own exchange schedule (distill.snapshot_codec, distill.fragments, distill.exchange_delay)
in front of a SimulatedLink (codistill/distributed/exchange/link.py: a transfer completes bytes / bandwidth +
latency after it is launched, queued behind earlier transfers). Each variant times one period of K steps that
starts at a multiple of K, so every fragment is launched once and, as tau < K / F, lands within the window.
Variants run one after another on the same models, each right after a "no exchange" window of its own (the same
loop with nothing launched): a VM's speed drifts by 10-30 % over the minutes the whole run takes, far more than the
2 % an overlapped exchange may cost, so every variant is compared with the baseline measured next to it.

Columns: bytes one group receives at one launch (the largest: peak) and per step, over the timed window; the step
time (the mean over the window: what a run pays, exchanges included) and its ratio to the no-exchange window just
before it; the CPU time per step of this process (encoding, decoding and loading included, the link's sleep not: on
a shared machine the wall time also counts the waits for a core) and its ratio likewise; the time the steps spent
waiting for the link in the window. The "no exchange" row is the mean of all baseline windows (its ratios: their
spread, the slowest over the fastest). The header gives the link time of a float32 snapshot in steps.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from codistill.compose import compose_config
from codistill.distributed.exchange import LocalExchange
from codistill.distributed.exchange.link import SimulatedLink
from codistill.engine.exchanging import ExchangeRunner


def variants(k: int) -> list[tuple[str, dict]]:
    """(name, distill overrides) of the variants with exchanges."""
    tau = k // 2
    return [
        ("blocking, float32", {"snapshot_codec": "none"}),
        ("blocking, bf16", {"snapshot_codec": "bf16"}),
        ("blocking, int8", {"snapshot_codec": "int8"}),
        ("blocking, fp8", {"snapshot_codec": "fp8"}),
        (f"tau={tau}, float32", {"exchange_delay": tau}),
        (f"tau={tau}, int8", {"exchange_delay": tau, "snapshot_codec": "int8"}),
        ("fragments=5, blocking, float32", {"fragments": 5}),
        (f"fragments=5, tau={k // 5 - 1}, float32", {"fragments": 5, "exchange_delay": k // 5 - 1}),
    ]


def run_variant(trainer: Any, distill: Any, settings: dict, a: Any, start: int) -> dict:
    """`distill`: the run's distill section, changed by `settings` for this variant."""
    k = a.exchange_every
    d = distill.copy()
    OmegaConf.set_struct(d, False)
    for key, value in settings.items():
        d[key] = value
    link = None

    def connect(states: Any) -> SimulatedLink:
        nonlocal link
        link = SimulatedLink(LocalExchange(), a.link_mbps, a.link_latency_ms / 1000)
        return link

    runner = ExchangeRunner(d, trainer.topo, trainer.schedule, trainer.workers, None, False, connect)
    assert link is not None
    exchanging = bool(settings)

    def steps(first: int, count: int) -> tuple[float, float]:
        t0, c0 = time.perf_counter(), time.process_time()
        for s in range(first, first + count):
            if exchanging:
                runner.before_step(s)
            for w in trainer.workers.values():
                w.train_step(s)
        return time.perf_counter() - t0, time.process_time() - c0

    # start is a multiple of K: every launch of the window also lands in it (tau < K / F)
    elapsed, cpu = steps(start, k)
    assert not runner.flights
    return {"step_s": elapsed / k, "cpu_s": cpu / k, "stalled_s_per_period": link.stalled_s,
            "peak_bytes": link.peak_bytes, "bytes_per_step": link.bytes // k}


def link_benchmark(a: Any, build: Any, simulated: Any, tmp: Path) -> dict:
    """`build(topo, overrides, run_dir)` and `simulated(overrides)`: bench.py's Trainer and topology makers."""
    k = a.exchange_every
    overrides = [
        "topology.mode=simulated", "data=synthetic", f"data.train.features={a.link_features}",
        f"model.hidden=[{a.link_hidden}]", f"trainer.batch_size={a.link_batch}", f"topology.groups={a.groups}",
        "topology.device=cpu", "trainer.max_steps=1000000", "trainer.eval_every=0", "logger.plots=false",
        "distill.burn_in_steps=0", f"distill.exchange_every={k}",
    ]
    trainer = build(simulated(overrides), overrides, tmp / "link")
    distill = compose_config(overrides, run_id="bench").distill
    trainer.exchange.exchange_now(0)  # teacher copies loaded, as after burn-in
    for s in range(k - 3, k):  # warm-up; the loaders then go on with the variants' steps K, K + 1, ...
        for w in trainer.workers.values():
            w.train_step(s)
    w = next(iter(trainer.workers.values()))
    rows, bases = [], []
    for i, (name, settings) in enumerate(variants(k)):
        base = run_variant(trainer, distill, {}, a, (2 * i + 1) * k)
        r = run_variant(trainer, distill, settings, a, (2 * i + 2) * k)
        bases.append(base)
        rows.append({"name": name, **r, "step_ratio": r["step_s"] / base["step_s"],
                     "cpu_ratio": r["cpu_s"] / base["cpu_s"]})
        print(f"{name}: {1000 * r['step_s']:.1f} ms/step ({r['step_s'] / base['step_s']:.3f}x the "
              f"{1000 * base['step_s']:.1f} ms of no exchange just before)", file=sys.stderr, flush=True)
    mean = {key: sum(b[key] for b in bases) / len(bases) for key in bases[0]}
    spread = {f"{key[:-2]}_ratio": max(b[key] for b in bases) / min(b[key] for b in bases)
              for key in ("step_s", "cpu_s")}
    rows.insert(0, {"name": "no exchange (mean of the baseline windows)", **mean, **spread})
    params = sum(p.numel() for p in w.model.parameters())
    full = 4 * w.flattener.numel * (a.groups - 1)
    trainer.close()
    return {
        "link_mbps": a.link_mbps, "latency_ms": a.link_latency_ms, "groups": a.groups, "k": k,
        "model": f"MLP {a.link_features}-{a.link_hidden.replace(',', '-')}-10", "params": params, "batch": a.link_batch,
        "threads": torch.get_num_threads(),
        "snapshot_steps": full * 8 / (a.link_mbps * 1e6) / mean["step_s"],
        "rows": rows,
    }


def markdown(res: dict) -> str:
    lines = [f"Slow link: {res['link_mbps']:g} Mbit/s + {res['latency_ms']:g} ms, G = {res['groups']}, "
             f"K = {res['k']}, {res['model']} ({res['params'] / 1e6:.1f} M parameters), batch {res['batch']}, "
             f"{res['threads']} threads; a float32 snapshot takes {res['snapshot_steps']:.1f} steps on the link",
             "", "| exchange | peak bytes / exchange | bytes / step | step (ms) | vs no exchange just before | "
             "CPU (ms) / step | vs no exchange just before | waited for the link per K steps (s) |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in res["rows"]:
        lines.append(f"| {r['name']} | {r['peak_bytes']:,.0f} | {r['bytes_per_step']:,.0f} | "
                     f"{1000 * r['step_s']:.0f} | {r['step_ratio']:.3f} | {1000 * r['cpu_s']:.0f} | "
                     f"{r['cpu_ratio']:.3f} | {r['stalled_s_per_period']:.2f} |")
    lines += ["", "The no-exchange row's ratios: the spread of the baseline windows over the run (slowest / fastest)."]
    return "\n".join(lines)
