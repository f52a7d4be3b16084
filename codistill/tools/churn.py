"""`codistill-churn A.pt B.pt`: how differently two checkpoints predict on the held-out set (Anil et al.'s churn).

Prints the top-1 disagreement rate (fraction of held-out examples, or characters for a language model, whose argmax
predictions differ) and the mean L1 distance between the two predicted distributions, mean_n sum_c |p_a - p_b|.
A and B may come from one run (two groups) or from independent retrains. The dataset is the checkpoints' own
(they must agree) unless --data names another with the same inputs and classes.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional

import torch

from codistill.io import metrics
from codistill.tools.checkpoints import DATA_PRESETS, CheckpointError, held_out, predict_probs, read, rebuild, same_data


def churn_between(
    a: Path, b: Path, data: Optional[str] = None, data_root: Optional[str] = None, examples: int = 0,
    batch_size: int = 1000, device: str = "cpu",
) -> dict:
    """{"top1", "prob_l1", "examples", "dataset"} between checkpoints `a` and `b` on a held-out set: the
    checkpoints' own, or that of the conf/data preset `data`."""
    ckpts = [read(a), read(b)]
    if data is None:
        same_data([c["config"] for c in ckpts], [a, b])
    held = held_out(ckpts[0]["config"]["data"], data_root, preset=data)
    (pa, pb), _ = predict_probs([rebuild(c) for c in ckpts], held, examples, batch_size, torch.device(device))
    top1, prob_l1 = metrics.churn(pa, pb)
    return {"top1": top1, "prob_l1": prob_l1, "examples": len(pa), "dataset": held.name}


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="codistill-churn", description=__doc__.splitlines()[0])
    parser.add_argument("a", type=Path, help="a final.pt (checkpoints/group{g}/final.pt of a run)")
    parser.add_argument("b", type=Path, help="another final.pt")
    presets = sorted(p.stem for p in DATA_PRESETS.glob("*.yaml"))
    parser.add_argument("--data", choices=presets, default=None,
                        help="score on this conf/data preset's held-out set instead of the checkpoints'")
    parser.add_argument("--data-root", default=None, help="where the held-out set's files are (its root argument)")
    parser.add_argument("--examples", type=int, default=0, help="score the first N held-out examples (0 = all)")
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    args = parser.parse_args(argv)
    try:
        result = churn_between(args.a, args.b, args.data, args.data_root, args.examples, args.batch_size, args.device)
    except CheckpointError as e:
        parser.exit(2, f"codistill-churn: error: {e}\n")
    if args.json:
        print(json.dumps(result))
    else:
        print(f"churn between {args.a} and {args.b} on {result['examples']} held-out examples of {result['dataset']}:")
        print(f"  top-1 disagreement   {result['top1']:.4f}")
        print(f"  mean |p_a - p_b|_1   {result['prob_l1']:.4f}")


if __name__ == "__main__":
    sys.exit(main())
