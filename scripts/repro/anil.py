"""Anil et al. 2018 on Fashion-MNIST: does 2-way codistillation reach the independent baseline's quality in fewer steps?

    python scripts/repro/anil_fmnist.py                 # 3 seeds x 7 variants x 3000 steps (~25 min on 2 CPU cores)
    python scripts/repro/anil_fmnist.py --smoke         # seconds; checks the script, not the claim

Variants (experiment=anil_fmnist, 2 groups each): the independent baseline (distill.mode=none), codistillation on
shared data at K = 1, 10, 50, 250, and on disjoint halves of the data (the paper's main setting) at K = 50.
"Steps to baseline" is the first evaluated step at which the groups' mean test loss is <= the baseline's final mean
test loss (paper, on Common Crawl LM: about 2x fewer steps).
"""

from __future__ import annotations

import statistics

from _common import first_step_reaching, markdown_table, mean_std, parser, plot_curves, report, run_variant, smoke_overrides

VARIANTS = {
    "baseline (independent)": ["distill=none"],
    "codistill K=50 shared": ["distill.exchange_every=50"],
    "codistill K=50 disjoint": ["distill.exchange_every=50", "data.partition=disjoint"],
    "codistill K=1 shared": ["distill.exchange_every=1"],
    "codistill K=10 shared": ["distill.exchange_every=10"],
    "codistill K=250 shared": ["distill.exchange_every=250"],
}


def main() -> None:
    args = parser(__doc__.splitlines()[0], steps=3000).parse_args()
    smoke = smoke_overrides(args)
    eval_every = max(1, args.steps // 12)
    burn_in = max(1, args.steps // 10)
    runs = {
        name: run_variant(
            args.out, name.replace(" ", "_").replace("(", "").replace(")", ""),
            ["experiment=anil_fmnist", f"distill.burn_in_steps={burn_in}", *overrides, *smoke],
            args.seeds, args.steps, eval_every,
        )
        for name, overrides in VARIANTS.items()
    }
    baseline = runs["baseline (independent)"]
    target = statistics.mean(r.final("eval/loss") for r in baseline)
    rows = []
    for name, rs in runs.items():
        reached = [first_step_reaching(r.group_curve("eval/loss"), target) for r in rs]
        speedups = [args.steps / s for s in reached if s]
        rows.append([
            name,
            mean_std([r.final("eval/loss") for r in rs]),
            mean_std([100 * r.final("eval/acc") for r in rs]),
            mean_std([100 * r.final("ensemble/acc") for r in rs]),
            mean_std([s for s in reached if s]) + f" ({sum(1 for s in reached if s)}/{len(rs)} reached)",
            mean_std(speedups) if speedups else "never",
        ])
    table = markdown_table(
        ["variant", "test loss", "test acc %", "2-group ensemble acc %", "steps to baseline's final loss",
         "speed-up vs baseline"],
        rows,
    )
    plot_curves(args.out / "eval_loss.png", runs, "eval/loss", "test loss (mean of the 2 groups)")
    plot_curves(args.out / "eval_acc.png", runs, "eval/acc", "test accuracy (mean of the 2 groups)")
    notes = (
        f"Baseline's final mean test loss (the target): {target:.4f}. Mean ± std over {args.seeds} seeds; each seed's "
        f"value is the mean of its 2 groups. {args.steps} steps, batch 128 per group, burn-in {burn_in}, cosine LR. "
        "Curves: eval_loss.png, eval_acc.png."
    )
    report(args.out, "Anil et al. 2018: codistillation vs independent training (Fashion-MNIST MLP)",
           "python scripts/repro/anil_fmnist.py" + (" --smoke" if args.smoke else ""), table, notes)


if __name__ == "__main__":
    main()
