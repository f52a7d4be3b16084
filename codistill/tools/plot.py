"""`codistill-plot RUN_DIR`: PNG plots of a run from its metrics.jsonl (the single source of a run's numbers).

Writes RUN_DIR/plots/{loss,accuracy,perplexity,distill,staleness,churn}.png; a plot whose numbers the run did not record
(no evaluation, one group, no distillation) is skipped. Runs headless (matplotlib's Agg backend).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any, Optional

log = logging.getLogger("codistill")

Series = dict[Any, list[tuple[int, float]]]  # group (None = run level) -> [(step, value)]


def read_metrics(path: Path) -> list[dict]:
    """Records of metrics.jsonl; for a step logged twice (a resumed run) the later record wins."""
    latest: dict[tuple, dict] = {}
    with open(path) as f:
        for line in f:
            if line.strip():
                rec = json.loads(line)
                latest[(rec.get("group"), rec["step"])] = rec
    return sorted(latest.values(), key=lambda r: (r["step"], -1 if r.get("group") is None else r["group"]))


def series(records: list[dict], key: str, skip_negative: bool = False) -> Series:
    out: Series = defaultdict(list)
    for rec in records:
        value = rec.get(key)
        if value is not None and not (skip_negative and value < 0):
            out[rec.get("group")].append((rec["step"], float(value)))
    return dict(out)


def _draw(ax: Any, data: Series, label: str, style: str = "-", marker: Optional[str] = None) -> None:
    for g in sorted(data, key=lambda k: -1 if k is None else k):
        steps, values = zip(*data[g])
        name = "ensemble" if g is None else f"group {g}"
        color = "black" if g is None else f"C{g % 10}"
        ax.plot(steps, values, style, marker=marker, color=color, label=f"{name} {label}".strip(), linewidth=1.5)


def _figure(title: str, ylabel: str) -> tuple[Any, Any]:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    return fig, ax


def _save(fig: Any, ax: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_run(run_dir: Path) -> list[Path]:
    """Write the run's plots; return the files written."""
    import matplotlib

    matplotlib.use("Agg")
    records = read_metrics(run_dir / "metrics.jsonl")
    out_dir = run_dir / "plots"
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    train_loss, eval_loss = series(records, "train/loss"), series(records, "eval/loss")
    ens_loss = series(records, "ensemble/loss")
    if train_loss:
        fig, ax = _figure("Loss (train: label + distillation; held-out: label only)", "loss")
        _draw(ax, train_loss, "train")
        _draw(ax, eval_loss, "held-out", "--", "o")
        _draw(ax, ens_loss, "held-out", "--", "s")
        written.append(_save(fig, ax, out_dir / "loss.png"))
    acc = series(records, "eval/acc")
    if acc:
        fig, ax = _figure("Held-out accuracy", "accuracy")
        _draw(ax, acc, "", "-", "o")
        _draw(ax, series(records, "ensemble/acc"), "", "--", "s")
        written.append(_save(fig, ax, out_dir / "accuracy.png"))
    ppl = series(records, "eval/ppl")
    if ppl:  # language models: the held-out loss per token as a perplexity
        fig, ax = _figure("Held-out perplexity (exp of the loss per token)", "perplexity")
        _draw(ax, ppl, "", "-", "o")
        _draw(ax, series(records, "ensemble/ppl"), "", "--", "s")
        ax.set_yscale("log")
        written.append(_save(fig, ax, out_dir / "perplexity.png"))
    distill = series(records, "train/distill")
    if any(v for points in distill.values() for _, v in points):
        fig, ax = _figure("Training loss terms: label (CE) and distillation", "loss")
        _draw(ax, series(records, "train/ce"), "label CE")
        _draw(ax, distill, "distillation", "--")
        written.append(_save(fig, ax, out_dir / "distill.png"))
    stale = series(records, "staleness", skip_negative=True)
    if stale:
        fig, ax = _figure("Teacher staleness at log steps (steps since the last exchange)", "steps")
        _draw(ax, stale, "", "-", ".")
        from matplotlib.ticker import MaxNLocator

        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylim(0, max(v for points in stale.values() for _, v in points) + 1)
        written.append(_save(fig, ax, out_dir / "staleness.png"))
    churn_top1 = series(records, "churn/top1")
    if churn_top1:
        fig, ax = _figure("Churn between groups (mean over pairs)", "rate")
        ax.plot(*zip(*churn_top1[None]), "-o", color="C3", label="top-1 disagreement")
        ax.plot(*zip(*series(records, "churn/prob_l1")[None]), "--s", color="C4", label="mean |p_a - p_b|_1")
        written.append(_save(fig, ax, out_dir / "churn.png"))
    return written


def plot_run_safely(run_dir: Path) -> None:
    """End-of-run plotting: a failure here is a warning; the run's results are already on disk."""
    try:
        paths = plot_run(run_dir)
        log.info("plots: %s", ", ".join(str(p) for p in paths) if paths else "nothing to plot")
    except Exception as e:  # plotting must never turn a finished run into a failed one
        log.warning("plots not written: %s: %s", type(e).__name__, e)


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="codistill-plot", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="a run directory holding metrics.jsonl")
    args = parser.parse_args(argv)
    if not (args.run_dir / "metrics.jsonl").is_file():
        parser.exit(2, f"codistill-plot: error: {args.run_dir / 'metrics.jsonl'} does not exist\n")
    for path in plot_run(args.run_dir):
        print(path)


if __name__ == "__main__":
    sys.exit(main())
