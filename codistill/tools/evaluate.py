"""`codistill-eval CKPT [CKPT ...]`: held-out loss/accuracy of each checkpoint, their ensemble, and churn.

Each CKPT is a final checkpoint (checkpoints/group{g}/final.pt). The dataset is the one in the checkpoints' config
(its held-out split); with several checkpoints the table adds the ensemble (mean of predicted probabilities) and the
churn between them (mean over pairs: top-1 disagreement rate and mean L1 distance of predicted probabilities).
Checkpoints of different runs may be mixed, e.g. to measure churn between independent retrains.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional

import torch

from codistill import metrics
from codistill.tools.checkpoints import CheckpointError, held_out, load, predict_probs, read, same_data


def evaluate(
    paths: list[Path], examples: int = 0, batch_size: int = 1000, device: str = "cpu", data_root: Optional[str] = None
) -> tuple[list[dict], dict]:
    """Per-checkpoint records (path, group, step, eval/loss, eval/acc) and the run record (ensemble, churn)."""
    config = same_data([read(p)["config"] for p in paths], paths)
    held = held_out(config["data"], data_root)
    models = [load(p) for p in paths]
    probs, y = predict_probs([m.model for m in models], held, examples, batch_size, torch.device(device))
    per_model, run = metrics.summarise(metrics.eval_sums(probs, y, config.get("loss", {}).get("ignore_index")))
    rows = [{"path": str(m.path), "group": m.group, "step": m.step, **rec} for m, rec in zip(models, per_model)]
    return rows, {"examples": len(y), "dataset": held.name, **run}


def format_table(rows: list[dict], run: dict) -> str:
    width = max(len("checkpoint"), *(len(r["path"]) for r in rows))
    lines = [f"{'checkpoint':<{width}}  group   step   loss     acc", "-" * (width + 32)]
    for r in rows:
        lines.append(f"{r['path']:<{width}}  {r['group']:>5} {r['step']:>6}  {r['eval/loss']:.4f}  {r['eval/acc']:.4f}")
    if len(rows) > 1:
        lines.append(f"{'ensemble':<{width}}  {'':>5} {'':>6}  {run['ensemble/loss']:.4f}  {run['ensemble/acc']:.4f}")
        lines.append(
            f"churn: top-1 disagreement {run['churn/top1']:.4f}, mean |p_a - p_b|_1 {run['churn/prob_l1']:.4f}"
        )
    lines.append(f"({run['examples']} held-out examples of {run['dataset']})")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="codistill-eval", description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+", type=Path, help="final.pt files (one group's, or several)")
    parser.add_argument("--examples", type=int, default=0, help="score the first N held-out examples (0 = all)")
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    parser.add_argument("--data-root", default=None, help="the dataset's directory, if not where the run found it")
    args = parser.parse_args(argv)
    try:
        rows, run = evaluate(args.checkpoints, args.examples, args.batch_size, args.device, args.data_root)
    except (CheckpointError, FileNotFoundError) as e:
        parser.exit(2, f"codistill-eval: error: {e}\n")
    print(format_table(rows, run))


if __name__ == "__main__":
    sys.exit(main())
