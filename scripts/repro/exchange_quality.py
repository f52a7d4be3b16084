"""Does a lossy or partially fresh teacher cost quality? Snapshot codec x fragments x exchange delay, against bytes.

    python scripts/repro/exchange_quality.py --task fmnist_noisy      # noisy Fashion-MNIST MLP, 3 seeds x 17 variants
    python scripts/repro/exchange_quality.py --task kjv_transformer   # the small character transformer on KJV
    python scripts/repro/exchange_quality.py --smoke --codecs none int8   # seconds; checks the script, not the claim

Every variant is 2-group codistillation (collective exchange, simulated mode) with one setting of
  - distill.snapshot_codec: none (float32), bf16, int8, fp8 (int8 / fp8: one float32 scale per row);
  - distill.fragments F: 1 (the whole state every K steps) or 4 (a quarter of the modules every K/4 steps);
  - distill.exchange_delay tau: 0 (loaded at once) or K/2 (the copies land K/2 steps after they were taken),
plus independent groups (distill=none) for reference. Tasks: experiment=exchange_quality_fmnist (40 % label noise on
1k examples, the memorising regime where codistillation pays) and exchange_quality_kjv (examples/char_transformer).

Columns: final test loss, accuracy (and perplexity for the language model) as the mean of the 2 groups, then mean ±
std over seeds; bytes per step a group sends, from metrics.jsonl (exchange/bytes_sent summed over the run / steps:
what the ring all-gather would pass through the group's rank under torchrun). The factor table pairs runs that differ
in one factor only (same seed and other factors): the mean ± std of the differences, next to the seed std of the
reference variant, is the verdict on that factor.
"""

from __future__ import annotations

import math
import statistics
import sys

from _common import REPO, Run, markdown_table, mean_std, parser, plot_curves, report, run_variant

TRANSFORMER = REPO / "examples" / "char_transformer"
TASKS = {  # name -> (experiment overrides, smoke overrides)
    "fmnist_noisy": (["experiment=exchange_quality_fmnist"],
                     ["data=synthetic", "data.train_examples=256", "data.eval_examples=128", "trainer.batch_size=32",
                      "model.hidden=[16,16,16]", "distill.burn_in_steps=4"]),
    "kjv_transformer": ([f"hydra.searchpath=[file://{TRANSFORMER / 'conf'}]", "experiment=exchange_quality_kjv"],
                        ["data.eval_examples=32", "model.dim=16", "model.heads=2", "trainer.batch_size=4",
                         "distill.burn_in_steps=4"]),
}
CODECS = ("none", "bf16", "int8", "fp8")


def grid(codecs: list[str], K: int) -> dict[str, list[str]]:
    """variant name -> overrides: every codec x F in (1, 4) x tau in (0, K/2)."""
    return {f"{c}_F{f}_tau{t}": [f"distill.snapshot_codec={c}", f"distill.fragments={f}", f"distill.exchange_delay={t}"]
            for c in codecs for f in (1, 4) for t in (0, K // 2)}


def bytes_sent_per_step(run: Run, steps: int) -> float:
    """What group 0 sent over the run (exchange/bytes_sent is reset at every record), per step."""
    return sum(r.get("exchange/bytes_sent", 0) for r in run.records if r.get("group") == 0) / steps


def paired(runs: dict[str, list[Run]], pairs: list[tuple[str, str]], value) -> list[float]:
    """value(b) - value(a) for every seed of every (a, b) variant pair."""
    return [value(rb) - value(ra) for a, b in pairs for ra, rb in zip(runs[a], runs[b]) if not (ra.failed or rb.failed)]


def main() -> None:
    p = parser(__doc__.splitlines()[0], steps=0)
    p.add_argument("--task", choices=sorted(TASKS), default="fmnist_noisy")
    p.add_argument("--codecs", nargs="+", default=list(CODECS), choices=CODECS)
    args = p.parse_args()
    if "none" not in args.codecs:
        p.error("--codecs must include none (the reference every codec is paired with)")
    base, smoke = TASKS[args.task]
    if args.out == p.get_default("out"):
        args.out = args.out / args.task
    if args.task == "kjv_transformer":
        sys.path.insert(0, str(TRANSFORMER))  # the model's package, for the runs
    if args.smoke:
        args.seeds, args.steps = min(args.seeds, 2), 24
        base = [*base, *smoke, "distill.exchange_every=8"]
    from codistill.compose import compose_config

    cfg = compose_config(base)
    steps = args.steps or cfg.trainer.max_steps
    K = cfg.distill.exchange_every
    eval_every = steps // 4
    lm = args.task == "kjv_transformer"
    variants = {"independent": ["distill=none"], **grid(args.codecs, K)}
    runs = {v: run_variant(args.out, v, [*base, *o], args.seeds, steps, eval_every) for v, o in variants.items()}

    loss = lambda r: r.final("eval/loss")  # noqa: E731
    acc = lambda r: 100 * r.final("eval/acc")  # noqa: E731
    rows = []
    for v, rs in runs.items():
        codec, f, t = ("-", "-", "-") if v == "independent" else v.split("_")
        rows.append([v if v == "independent" else "codistill", codec, f.lstrip("F"), t.lstrip("tau"),
                     mean_std([loss(r) for r in rs]),
                     *([mean_std([math.exp(loss(r)) for r in rs])] if lm else []),
                     mean_std([acc(r) for r in rs]),
                     f"{statistics.mean(bytes_sent_per_step(r, steps) for r in rs) / 1e3:,.1f}"])
    header = ["variant", "codec", "F", "tau", "test loss", *(["perplexity"] if lm else []), "test acc %",
              "kB sent / step / group"]
    table = markdown_table(header, rows)

    reference = "none_F1_tau0"
    names = [v for v in variants if v != "independent"]
    factors = [(f"codec {c} vs none", [(v, v.replace(c, "none", 1)) for v in names if v.startswith(c + "_")])
               for c in args.codecs if c != "none"]
    factors += [("F = 4 vs 1", [(v, v.replace("_F4_", "_F1_")) for v in names if "_F4_" in v]),
                (f"tau = {K // 2} vs 0", [(v, v.replace(f"_tau{K // 2}", "_tau0")) for v in names
                                          if v.endswith(f"_tau{K // 2}")])]
    factors.append(("codistill (reference) vs independent", [(reference, "independent")]))
    frows = [[name, str(len(pairs) * args.seeds), mean_std(paired(runs, [(b, a) for a, b in pairs], loss)),
              mean_std(paired(runs, [(b, a) for a, b in pairs], acc))] for name, pairs in factors]
    frows.append([f"seed std of {reference} (for scale)", str(args.seeds),
                  mean_std([loss(r) for r in runs[reference]]).partition("± ")[2] or "-",
                  mean_std([acc(r) for r in runs[reference]]).partition("± ")[2] or "-"])
    ftable = markdown_table(["factor (paired: same seed, other factors equal)", "pairs", "Δ test loss",
                             "Δ test acc (points)"], frows)
    plot_curves(args.out / "eval_loss.png", {v: runs[v] for v in ("independent", reference, *names[-1:])},
                "eval/loss", "test loss (mean of the 2 groups)")
    notes = (f"{args.task}: mean ± std over {args.seeds} seeds, {steps} steps, K = {K}, G = 2 (simulated mode, "
             f"collective exchange); each seed's value is the mean of its 2 groups. Bytes: exchange/bytes_sent of "
             f"metrics.jsonl summed over the run / steps (the same for every seed).\n\n{ftable}\n\nΔ: the first "
             "variant minus the second, mean ± std over the matched pairs (first row: int8 at every F and tau minus "
             "none at the same F and tau, and so on).")
    report(args.out, f"Exchange quality: snapshot codec x fragments x delay ({args.task})", table, notes)


if __name__ == "__main__":
    main()
