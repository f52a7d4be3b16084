"""Noisy labels and small data: does codistillation pay once the models can memorise their training set?

    python scripts/repro/noisy_labels.py          # noise 0, 0.2, 0.4 on a 5k subset: 3 seeds x 4 variants x 2000 steps
    python scripts/repro/noisy_labels.py --examples 10000 --steps 4000 --noise 0.4 --variants independent codistill2
    python scripts/repro/noisy_labels.py --smoke  # seconds; checks the script, not the claim

experiment=regime_noisy: a 784-256-256-10 MLP on Fashion-MNIST, SGD (lr 0.05, momentum 0.9, cosine), batch 128,
stacked groups (topology.vectorize). A setting is a label-noise rate p (data.label_noise: each training label is
replaced, with probability p, by one of the 9 other classes; the test set stays clean) and a training-set size
(data.train_examples; 0 = all 60k). Noise 0 on a subset is the plain small-data regime. In every setting:
  - independent: 2 groups, no communication (distill=none);
  - codistill2, codistill4: codistillation of 2 and 4 groups (burn-in 10 % of the run, K = 50);
  - dml: Deep Mutual Learning, a cohort of 2 (exchange every step, mean of per-peer KL terms).
Memorisation shows as test accuracy that peaks and then declines while the training loss on the noisy labels keeps
falling: the table reports the final and the best test accuracy, the ensemble of the run's groups (for independent
groups, the plain G-way ensemble), and the agreement of its groups (1 - mean pairwise top-1 churn on the test set).

A run must be long enough to memorise: 50 epochs of the subset, 2000 steps for 5k examples, 4000 for 10k (the full
set gets ~4 epochs in 2000 steps: noise without memorisation). Cost at the default (5k examples, 2000 steps, 3 seeds):
about 13 minutes of one CPU core per noise rate, half of it codistill4 (measured two runs at a time on a shared
2-core machine); the 10k subset doubles it. To save time shrink the subset (and its steps with it) or drop
codistill4 rather than seeds: fewer than 50 epochs would not memorise.
Settings and variants can be chosen on the command line, so the grid can run in chunks (in parallel, each with its
own --noise/--examples/--variants and the same --out and --steps); a chunk's table covers its own runs, and running
the whole grid's command afterwards reuses every finished run and prints the whole table. Run directories are named
by setting and steps (OUT/noise<p>_n<examples>_<steps>steps/<variant>/seed<k>). Under --smoke the subset sizes
shrink 10x to fit the synthetic data set.
"""

from __future__ import annotations

import argparse

from _common import Run, markdown_table, mean_std, parser, plot_curves, report, run_variant, smoke_overrides

EXPERIMENT = "experiment=regime_noisy"
VARIANTS = {  # short name -> (table label, overrides)
    "independent": ("independent (G=2)", ["distill=none"]),
    "codistill2": ("codistill (G=2)", []),
    "codistill4": ("codistill (G=4)", ["topology.groups=4"]),
    "dml": ("DML (G=2)", ["distill=dml"]),
}
SMOKE_SHRINK = 10  # --smoke: subset sizes / 10, to fit the synthetic training set


def setting_name(noise: float, examples: int, steps: int) -> str:
    return f"noise{noise:g}_" + (f"n{examples}" if examples else "full") + f"_{steps}steps"


def row(label: str, runs: list[Run]) -> list[str]:
    return [
        label,
        mean_std([r.final("eval/loss") for r in runs]),
        mean_std([100 * r.final("eval/acc") for r in runs]),
        mean_std([100 * r.best("eval/acc") for r in runs]),
        mean_std([100 * r.final("ensemble/acc") for r in runs]),
        mean_std([100 * (1 - r.final("churn/top1")) for r in runs]),
        mean_std([r.final("train/ce") for r in runs]),
    ]


def run_setting(args: argparse.Namespace, noise: float, examples: int, smoke: list[str]) -> dict[str, list[Run]]:
    """Every chosen variant in one setting; curves go to OUT/<setting>/."""
    out = args.out / setting_name(noise, examples, args.steps)
    subset = examples // SMOKE_SHRINK if args.smoke else examples
    data = [f"data.label_noise={noise}", f"data.train_examples={subset}"]
    runs = {
        VARIANTS[v][0]: run_variant(out, v, [EXPERIMENT, *VARIANTS[v][1], *data, *smoke], args.seeds, args.steps,
                                    args.eval_every)
        for v in args.variants
    }
    plot_curves(out / "eval_acc.png", runs, "eval/acc", f"test accuracy, noise {noise:g} (mean of the groups)")
    plot_curves(out / "eval_loss.png", runs, "eval/loss", f"test loss, noise {noise:g} (mean of the groups)")
    return runs


def main() -> None:
    p = parser(__doc__.splitlines()[0], steps=2000)
    p.add_argument("--noise", type=float, nargs="+", default=[0.0, 0.2, 0.4], help="label-noise rates")
    p.add_argument("--examples", type=int, nargs="+", default=[5000], help="training-set sizes (0 = all)")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--eval-every", type=int, default=100, help="steps between test evaluations")
    args = p.parse_args()
    smoke = smoke_overrides(args)
    if args.smoke:
        args.eval_every = 5
    rows = []
    for examples in args.examples:
        for noise in args.noise:
            for label, runs in run_setting(args, noise, examples, smoke).items():
                rows.append([f"{noise:g}", f"{examples:,}" if examples else "all", *row(label, runs)])
    table = markdown_table(
        ["label noise", "train examples", "variant", "test loss", "test acc %", "best test acc % (any eval)",
         "ensemble acc % (its G groups)", "agreement % (1 - churn)", "train CE (noisy labels)"],
        rows,
    )
    notes = (
        f"Mean ± std over {args.seeds} seeds; a seed's loss and accuracies are the mean of its groups'. {args.steps} "
        f"steps, test set evaluated every {args.eval_every}. Best test acc: the highest mean-of-groups accuracy at any "
        "evaluation (a best well above the final one is memorisation). Curves: <setting>/eval_acc.png, eval_loss.png."
    )
    report(args.out, "Codistillation with noisy labels and small training sets (Fashion-MNIST MLP)", table, notes)


if __name__ == "__main__":
    main()
