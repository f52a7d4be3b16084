"""Longer training: does codistillation's gap to independent training change sign when the runs are 5x longer?

    python scripts/repro/long_runs.py                          # Fashion-MNIST MLP, 3 seeds x 2 variants x 10000 steps
    python scripts/repro/long_runs.py --task kjv               # KJV character LSTM, 3 seeds x 2 variants x 3000 steps
    python scripts/repro/long_runs.py --smoke [--task kjv]     # seconds; checks the script, not the claim

The experiments of anil.py (experiment=anil_fmnist: 784-256-256-10 MLP, SGD 0.05 momentum 0.9; anil_kjv: 1-layer
LSTM 128, Adam 0.003), cosine LR over the whole run, burn-in 1/10 of the run, with 2 variants of 2 groups each:
independent (distill=none) and codistillation at K = 50 on shared data. anil.py's runs are 2000 steps; here
Fashion-MNIST runs 10000 (5x, about 21 epochs) and KJV 3000 (2x: its LSTM is the slower model, so the default
trades length for 3 seeds). The gap (codistill minus independent, paired by seed) is reported at the end and plotted
at every evaluation: gap.png. The cosine schedule is stretched over each run, so a point of a long run is not a
point of a short one; compare the runs' ends. Both ask for topology.vectorize: the MLP's groups run stacked, the
LSTM's one by one (the engine falls back: torch.func's vmap has no batching rule for nn.LSTM).
Cost at the defaults (3 seeds; measured two runs at a time on a shared 2-core machine): Fashion-MNIST about 28
minutes of one CPU core, KJV about 45 (its 2 variants run ~4 steps/s). To save time lower --steps before --seeds.
"""

from __future__ import annotations

import statistics

from _common import Run, markdown_table, mean_std, parser, plot_curves, plot_xy, report, run_variant, smoke_overrides

TASKS = {  # --task -> (experiment, default steps, title)
    "fmnist": ("anil_fmnist", 10000, "Fashion-MNIST MLP"),
    "kjv": ("anil_kjv", 3000, "KJV character-level LSTM LM"),
}
VARIANTS = {"independent": ["distill=none"], "codistill K=50": ["distill.exchange_every=50"]}


def gap_curve(runs: dict[str, list[Run]], key: str) -> list[tuple[float, float]]:
    """(step, codistill minus independent) of `key`, averaged over the seeds both variants finished."""
    pairs = zip(runs["independent"], runs["codistill K=50"])
    curves = [(dict(c.group_curve(key)), dict(i.group_curve(key))) for i, c in pairs if not (i.failed or c.failed)]
    if not curves:
        return []
    steps = sorted(set.intersection(*(set(c) & set(i) for c, i in curves)))
    return [(s, statistics.mean(c[s] - i[s] for c, i in curves)) for s in steps]


def main() -> None:
    p = parser(__doc__.splitlines()[0], steps=0)
    p.add_argument("--task", default="fmnist", choices=sorted(TASKS))
    args = p.parse_args()
    experiment, default_steps, title = TASKS[args.task]
    args.steps = args.steps or default_steps
    if args.out == p.get_default("out"):
        args.out = args.out / args.task
    smoke = smoke_overrides(args, language_model=args.task == "kjv")
    eval_every = max(1, args.steps // 20)
    common = [f"experiment={experiment}", f"distill.burn_in_steps={max(1, args.steps // 10)}",
              "topology.vectorize=true", *smoke]
    runs = {name: run_variant(args.out, name.replace(" K=50", ""), [*common, *overrides], args.seeds, args.steps,
                              eval_every)
            for name, overrides in VARIANTS.items()}
    base = runs["independent"]
    rows = []
    for name, rs in runs.items():
        rows.append([
            name,
            mean_std([r.final("eval/loss") for r in rs]),
            mean_std([r.final("eval/loss") - b.final("eval/loss") for r, b in zip(rs, base)]),
            mean_std([r.best("eval/loss", lowest=True) for r in rs]),
            mean_std([100 * r.final("eval/acc") for r in rs]),
            mean_std([100 * r.final("ensemble/acc") for r in rs]),
            mean_std([100 * (1 - r.final("churn/top1")) for r in rs]),
        ])
    table = markdown_table(
        ["variant", "test loss", "vs independent (same seed)", "lowest test loss (any eval)", "test acc %",
         "2-group ensemble acc %", "agreement % (1 - churn)"],
        rows,
    )
    plot_curves(args.out / "eval_loss.png", runs, "eval/loss", "test loss (mean of the 2 groups)")
    plot_xy(args.out / "gap.png", {"codistill - independent": gap_curve(runs, "eval/loss")}, "step",
            "test loss gap (mean over seeds)")
    notes = (
        f"Mean ± std over {args.seeds} seeds; a seed's value is the mean of its 2 groups. {args.steps} steps "
        f"(experiment={experiment}), burn-in {max(1, args.steps // 10)}, test set every {eval_every} steps. "
        "Curves: eval_loss.png, gap.png (the gap at every evaluation; below 0: codistillation ahead)."
    )
    report(args.out, f"Long runs: codistillation vs independent training ({title})", table, notes)


if __name__ == "__main__":
    main()
