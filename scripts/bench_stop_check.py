"""Cost of the preemption stop check: Trainer._stop_agreed (a one-element all-reduce over the world) against one
training step of the same Trainer, timed interleaved (the slowest rank's medians).

    torchrun --standalone --nproc-per-node=2 scripts/bench_stop_check.py                  # 2 groups x 1 replica
    torchrun --standalone --nproc-per-node=2 scripts/bench_stop_check.py --hidden 800,800 --batch 128

The fit loop runs the check every trainer.stop_check_every steps, except at log steps (where the flag rides on the
report's all-reduce): its share of the training time is about t_check / (stop_check_every x t_step).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import build, interleaved, worst_over_ranks  # noqa: E402

from codistill.compose import compose_config  # noqa: E402
from codistill.distributed.topology import Topology, resolve_layout  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--groups", type=int, default=2)
    p.add_argument("--hidden", default="32", help="MLP hidden widths (the tests' tiny model by default)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--repeats", type=int, default=300)
    p.add_argument("--warmup", type=int, default=30)
    a = p.parse_args()
    overrides = ["data=synthetic", f"model.hidden=[{a.hidden}]", f"trainer.batch_size={a.batch}",
                 f"topology.groups={a.groups}", "topology.device=cpu", "trainer.max_steps=1000000",
                 "trainer.eval_every=0", "logger.plots=false", "distill.burn_in_steps=0"]
    topo = Topology.start(resolve_layout(compose_config(overrides, run_id="bench").topology), "cpu", 60.0)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = build(topo, overrides, Path(tmp))
        variants = {
            "step": lambda i: [w.train_step(i) for w in trainer.workers.values()],
            "stop check": lambda i: trainer._stop_agreed(),
        }
        med = worst_over_ranks(interleaved(variants, a.repeats, a.warmup, topo.barrier))
        if topo.is_main:
            step, check = med["step"], med["stop check"]
            print(f"world {topo.layout.world_size}, {topo.layout.mode}: step {step * 1e3:.3f} ms, stop check "
                  f"{check * 1e3:.3f} ms; share at stop_check_every=1: {check / (step + check):.1%}, "
                  f"=10: {check / (10 * step + check):.1%}")
        trainer.close()
    topo.shutdown()


if __name__ == "__main__":
    main()
