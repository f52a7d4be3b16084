"""Anil et al. 2018: does 2-way codistillation reach the independent baseline's quality in fewer steps?

    python scripts/repro/anil.py                               # Fashion-MNIST MLP, 3 seeds x 6 variants x 2000 steps
    python scripts/repro/anil.py --experiment anil_kjv --variants baseline shared disjoint   # char-level LSTM LM
    python scripts/repro/anil.py --smoke                       # seconds; checks the script, not the claim

Variants (2 groups each): the independent baseline (distill.mode=none), codistillation on shared data at
K = 50 (and 1, 10, 250: the exchange-interval sweep), and on disjoint halves of the data (the paper's main
setting) at K = 50.
"Steps to baseline" is the first evaluated step at which the groups' mean test loss is <= the baseline's final mean
test loss (paper, on Common Crawl LM: about 2x fewer steps).
"""

from __future__ import annotations

import statistics

from _common import first_step_reaching, markdown_table, mean_std, parser, plot_curves, report, run_variant, smoke_overrides

VARIANTS = {  # short name -> (table label, overrides)
    "baseline": ("baseline (independent)", ["distill=none"]),
    "shared": ("codistill K=50 shared", ["distill.exchange_every=50"]),
    "disjoint": ("codistill K=50 disjoint", ["distill.exchange_every=50", "data.partition=disjoint"]),
    "k1": ("codistill K=1 shared", ["distill.exchange_every=1"]),
    "k10": ("codistill K=10 shared", ["distill.exchange_every=10"]),
    "k250": ("codistill K=250 shared", ["distill.exchange_every=250"]),
}
TITLES = {"anil_fmnist": "Fashion-MNIST MLP", "anil_kjv": "KJV character-level LSTM LM"}


def main() -> None:
    p = parser(__doc__.splitlines()[0], steps=2000)
    p.add_argument("--experiment", default="anil_fmnist", choices=sorted(TITLES))
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    args = p.parse_args()
    if "baseline" not in args.variants:
        p.error("--variants must include baseline (the target every variant is measured against)")
    if args.out == p.get_default("out"):
        args.out = args.out.parent / args.experiment
    smoke = smoke_overrides(args, language_model=args.experiment == "anil_kjv")
    eval_every = max(1, args.steps // 12)
    burn_in = max(1, args.steps // 10)
    runs = {
        VARIANTS[v][0]: run_variant(
            args.out, v, [f"experiment={args.experiment}", f"distill.burn_in_steps={burn_in}", *VARIANTS[v][1], *smoke],
            args.seeds, args.steps, eval_every,
        )
        for v in args.variants
    }
    baseline = runs["baseline (independent)"]
    target = statistics.mean(r.final("eval/loss") for r in baseline)
    rows = []
    for name, rs in runs.items():
        reached = [first_step_reaching(r.group_curve("eval/loss"), target) for r in rs]
        speedups = [args.steps / s for s in reached if s]
        is_baseline = rs is baseline
        rows.append([
            name,
            mean_std([r.final("eval/loss") for r in rs]),
            mean_std([100 * r.final("eval/acc") for r in rs]),
            mean_std([100 * r.final("ensemble/acc") for r in rs]),
            "(the target)" if is_baseline else
            mean_std([s for s in reached if s]) + f" ({sum(1 for s in reached if s)}/{len(rs)} seeds reached it)",
            "1 (by definition)" if is_baseline else (mean_std(speedups) + "x" if speedups else "never reached"),
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
        f"value is the mean of its 2 groups. {args.steps} steps, burn-in {burn_in}, cosine LR "
        f"(experiment={args.experiment}). Curves: eval_loss.png, eval_acc.png."
    )
    report(args.out, f"Anil et al. 2018: codistillation vs independent training ({TITLES[args.experiment]})",
           table, notes)


if __name__ == "__main__":
    main()
