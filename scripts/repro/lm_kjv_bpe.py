"""Language modelling at equal tokens: codistillation against independent training, synchronous SGD and DiLoCo.

    OMP_NUM_THREADS=1 python scripts/repro/lm_kjv_bpe.py                   # the reduced CPU budget of docs/results.md
    OMP_NUM_THREADS=1 python scripts/repro/lm_kjv_bpe.py --full --steps 3000   # experiment=lm_kjv_bpe as it stands
    python scripts/repro/lm_kjv_bpe.py --smoke                               # seconds; checks the script, not the claim

The task is experiment=lm_kjv_bpe: a Llama-style decoder (transformers' LlamaForCausalLM, tied embeddings) on the
King James Bible as BPE tokens (data=kjv_bpe). Without --full the model, vocabulary and windows are shrunk to what
a 2-core CPU trains in minutes (REDUCED below): a 1024-id BPE, 64-token windows, a 2-layer decoder of width 64.

Variants, all at equal tokens per step (2 workers x one group batch of B windows):
  - codistillation, G = 2 (K = H exchanges);
  - independent: G = 2 with distill=none (the same two workers, never communicating);
  - synchronous SGD: one group of R = 2 replicas (DDP), batch 2B;
  - DiLoCo: G = 2, outer SGD with Nesterov momentum 0.9 and lr 0.7 (the DiLoCo paper's values; not tuned here)
    every H = K steps, from one initialisation (burn_in_steps=0).
Columns: held-out loss per token and perplexity (mean over a run's groups, then mean ± std over seeds), the
ensemble's perplexity (the groups' mean probabilities) and the top-1 churn between the two groups, and bytes per
step per rank from tensor sizes (_common.bytes_per_step; the tied embedding counted once).
"""

from __future__ import annotations

import math

from _common import bytes_per_step, markdown_table, mean_std, parser, report, run_variant

REDUCED = ["data.train.vocab_size=1024", "data.train.seq_len=64", "model.config.hidden_size=64",
           "model.config.intermediate_size=172", "model.config.num_hidden_layers=2",
           "model.config.num_attention_heads=4", "model.config.num_key_value_heads=2", "trainer.batch_size=16",
           "data.eval_examples=256", "data.eval_batch_size=32", "optim.lr=0.003", "optim.warmup_steps=20",
           "distill.burn_in_steps=30", "distill.exchange_every=25"]
SMOKE = ["model.config.hidden_size=16", "model.config.intermediate_size=32", "model.config.num_hidden_layers=1",
         "model.config.num_attention_heads=2", "model.config.num_key_value_heads=1", "trainer.batch_size=4",
         "data.eval_examples=16", "distill.burn_in_steps=5", "distill.exchange_every=5", "optim.warmup_steps=2"]


def variants(group_batch: int) -> dict[str, tuple[str, list[str]]]:
    return {
        "codistill": ("codistillation (G=2)", ["topology.groups=2"]),
        "independent": ("independent (G=2, distill=none)", ["topology.groups=2", "distill=none"]),
        "sync": ("synchronous SGD (DDP, 2 ranks)", ["distill=none", "topology.groups=1", "topology.replicas=2",
                                                    f"trainer.batch_size={2 * group_batch}"]),
        "diloco": ("DiLoCo (G=2, lr 0.7, Nesterov 0.9)", ["topology.groups=2", "distill=diloco",
                                                          "distill.burn_in_steps=0"]),
    }


def main() -> None:
    p = parser(__doc__.splitlines()[0], steps=300, seeds=3)
    p.add_argument("--full", action="store_true", help="experiment=lm_kjv_bpe unshrunk (a GPU or many cores)")
    args = p.parse_args()
    base = ["experiment=lm_kjv_bpe", "topology.mode=simulated", *([] if args.full else REDUCED)]
    if args.smoke:
        args.seeds, args.steps = min(args.seeds, 2), 20
        base = [*base, *SMOKE]
    from codistill.compose import compose_config

    cfg = compose_config(base)
    eval_every = max(1, args.steps // 3)
    runs = {label: run_variant(args.out, short, [*base, *overrides], args.seeds, args.steps, eval_every)
            for short, (label, overrides) in variants(cfg.trainer.batch_size).items()}
    rows = []
    for label, rs in runs.items():
        loss = [r.final("eval/loss") for r in rs]
        two = "G=2" in label
        rows.append([
            label, mean_std(loss), mean_std([math.exp(v) for v in loss]),
            mean_std([r.final("ensemble/ppl") for r in rs]) if two else "-",
            mean_std([100 * r.final("churn/top1") for r in rs]) if two else "-",
            f"{bytes_per_step(rs[0], args.steps) / 1e3:,.1f}",
        ])
    table = markdown_table(["variant", "held-out loss / token", "perplexity", "ensemble perplexity",
                            "churn top-1 %", "kB / step / rank"], rows)
    tokens = 2 * cfg.trainer.batch_size * cfg.data.train.seq_len * args.steps
    notes = (f"mean ± std over {args.seeds} seeds; {args.steps} steps, {tokens:,} training tokens per variant "
             f"({'experiment=lm_kjv_bpe' if args.full else 'reduced CPU budget: ' + ' '.join(REDUCED)}); "
             f"held-out: the first {cfg.data.eval_examples} test windows.")
    report(args.out, "Language modelling at equal tokens (KJV BPE, Llama-style decoder)", table, notes)


if __name__ == "__main__":
    main()
