"""Anil et al. 2018, Fig. 1 at CPU scale: past the batch size where doubling it stops paying, do 2 codistilling groups?

    python scripts/repro/large_batch.py                 # sweep B = 32..1024, then the 4 variants at B = 512; 3 seeds
    python scripts/repro/large_batch.py --batch 256 --sweep 128 256 512 --target 0.4
    python scripts/repro/large_batch.py --smoke         # seconds; checks the script, not the claim

experiment=regime_large_batch: a 784-256-256-10 MLP on Fashion-MNIST, SGD with momentum 0.9 and a constant learning
rate of 0.05 at every batch size (no linear scaling: the question is what a larger batch buys at the same step
size), 1500 steps, test loss evaluated every 25 steps.
1. The sweep: one group at each batch size B; steps (and examples) to reach the target test loss (--target, default
   0.4; anil.py's 2000-step cosine runs end at 0.32). Where the steps stop halving as B doubles, a larger batch no
   longer pays (Shallue et al. 2018's diminishing returns; Anil et al.'s motivation).
2. At the batch --batch B (past that point):
   (i) one group at B;
   (ii) synchronous SGD over 2 ranks of B each: one group at 2B (in simulated mode a group of R replicas computes the
        same step as one replica at R times the batch, which is what baselines.py's DDP variant runs with
        topology.replicas=2); the sweep's runs at B and 2B are reused for (i) and (ii);
   (iii) 2 codistilling groups at B each (burn-in 10 % of the run, K = 50);
   (iv) post-local SGD, 2 groups at B each averaging every K = 50 steps (distill=average).
   Steps are each group's optimizer steps; (ii)-(iv) process 2B examples a step.
Cost at the default (3 seeds, 1500 steps): about 14 minutes of one CPU core, mostly the largest batches and the
2-group variants (measured two runs at a time on a shared 2-core machine). To save time lower --steps before
--seeds: batches of 512 and more reach the default target within ~300 steps, the smallest ones need the most.
"""

from __future__ import annotations

import statistics
from typing import Optional

from _common import (Run, first_step_reaching, markdown_table, mean_std, parser, plot_curves, plot_xy, report,
                     run_variant, smoke_overrides)

EXPERIMENT = "experiment=regime_large_batch"
SWEEP = [32, 64, 128, 256, 512, 1024]


def batch_variant(batch: int) -> tuple[str, list[str]]:
    """One group at `batch`: the sweep's run directory name and overrides."""
    return f"B{batch}", [f"trainer.batch_size={batch}"]


def two_groups(batch: int) -> dict[str, tuple[str, list[str]]]:
    """Table label -> (run directory, overrides) of the variants compared at `batch`."""
    return {
        f"(i) 1 group, B={batch}": batch_variant(batch),
        f"(ii) synchronous SGD, 2 x {batch} (1 group, B={2 * batch})": batch_variant(2 * batch),
        f"(iii) codistill, 2 groups x {batch}": (f"codistill_B{batch}", [
            f"trainer.batch_size={batch}", "distill=codistill", "topology.groups=2"]),
        f"(iv) post-local SGD, 2 groups x {batch}": (f"average_B{batch}", [
            f"trainer.batch_size={batch}", "distill=average", "topology.groups=2"]),
    }


def steps_to(runs: list[Run], target: float) -> list[Optional[int]]:
    return [first_step_reaching(r.group_curve("eval/loss"), target) for r in runs]


def reached(steps: list[Optional[int]]) -> str:
    hit = [s for s in steps if s is not None]
    return (mean_std(hit) if hit else "never") + f" ({len(hit)}/{len(steps)})"


def main() -> None:
    p = parser(__doc__.splitlines()[0], steps=1500)
    p.add_argument("--sweep", type=int, nargs="+", default=SWEEP, help="batch sizes of the sweep")
    p.add_argument("--batch", type=int, default=512, help="the per-group batch of the comparison")
    p.add_argument("--target", type=float, default=0.4, help="the test loss every run races to")
    p.add_argument("--eval-every", type=int, default=25, help="steps between test evaluations")
    args = p.parse_args()
    smoke = smoke_overrides(args)
    if args.smoke:
        args.sweep, args.batch, args.target, args.eval_every = [16, 32], 16, 2.0, 5
    run = lambda name, overrides: run_variant(  # noqa: E731
        args.out, name, [EXPERIMENT, *smoke, *overrides], args.seeds, args.steps, args.eval_every)

    sweep = {b: run(*batch_variant(b)) for b in args.sweep}
    sweep_rows, points = [], []
    for b, runs in sweep.items():
        steps = steps_to(runs, args.target)
        hit = [s for s in steps if s is not None]
        points.append((b, statistics.mean(hit) if len(hit) == len(steps) else None))
        sweep_rows.append([b, reached(steps), reached([s and s * b / 1000 for s in steps]),
                           mean_std([r.final("eval/loss") for r in runs])])
    anchor = next(((b, s) for b, s in points if s is not None), None)  # the smallest batch every seed got there at
    ideal = [(b, anchor[1] * anchor[0] / b) for b, _ in points if b >= anchor[0]] if anchor else []
    plot_xy(args.out / "steps_to_target.png", {"measured (every seed reached it)": points, "perfect scaling": ideal},
            "batch size B", f"steps to test loss {args.target:g}", log=True)

    variants = {label: run(name, overrides) for label, (name, overrides) in two_groups(args.batch).items()}
    plot_curves(args.out / "eval_loss.png", variants, "eval/loss", "test loss (mean of the groups)")
    rows = [[label, reached(steps_to(runs, args.target)), mean_std([r.final("eval/loss") for r in runs]),
             mean_std([100 * r.final("eval/acc") for r in runs])] for label, runs in variants.items()]

    tables = (
        markdown_table(["batch B", f"steps to test loss {args.target:g} (seeds reaching it)", "thousand examples to it",
                        "final test loss"], sweep_rows)
        + f"\n\nAt B = {args.batch}:\n\n"
        + markdown_table(["variant", f"steps to test loss {args.target:g} (seeds reaching it)", "final test loss",
                          "final test acc %"], rows)
    )
    notes = (
        f"Mean ± std over {args.seeds} seeds (of the seeds that reached the target); 2-group values are the mean of "
        f"the groups. {args.steps} steps, constant lr, test loss every {args.eval_every} steps. Plots: "
        "steps_to_target.png (the sweep, log-log, with perfect linear scaling from the smallest batch every seed "
        "reached the target at), eval_loss.png."
    )
    report(args.out, "Large batches: steps to a target loss, and codistillation past the useful batch size", tables,
           notes)


if __name__ == "__main__":
    main()
