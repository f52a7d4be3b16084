"""Baselines a user would pick instead of codistillation: final quality against bytes communicated.

    python scripts/repro/baselines.py            # Fashion-MNIST MLP, 2 seeds x 4 variants x 2000 steps
    python scripts/repro/baselines.py --smoke    # seconds; checks the script, not the claim

Same steps and data (experiment=anil_fmnist: a 784-256-256-10 MLP on Fashion-MNIST, cosine LR, burn-in 1/10 of the
steps) and the same 2 x 128 examples per step for every variant:
  - independent groups (distill=none, G = 2): no communication;
  - codistillation (G = 2, K = 50);
  - post-local SGD (distill=average, G = 2, K = 50): averaging after every step through burn-in, then every K steps;
  - plain synchronous data-parallel SGD (DDP) over the same 2 ranks: one group of R = 2 replicas, batch 2 x 128.

Bytes per step per rank are computed from tensor sizes (float32, 4 bytes a value), not measured on a wire:
  - an exchange (codistill, average): the all-gather a rank receives, (G - 1) x state bytes; summed over the
    exchanges the run's schedule makes (burn-in included) and divided by the steps. PyTorch's PeriodicModelAverager
    all-reduces instead: 2 (N - 1) / N x state bytes, the same for N = 2;
  - DDP inside a group of R replicas: a ring all-reduce of the gradients, 2 (R - 1) / R x parameter bytes every step.
"""

from __future__ import annotations

from _common import bytes_per_step, markdown_table, mean_std, parser, report, run_variant, smoke_overrides

from codistill.compose import compose_config

EXPERIMENT = "experiment=anil_fmnist"
VARIANTS = {  # short name -> (table label, overrides); DDP's batch is set in main (twice a group's)
    "independent": ("independent groups (G=2)", ["distill=none"]),
    "codistill": ("codistillation (G=2, K=50)", ["distill.exchange_every=50"]),
    "average": ("post-local SGD (G=2, K=50)", ["distill=average", "distill.exchange_every=50"]),
    "ddp": ("synchronous SGD / DDP (2 ranks)", ["distill=none", "topology.groups=1", "topology.replicas=2"]),
}


def main() -> None:
    p = parser(__doc__.splitlines()[0], steps=2000, seeds=2)
    args = p.parse_args()
    smoke = smoke_overrides(args)
    group_batch = compose_config([EXPERIMENT, *smoke]).trainer.batch_size
    eval_every = max(1, args.steps // 12)
    burn_in = max(1, args.steps // 10)
    runs = {}
    for short, (label, overrides) in VARIANTS.items():
        batch = [f"trainer.batch_size={2 * group_batch}"] if short == "ddp" else []
        runs[label] = run_variant(
            args.out, short, [EXPERIMENT, f"distill.burn_in_steps={burn_in}", *overrides, *smoke, *batch],
            args.seeds, args.steps, eval_every,
        )
    rows = []
    for label, rs in runs.items():
        per_step = bytes_per_step(rs[0], args.steps)  # the same for every seed
        rows.append([
            label,
            mean_std([r.final("eval/loss") for r in rs]),
            mean_std([100 * r.final("eval/acc") for r in rs]),
            mean_std([100 * r.final("ensemble/acc") for r in rs]),
            f"{per_step / 1e3:,.1f}",
            f"{per_step * args.steps / 1e6:,.1f}",
        ])
    table = markdown_table(
        ["variant", "test loss", "test acc %", "ensemble acc % (G=2)", "kB / step / rank", "MB / rank, whole run"],
        rows,
    )
    notes = (
        f"Mean ± std over {args.seeds} seeds; with G = 2 a seed's test loss and accuracy are the mean of its 2 groups' "
        f"(the ensemble column averages their probabilities; with G = 1 it is the one model). {args.steps} steps, "
        f"burn-in {burn_in}, every variant sees {2 * group_batch} examples a step. Bytes: float32 tensor sizes, "
        "see the script's docstring."
    )
    report(args.out, "Baselines: quality vs bytes communicated", table, notes)


if __name__ == "__main__":
    main()
