"""Sodhani et al. 2020: codistillation regularises; with it, less weight decay is needed to match the baseline.

    python scripts/repro/sodhani_weight_decay.py     # 3 seeds x 2 modes x 3 weight decays (wd 0 reuses anil.py runs)
    python scripts/repro/sodhani_weight_decay.py --smoke

For each weight decay, train the independent baseline and 2-way codistillation (experiment=anil_fmnist) and report
the gap (codistill - baseline) in test loss and accuracy. Paper: codistillation over-regularises, so its gap to the
baseline narrows or reverses as weight decay is lowered.
"""

from __future__ import annotations

from _common import REPO, markdown_table, mean_std, parser, report, run_variant, smoke_overrides

WEIGHT_DECAYS = (0.0, 1e-4, 1e-3)
# mode -> (run name in anil.py's directory, overrides); the weight-decay-0 runs are anil.py's own
MODES = {"baseline": ("baseline", ["distill=none"]), "codistill": ("shared", ["distill.exchange_every=50"])}


def main() -> None:
    p = parser(__doc__.splitlines()[0], steps=2000)
    p.set_defaults(out=REPO / "runs" / "repro" / "anil_fmnist")
    args = p.parse_args()
    smoke = smoke_overrides(args)
    burn_in = max(1, args.steps // 10)
    rows = []
    for wd in WEIGHT_DECAYS:
        runs = {
            mode: run_variant(
                args.out, short if wd == 0 else f"{short}_wd{wd:g}",
                ["experiment=anil_fmnist", f"distill.burn_in_steps={burn_in}", f"optim.weight_decay={wd}", *o, *smoke],
                args.seeds, args.steps, max(1, args.steps // 12),
            )
            for mode, (short, o) in MODES.items()
        }
        loss = {m: [r.final("eval/loss") for r in rs] for m, rs in runs.items()}
        acc = {m: [100 * r.final("eval/acc") for r in rs] for m, rs in runs.items()}
        rows.append([
            f"{wd:g}", mean_std(loss["baseline"]), mean_std(loss["codistill"]),
            mean_std([c - b for b, c in zip(loss["baseline"], loss["codistill"])]),
            mean_std(acc["baseline"]), mean_std(acc["codistill"]),
            mean_std([c - b for b, c in zip(acc["baseline"], acc["codistill"])]),
        ])
    table = markdown_table(
        ["weight decay", "baseline test loss", "codistill test loss", "gap (loss)", "baseline acc %",
         "codistill acc %", "gap (acc points)"],
        rows,
    )
    report(args.out / "weight_decay", "Sodhani et al. 2020: weight decay and the codistillation gap (Fashion-MNIST MLP)", table,
           f"Mean ± std over {args.seeds} seeds (gaps paired by seed), {args.steps} steps each.")


if __name__ == "__main__":
    main()
