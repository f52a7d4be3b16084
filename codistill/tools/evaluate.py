"""`codistill-eval CKPT [CKPT ...]`: held-out loss/accuracy of each checkpoint, their ensemble, and churn.

Each CKPT is a final checkpoint (checkpoints/group{g}/final.pt). The dataset is the one in the checkpoints' config
(its held-out split); with several checkpoints the table adds the ensemble (mean of predicted probabilities) and the
churn between them (mean over pairs: top-1 disagreement rate and mean L1 distance of predicted probabilities).
Checkpoints of different runs may be mixed, e.g. to measure churn between independent retrains.

    codistill-eval runs/x/checkpoints/group0/final.pt --per-class             # errors of every class
    codistill-eval CKPT --split validation --bias 3=3.5 --per-class          # raise class 3's logit by 3.5

`--split validation` scores the training examples the run kept out (data.validation_examples), so a setting such as
`--bias` can be chosen there and then reported once on the test split.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional

import torch

from codistill.io import metrics
from codistill.tools.checkpoints import CheckpointError, held_out, load, predict_probs, read, same_data


def evaluate(
    paths: list[Path], examples: int = 0, batch_size: int = 1000, device: str = "cpu", data_root: Optional[str] = None,
    split: str = "test", bias: Optional[dict[int, float]] = None,
) -> tuple[list[dict], dict]:
    """Per-checkpoint records (path, group, step, eval/loss, eval/acc, errors per class) and the run record
    (ensemble, churn)."""
    config = same_data([read(p)["config"] for p in paths], paths)
    held = held_out(config["data"], data_root, split=split)
    models = [load(p) for p in paths]
    ignore = config.get("loss", {}).get("ignore_index")
    probs, y = predict_probs([m.model for m in models], held, examples, batch_size, torch.device(device), bias, ignore)
    per_model, run = metrics.summarise(metrics.eval_sums(probs, y, ignore))
    rows = [
        {"path": str(m.path), "group": m.group, "step": m.step, **rec, "errors": errors_per_class(p, y)}
        for m, rec, p in zip(models, per_model, probs)
    ]
    return rows, {"examples": len(y), "dataset": held.name, **run}


def errors_per_class(probs: torch.Tensor, y: torch.Tensor) -> dict[int, int]:
    """Misclassified examples of each true class (classification labels [N] only; {} for sequences)."""
    if y.dim() != 1:
        return {}
    wrong = probs.argmax(-1) != y
    return {c: int(wrong[y == c].sum()) for c in range(probs.shape[-1])}


def parse_bias(items: list[str]) -> dict[int, float]:
    """["3=3.5", ...] -> {3: 3.5}; a malformed item is one argparse error line."""
    bias = {}
    for item in items:
        c, sep, b = item.partition("=")
        try:
            bias[int(c)] = float(b)
        except ValueError:
            raise argparse.ArgumentTypeError(f"--bias {item!r} is not CLASS=AMOUNT (e.g. 3=3.5)") from None
        if not sep:
            raise argparse.ArgumentTypeError(f"--bias {item!r} is not CLASS=AMOUNT (e.g. 3=3.5)")
    return bias


def format_table(rows: list[dict], run: dict, per_class: bool = False) -> str:
    width = max(len("checkpoint"), *(len(r["path"]) for r in rows))
    lines = [f"{'checkpoint':<{width}}  group   step   loss     acc", "-" * (width + 32)]
    for r in rows:
        lines.append(f"{r['path']:<{width}}  {r['group']:>5} {r['step']:>6}  {r['eval/loss']:.4f}  {r['eval/acc']:.4f}")
    if len(rows) > 1:
        lines.append(f"{'ensemble':<{width}}  {'':>5} {'':>6}  {run['ensemble/loss']:.4f}  {run['ensemble/acc']:.4f}")
        lines.append(
            f"churn: top-1 disagreement {run['churn/top1']:.4f}, mean |p_a - p_b|_1 {run['churn/prob_l1']:.4f}"
        )
    for r in rows:
        if per_class and r["errors"]:
            counts = ", ".join(f"{c}: {n}" for c, n in r["errors"].items())
            lines.append(f"errors per class of {r['path']} ({sum(r['errors'].values())} in all): {counts}")
    lines.append(f"({run['examples']} held-out examples of {run['dataset']})")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="codistill-eval", description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+", type=Path, help="final.pt files (one group's, or several)")
    parser.add_argument("--examples", type=int, default=0, help="score the first N held-out examples (0 = all)")
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    parser.add_argument("--data-root", default=None, help="the dataset's directory, if not where the run found it")
    parser.add_argument("--split", choices=("test", "validation"), default="test",
                        help="test: the run's held-out set; validation: the training examples it kept out")
    parser.add_argument("--bias", nargs="+", default=[], metavar="CLASS=AMOUNT",
                        help="add AMOUNT to CLASS's logit before scoring (e.g. 3=3.5)")
    parser.add_argument("--per-class", action="store_true", help="also print each model's errors per true class")
    args = parser.parse_args(argv)
    try:
        bias = parse_bias(args.bias)
        rows, run = evaluate(args.checkpoints, args.examples, args.batch_size, args.device, args.data_root,
                             args.split, bias)
    except argparse.ArgumentTypeError as e:
        parser.error(str(e))
    except (CheckpointError, FileNotFoundError) as e:
        parser.exit(2, f"codistill-eval: error: {e}\n")
    print(format_table(rows, run, args.per_class))


if __name__ == "__main__":
    sys.exit(main())
