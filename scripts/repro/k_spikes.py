"""The K = 10 loss spikes of anil.py: a scheduling bug, or a dynamic of the feedback delay and momentum?

    python scripts/repro/k_spikes.py             # 3 seeds x 2 momenta x (K = 5, 10, 20 and independent) x 2000 steps
    python scripts/repro/k_spikes.py --momentum 0.9 --k 10 --seeds 1
    python scripts/repro/k_spikes.py --smoke     # seconds; checks the script, not the claim

experiment=anil_fmnist as anil.py runs it (784-256-256-10 MLP on Fashion-MNIST, SGD lr 0.05, cosine LR, 2000 steps,
burn-in 200, 2 groups on shared data, alpha = 1, T = 1), with the test set and the training loss recorded every
50 steps so that a spike is resolved. The groups step one by one, as in anil.py, so the momentum 0.9, K = 10 runs
are anil.py's K = 10 runs.
(a) Bug check, on every codistillation run: the steps the trainer logged "exchange at step N" for (its debug lines,
    switched on here) must be the steps the schedule (codistill.engine.algorithm.Schedule) names; the teacher staleness
    in every record must be the steps since the last of them; the learning rate in every record must be the cosine
    schedule's at that step. Mismatches are listed under the table; "all on schedule" otherwise.
(b) Dynamics: momentum 0 and 0.9 (at the same lr: momentum 0 takes ~10x smaller effective steps) x K = 5, 10, 20,
    and independent groups (distill=none) as the spike-free reference. A spike is the largest rise of the test loss
    (or of the training cross-entropy, averaged over the 50 steps before each record) above its running minimum;
    the step where it peaks is listed per seed.
Cost at the defaults (3 seeds): about 15 minutes of one CPU core, half per momentum (--momentum 0 and --momentum 0.9
can run in parallel into the same --out; the full command then reuses both and prints the whole table). Keep the
2000 steps (the spikes belong to that schedule) and lower --seeds only if you must.
"""

from __future__ import annotations

import logging
import re

import torch

from _common import (Run, markdown_table, mean_std, parser, plot_curves, report, run_variant, smoke_overrides,
                     spike)

from codistill.engine.algorithm import Schedule
from codistill.compose import compose_config
from codistill.engine.optim import build_schedule

EXCHANGE_LINE = re.compile(r"exchange at step (\d+)$")


def variants(momenta: list[float], ks: list[int]) -> dict[str, list[str]]:
    """Run directory name -> overrides, for every momentum x (each K, then independent)."""
    out = {}
    for m in momenta:
        for k in ks:
            out[f"m{m:g}_k{k}"] = [f"optim.momentum={m}", f"distill.exchange_every={k}"]
        out[f"m{m:g}_independent"] = [f"optim.momentum={m}", "distill=none"]
    return out


def log_exchanges() -> None:
    """Have the trainer write its "exchange at step N" debug lines (and no other debug line) to each run's log."""
    trainer_log = logging.getLogger("codistill")
    trainer_log.setLevel(logging.DEBUG)
    trainer_log.addFilter(lambda r: r.levelno > logging.DEBUG or EXCHANGE_LINE.search(r.getMessage()) is not None)


def exchanges_logged(run: Run) -> list[int]:
    text = (run.run_dir / "logs" / "rank0.log").read_text()
    return [int(m.group(1)) for m in map(EXCHANGE_LINE.search, text.splitlines()) if m]


def check(run: Run, overrides: list[str], steps: int) -> list[str]:
    """What in `run` is off its schedule: exchange steps, staleness, learning rate ([] when all agree)."""
    cfg = compose_config([*overrides, f"trainer.max_steps={steps}"])
    schedule = Schedule.from_config(cfg.distill, cfg.topology.groups, steps)
    intended = [s for s in range(steps) if schedule.exchange_before(s)]
    problems = []
    logged = exchanges_logged(run)
    if logged != intended:
        problems.append(f"exchanges logged at {logged[:8]}..., the schedule names {intended[:8]}... "
                        f"({len(logged)} vs {len(intended)})")
    lr = build_schedule(torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=cfg.optim.lr), cfg.optim, steps)
    for r in run.records:
        if r.get("group") is None:
            continue
        done = r["step"]
        before = [s for s in intended if s < done]
        expected = done - before[-1] if before else -1
        if r["staleness"] != expected:
            problems.append(f"step {done}, group {r['group']}: staleness {r['staleness']}, expected {expected}")
        want_lr = cfg.optim.lr * lr.lr_lambdas[0](done)
        if abs(r["lr"] - want_lr) > 1e-9 * max(1.0, want_lr):
            problems.append(f"step {done}, group {r['group']}: lr {r['lr']:.6g}, the schedule's {want_lr:.6g}")
    return problems


def spikes(runs: list[Run], key: str) -> tuple[str, str]:
    """Mean ± std of the seeds' largest spike of `key`, and the steps they peak at."""
    found = [spike(r.group_curve(key)) if not r.failed else (float("nan"), None) for r in runs]
    return mean_std([h for h, _ in found]), ", ".join("none" if s is None else str(s) for _, s in found)


def staleness_at_evals(runs: list[Run]) -> str:
    """The teacher staleness values the test evaluations saw (where an evaluation falls in the exchange cycle)."""
    seen = {r["staleness"] for run in runs for r in run.records if r.get("group") is not None and "eval/loss" in r
            and r["staleness"] >= 0}
    return ", ".join(str(v) for v in sorted(seen)) or "n/a"


def label(name: str) -> tuple[str, str]:
    momentum, k = name.split("_")
    return momentum[1:], "independent" if k == "independent" else k[1:]


def main() -> None:
    p = parser(__doc__.splitlines()[0], steps=2000)
    p.add_argument("--momentum", type=float, nargs="+", default=[0.0, 0.9])
    p.add_argument("--k", type=int, nargs="+", default=[5, 10, 20], help="exchange intervals")
    p.add_argument("--eval-every", type=int, default=50, help="steps between records and test evaluations")
    args = p.parse_args()
    smoke = smoke_overrides(args)
    if args.smoke:
        args.eval_every = 2
    log_exchanges()
    common = ["experiment=anil_fmnist", f"distill.burn_in_steps={max(1, args.steps // 10)}", *smoke]
    rows, problems, runs_by = [], {}, {}
    for name, overrides in variants(args.momentum, args.k).items():
        runs = run_variant(args.out, name, [*common, *overrides], args.seeds, args.steps, args.eval_every)
        runs_by[name] = runs
        if not name.endswith("independent"):
            for r in runs:
                found = ["stopped early"] if r.failed else check(r, [*common, *overrides], args.steps)
                if found:
                    problems[f"{name} seed {r.seed}"] = found
        rows.append([*label(name), mean_std([r.final("eval/loss") for r in runs]), *spikes(runs, "eval/loss"),
                     spikes(runs, "train/ce")[0], staleness_at_evals(runs)])
    table = markdown_table(
        ["momentum", "K", "final test loss", "largest test-loss spike", "its step, per seed",
         "largest train-CE spike", "teacher staleness at evaluations"],
        rows,
    )
    checked = sum(len(rs) for n, rs in runs_by.items() if not n.endswith("independent"))
    verdict = (f"Bug check: {checked} codistillation runs, exchanges, staleness and lr all on schedule."
               if not problems else "Bug check FAILED:\n" + "\n".join(
                   f"- {run}: " + "; ".join(found[:5]) + (f" (+{len(found) - 5} more)" if len(found) > 5 else "")
                   for run, found in problems.items()))
    for m in args.momentum:
        plot_curves(args.out / f"eval_loss_m{m:g}.png", {n: r for n, r in runs_by.items() if label(n)[0] == f"{m:g}"},
                    "eval/loss", f"test loss, momentum {m:g} (mean of the 2 groups)")
    notes = (
        f"{verdict}\n\nMean ± std over {args.seeds} seeds; a seed's curve is the mean of its 2 groups. {args.steps} "
        f"steps, burn-in {max(1, args.steps // 10)}, records every {args.eval_every} steps. A spike: the largest rise "
        "above the running minimum. Curves: eval_loss_m<momentum>.png."
    )
    report(args.out, "Codistillation loss spikes: exchange interval K against momentum (Fashion-MNIST MLP)", table,
           notes)


if __name__ == "__main__":
    main()
