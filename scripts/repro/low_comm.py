"""Low-communication training at equal steps, data and compute: quality against bytes communicated.

    python scripts/repro/low_comm.py --task fmnist_noisy       # Fashion-MNIST MLP, 10k examples, 40% label noise
    python scripts/repro/low_comm.py --task kjv_transformer    # the character transformer of examples/char_transformer
    python scripts/repro/low_comm.py --smoke                   # seconds; checks the script, not the claim

Variants, each with W = 2 workers of one group batch each (AdamW inside every worker, the experiment's config):
  - synchronous SGD over all workers: one group of R = 2 replicas (DDP), batch 2 x the group batch;
  - local SGD (distill=average, G = 2): the groups' mean every H = 50 steps;
  - DiLoCo (distill=diloco, G = 2, H = 50): outer SGD with Nesterov momentum 0.9 on the mean pseudo-gradient;
  - codistillation, G = 2 and G = 4 (K = 50; G = 4 uses twice the workers, examples and compute of the others).
Local SGD and DiLoCo start from one initialisation and have no every-step warm-up (burn_in_steps=0);
codistillation keeps its burn-in (10% of the steps).

Tuning, never on the test set: every run of the experiment keeps data.validation_examples of the training split out
of training (5,000 for fmnist, with their clean labels; 1,024 windows for kjv); one seed of each grid point is scored
on them (data.eval_split=validation). Grid: DiLoCo outer lr {0.1, 0.3, 0.5, 0.7, 1.0} at momentum 0.9;
codistillation alpha {0.5, 1} at G = 2 (G = 4 reuses it). The lowest validation loss wins; the table's runs then use
the winners on every seed and are scored on the test split.

Columns: final test loss and accuracy (mean over a run's groups, then mean ± std over seeds), the first evaluated
step whose test loss reaches the synchronous run's final test loss, the ensemble's accuracy (G > 1: the groups'
mean probabilities) and bytes per step per rank from tensor sizes (see _common.bytes_per_step: the engine's outer
step all-gathers the pseudo-gradients, (G - 1) x state values per outer step; a ring all-reduce would move
2 (G - 1) / G x, the same at G = 2). `--outer-dtype bfloat16` sends DiLoCo's pseudo-gradients in half the bytes.
"""

from __future__ import annotations

import sys

from _common import (REPO, bytes_per_step, first_step_reaching, markdown_table, mean_std, parser, plot_curves, report,
                     run_variant)

TRANSFORMER = REPO / "examples" / "char_transformer"
TASKS = {  # name -> (experiment overrides, smoke overrides)
    "fmnist_noisy": (["experiment=lowcomm_fmnist_noisy"],
                     ["data=synthetic", "data.validation_examples=64", "model.hidden=[32]", "data.train_examples=1000",
                      "data.eval_examples=128",
                      "trainer.batch_size=32", "distill.exchange_every=5"]),
    "kjv_transformer": ([f"hydra.searchpath=[file://{TRANSFORMER / 'conf'}]", "experiment=lowcomm_kjv"],
                        ["data.validation_examples=64", "model.dim=16", "model.layers=1", "model.heads=2",
                         "data.eval_examples=64",
                         "trainer.batch_size=8", "distill.exchange_every=5"]),
}
DILOCO_LRS = (0.1, 0.3, 0.5, 0.7, 1.0)
ALPHAS = (0.5, 1.0)


def variants(outer_lr: float, alpha: float, outer_dtype: str, group_batch: int, H: int
             ) -> dict[str, tuple[str, list[str]]]:
    """short name -> (table label, overrides) of the compared methods; H: distill.exchange_every (K)."""
    local = ["distill.burn_in_steps=0", "topology.groups=2"]
    return {
        "sync": ("synchronous SGD (DDP, 2 ranks)", ["distill=none", "topology.groups=1", "topology.replicas=2",
                                                    f"trainer.batch_size={2 * group_batch}"]),
        "local_sgd": (f"local SGD (G=2, H={H})", ["distill=average", *local]),
        f"diloco_lr{outer_lr:g}": (f"DiLoCo (G=2, H={H}, outer lr {outer_lr})",
                   ["distill=diloco", *local, f"distill.outer_optim.lr={outer_lr}", f"distill.outer_dtype={outer_dtype}"]),
        f"codistill_g2_alpha{alpha:g}": (f"codistillation (G=2, K={H}, alpha {alpha})", ["topology.groups=2", f"distill.alpha={alpha}"]),
        f"codistill_g4_alpha{alpha:g}": (f"codistillation (G=4, K={H}, alpha {alpha})", ["topology.groups=4", f"distill.alpha={alpha}"]),
    }


def tune(args, base: list[str], eval_every: int) -> tuple[float, float, str]:
    """The grid on the validation split (seed 0): the DiLoCo outer lr and codistillation alpha of lowest loss."""
    held = [*base, "data.eval_split=validation"]
    loss = lambda short, extra: run_variant(args.out / "tune", short, [*held, *extra], 1, args.steps,  # noqa: E731
                                            eval_every)[0].final("eval/loss")
    diloco = {lr: loss(f"diloco_lr{lr}", ["distill=diloco", "distill.burn_in_steps=0", "topology.groups=2",
                                         f"distill.outer_optim.lr={lr}", f"distill.outer_dtype={args.outer_dtype}"])
              for lr in DILOCO_LRS}
    codistill = {a: loss(f"codistill_alpha{a}", ["topology.groups=2", f"distill.alpha={a}"]) for a in ALPHAS}
    rows = [[f"DiLoCo outer lr {lr}", f"{v:.4f}"] for lr, v in diloco.items()]
    rows += [[f"codistillation alpha {a}", f"{v:.4f}"] for a, v in codistill.items()]
    table = markdown_table(["grid point (seed 0)", "validation loss"], rows)
    report(args.out / "tune", f"Low communication, {args.task}: tuning on held-out training examples", table)
    return min(diloco, key=diloco.get), min(codistill, key=codistill.get), table


def main() -> None:
    p = parser(__doc__.splitlines()[0], steps=2000, seeds=2)
    p.add_argument("--task", choices=sorted(TASKS), default="fmnist_noisy")
    p.add_argument("--outer-dtype", choices=["float32", "bfloat16"], default="float32",
                   help="dtype DiLoCo's pseudo-gradients travel in")
    args = p.parse_args()
    base, smoke = TASKS[args.task]
    if args.out == p.get_default("out"):
        args.out = args.out / args.task  # the tasks' runs must not share directories (finished runs are reused)
    if args.task == "kjv_transformer":
        sys.path.insert(0, str(TRANSFORMER))  # the model's package, for the runs and for rebuilding checkpoints
    if args.smoke:
        args.seeds, args.steps = min(args.seeds, 2), 20
        base = [*base, *smoke]
    from codistill.compose import compose_config

    cfg = compose_config(base)
    eval_every = max(1, args.steps // 10)
    outer_lr, alpha, _ = tune(args, base, eval_every)
    runs = {label: run_variant(args.out, short, [*base, *overrides], args.seeds, args.steps, eval_every)
            for short, (label, overrides) in variants(outer_lr, alpha, args.outer_dtype, cfg.trainer.batch_size,
                                                               cfg.distill.exchange_every).items()}
    sync = next(iter(runs.values()))
    target = sum(r.final("eval/loss") for r in sync) / len(sync)
    rows = []
    for label, rs in runs.items():
        reached = [first_step_reaching(r.group_curve("eval/loss"), target) for r in rs]
        per_step = bytes_per_step(rs[0], args.steps)  # the same for every seed
        rows.append([
            label,
            mean_std([r.final("eval/loss") for r in rs]),
            mean_std([100 * r.final("eval/acc") for r in rs]),
            mean_std([s for s in reached if s is not None]) + f" ({sum(s is not None for s in reached)}/{len(rs)})",
            mean_std([100 * r.final("ensemble/acc") for r in rs]) if "G=" in label else "-",
            f"{per_step / 1e3:,.1f}",
        ])
    table = markdown_table(["variant", "test loss", "test acc %", f"steps to test loss {target:.4f}",
                            "ensemble acc %", "kB / step / rank"], rows)
    plot_curves(args.out / "eval_loss.png", runs, "eval/loss", "test loss")
    notes = (f"{args.task}: mean ± std over {args.seeds} seeds, {args.steps} steps. Tuned on held-out training "
             f"examples (seed 0): DiLoCo outer lr {outer_lr}, codistillation alpha {alpha} (table in tune/table.md). "
             "Steps to the target: the first evaluation at or below the synchronous run's final test loss (runs "
             "reaching it / runs). Bytes: tensor sizes, see the script's docstring.")
    report(args.out, f"Low communication: {args.task}", table, notes)


if __name__ == "__main__":
    main()
