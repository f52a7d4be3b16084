"""Anil et al. 2018's reproducibility claim: codistilled models churn less between retrains than independent ones.

    python scripts/repro/churn.py            # 3 retrains each of baseline and codistill (reuses anil.py runs)
    python scripts/repro/churn.py --smoke

A "retrain" is a run with another seed (other initialisation and data order). Churn between two retrains is the
fraction of test examples whose top-1 predictions differ, and the mean L1 distance of their predicted
probabilities, between group 0 of one retrain and group 0 of another; we average over all pairs of retrains.
Paper (Criteo, a 2-way codistilled model vs its baseline): about 35% lower prediction churn.
Runs are shared with anil.py (same experiment, same run directories).
"""

from __future__ import annotations

import statistics
from itertools import combinations

from _common import REPO, markdown_table, mean_std, parser, report, run_variant, smoke_overrides, test_probs

from codistill.io.metrics import churn

VARIANTS = {"baseline (independent)": ("baseline", ["distill=none"]),
            "codistill K=50 shared": ("shared", ["distill.exchange_every=50"])}


def main() -> None:
    p = parser(__doc__.splitlines()[0], steps=2000, seeds=3)
    p.set_defaults(out=REPO / "runs" / "repro" / "anil_fmnist")
    args = p.parse_args()
    smoke = smoke_overrides(args)
    burn_in = max(1, args.steps // 10)
    rows, summary = [], {}
    for name, (short, overrides) in VARIANTS.items():
        runs = run_variant(
            args.out, short,
            ["experiment=anil_fmnist", f"distill.burn_in_steps={burn_in}", *overrides, *smoke],
            args.seeds, args.steps, max(1, args.steps // 12),
        )
        probs = [test_probs(r, 0) for r in runs]
        pairs = [churn(probs[a], probs[b]) for a, b in combinations(range(len(runs)), 2)]
        within = [r.final("churn/top1") for r in runs]
        summary[name] = statistics.mean(t for t, _ in pairs)
        rows.append([
            name, len(pairs), mean_std([100 * t for t, _ in pairs]), mean_std([l1 for _, l1 in pairs]),
            mean_std([100 * w for w in within]), mean_std([100 * r.final("eval/acc", 0) for r in runs]),
        ])
    base, codist = summary["baseline (independent)"], summary["codistill K=50 shared"]
    table = markdown_table(
        ["variant", "retrain pairs", "top-1 churn between retrains %", "mean L1 prob. distance", 
         "churn between the 2 groups of a run %", "group-0 test acc %"],
        rows,
    )
    notes = (
        f"Relative change in top-1 churn between retrains, codistill vs baseline: {100 * (codist - base) / base:+.1f}% "
        f"(paper: about -35% on Criteo). {args.seeds} retrains per variant, {args.steps} steps each."
    )
    report(args.out / "churn", "Anil et al. 2018: prediction churn between retrains (Fashion-MNIST MLP)", table, notes)


if __name__ == "__main__":
    main()
