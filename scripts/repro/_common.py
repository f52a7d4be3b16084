"""Shared machinery of the reproduction scripts: run config variants over seeds, tabulate, plot.

Every run is a real simulated-mode training run (the same engine and config as `python -m codistill.train`), written
to OUT/<variant>/seed<k>/ with its own metrics.jsonl, so any number in a table can be traced to a run directory.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shlex
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from codistill.compose import compose_config  # noqa: E402


@dataclass
class Run:
    """One finished run: its directory and its metrics.jsonl records."""

    variant: str
    seed: int
    run_dir: Path
    records: list[dict] = field(default_factory=list)
    failed: Optional[str] = None  # why the run stopped early (e.g. a non-finite loss); its numbers are NaN

    @property
    def seconds(self) -> float:
        """Training time of the run as its metrics recorded it (0 for a stopped run)."""
        return max((r.get("time_s", 0.0) for r in self.records), default=0.0)

    @property
    def failure(self) -> str:
        """The failure in a few words for a table cell: "loss not finite at step 2500", or the error's start."""
        found = re.search(r"not finite at step (\d+)", self.failed or "")
        return f"loss not finite at step {found.group(1)}" if found else (self.failed or "")[:60]

    def group_curve(self, key: str, group: Optional[int] = None) -> list[tuple[int, float]]:
        """(step, value) of `key`, for one group or averaged over the groups."""
        by_step: dict[int, list[float]] = {}
        for r in self.records:
            if r.get("group") is not None and key in r and (group is None or r["group"] == group):
                by_step.setdefault(r["step"], []).append(r[key])
        return sorted((s, sum(v) / len(v)) for s, v in by_step.items())

    def run_curve(self, key: str) -> list[tuple[int, float]]:
        return sorted((r["step"], r[key]) for r in self.records if r.get("group") is None and key in r)

    def final(self, key: str, group: Optional[int] = None) -> float:
        if self.failed:
            return math.nan
        return self.curve(key, group)[-1][1]

    def curve(self, key: str, group: Optional[int] = None) -> list[tuple[int, float]]:
        """A run-level key's curve (ensemble/, churn/), else the group curve of `key`."""
        return self.run_curve(key) if key.startswith(("ensemble/", "churn/")) else self.group_curve(key, group)

    def best(self, key: str, lowest: bool = False) -> float:
        """The best value `key` reached at any evaluated step (highest, or lowest): a peak the end may have lost."""
        if self.failed:
            return math.nan
        values = [v for _, v in self.curve(key)]
        return min(values) if lowest else max(values)


def parser(description: str, steps: int, seeds: int = 3) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--out", type=Path, default=REPO / "runs" / "repro" / Path(sys.argv[0]).stem)
    p.add_argument("--seeds", type=int, default=seeds, help="independent repetitions (seeds 0..N-1)")
    p.add_argument("--steps", type=int, default=steps, help="training steps of every run")
    p.add_argument("--smoke", action="store_true", help="a seconds-long run of every variant on synthetic data")
    return p


def smoke_overrides(args: argparse.Namespace, language_model: bool = False) -> list[str]:
    """Tiny settings for CI: every code path of the script runs, no number means anything.

    Classifiers switch to the synthetic dataset; a language model keeps its corpus and shrinks instead.
    """
    if not args.smoke:
        return []
    args.seeds = min(args.seeds, 2)
    args.steps = 20
    if language_model:
        return ["data.eval_examples=64", "model.hidden=16", "trainer.batch_size=8"]
    return ["data=synthetic", "data.eval_examples=128", "trainer.batch_size=32"]


def run_variant(
    out: Path, variant: str, overrides: Sequence[str], seeds: int | Sequence[int], steps: int, eval_every: int
) -> list[Run]:
    """Train `overrides` once per seed (0..seeds-1, or the seeds listed), reusing finished runs on disk."""
    from codistill.train import RunError, train

    runs = []
    for seed in range(seeds) if isinstance(seeds, int) else seeds:
        run_dir = out / variant / f"seed{seed}"
        metrics = run_dir / "metrics.jsonl"
        done, failed = run_dir / "DONE", run_dir / "FAILED"
        if failed.exists():  # a failure is a result too: reported again, not retried (delete FAILED to retry)
            runs.append(Run(variant, seed, run_dir, failed=failed.read_text().strip()))
            continue
        if not done.exists():
            if metrics.exists():
                metrics.unlink()
            cfg = compose_config(
                [*overrides, f"seed={seed}", f"trainer.max_steps={steps}", f"trainer.eval_every={eval_every}",
                 f"trainer.log_every={eval_every}", "logger=none", "logger.plots=false"],
                run_id=f"{variant}-seed{seed}",
            )
            print(f"[{variant} seed {seed}] {' '.join(overrides)}", flush=True)
            try:
                train(cfg, run_dir)
                done.write_text("ok\n")
            except RunError as stop:  # the trainer stopped with a one-line reason
                print(f"[{variant} seed {seed}] stopped: {stop}", flush=True)
                failed.write_text(f"{stop}\n")
                runs.append(Run(variant, seed, run_dir, failed=str(stop)))
                continue
        records = [json.loads(line) for line in metrics.read_text().splitlines()]
        runs.append(Run(variant, seed, run_dir, records))
    return runs


def test_probs(run: Run, group: int = 0):
    """The final checkpoint of `group` in `run`, evaluated on the test set: probabilities [N, C]."""
    import torch

    from codistill.tools import checkpoints

    ckpt = checkpoints.read(run.run_dir / "checkpoints" / f"group{group}" / "final.pt")
    held = checkpoints.held_out(ckpt["config"]["data"])
    probs, _ = checkpoints.predict_probs([checkpoints.rebuild(ckpt)], held, 0, 1000, torch.device("cpu"))
    return probs[0]


def finished(runs: Sequence[Run]) -> list[Run]:
    return [r for r in runs if not r.failed]


def cell(runs: Sequence[Run], value: Callable[[Run], float]) -> str:
    """mean ± std of `value` over the finished runs, and what stopped the others (never a silent "n/a")."""
    done = finished(runs)
    stopped = [r for r in runs if r.failed]
    text = mean_std([value(r) for r in done]) if done else ""
    if stopped:
        why = "; ".join(f"seed {r.seed}: {r.failure}" for r in stopped)
        text = f"{text} ({len(done)} of {len(runs)} finished; {why})" if done else f"all {len(runs)} stopped ({why})"
    return text


def bytes_per_step(run: Run, steps: int) -> float:
    """Bytes one rank sends or receives per training step, from the run's config and its model's tensor sizes.

    An exchange (codistill, average, diloco) is the all-gather a rank receives, (G - 1) x state values, in the
    dtype that travels (distill.teacher_dtype; distill.outer_dtype for the pseudo-gradients after the float32 start),
    summed over the exchanges the schedule makes and divided by the steps. DDP inside a group of R replicas is a ring
    all-reduce of the gradients, 2 (R - 1) / R x parameter values, float32, every step.
    """
    import torch
    from omegaconf import OmegaConf

    from codistill.engine.algorithm import Schedule
    from codistill.engine.teachers import StateFlattener
    from codistill.tools import checkpoints

    ckpt = checkpoints.read(run.run_dir / "checkpoints" / "group0" / "final.pt")
    cfg = ckpt["config"]
    model = checkpoints.rebuild(ckpt)
    state = StateFlattener(model).numel  # what an exchange moves: a tied weight once
    params = sum(p.numel() for p in model.parameters())
    G, R, d = cfg["topology"]["groups"], cfg["topology"]["replicas"] or 1, cfg["distill"]
    schedule = Schedule.from_config(OmegaConf.create(d), G, cfg["trainer"]["max_steps"])
    exchanges = [s for s in range(steps) if schedule.exchange_before(s)]
    size = lambda name: torch.empty(0, dtype=getattr(torch, name)).element_size()  # noqa: E731
    if schedule.averaging:  # the start sends float32 states, every outer step a pseudo-gradient
        values = (G - 1) * state * (4 + size(d["outer_dtype"]) * (len(exchanges) - 1))
    else:
        values = (G - 1) * state * size(d["teacher_dtype"]) * len(exchanges)
    return values / steps + 4 * 2 * (R - 1) / R * params


def minutes(*groups: Sequence[Run]) -> str:
    """Summed training time of the runs, in minutes (as measured, on however busy a machine)."""
    return f"{sum(r.seconds for runs in groups for r in runs) / 60:.0f}"


def mean_std(values: Sequence[float]) -> str:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return "n/a"
    if len(values) == 1:
        return f"{values[0]:.4g}"
    return f"{statistics.mean(values):.4g} ± {statistics.stdev(values):.2g}"


def first_step_reaching(curve: list[tuple[int, float]], target: float) -> Optional[int]:
    """First evaluated step whose value is <= target (None if never)."""
    return next((s for s, v in curve if v <= target), None)


def spike(curve: list[tuple[int, float]]) -> tuple[float, Optional[int]]:
    """The largest rise of a loss curve above its running minimum, and the step it peaks at (0, None: no rise)."""
    lowest, height, at = math.inf, 0.0, None
    for step, v in curve:
        lowest = min(lowest, v)
        if v - lowest > height:
            height, at = v - lowest, step
    return height, at


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def plot_curves(
    path: Path, runs_by_variant: dict[str, list[Run]], key: str, ylabel: str,
    curve: Callable[[Run], list[tuple[int, float]]] | None = None,
) -> None:
    """Mean over seeds (line) and min-max band of `key` against steps, one line per variant."""
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for variant, runs in runs_by_variant.items():
        runs = [r for r in runs if not r.failed]
        if not runs:
            continue
        curves = [(curve or (lambda r: r.group_curve(key)))(r) for r in runs]
        steps = [s for s, _ in curves[0]]
        per_step = [[dict(c).get(s) for c in curves] for s in steps]
        per_step = [[v for v in vs if v is not None] for vs in per_step]
        ax.plot(steps, [statistics.mean(v) for v in per_step], label=variant)
        ax.fill_between(steps, [min(v) for v in per_step], [max(v) for v in per_step], alpha=0.15)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_xy(
    path: Path, series: dict[str, list[tuple[float, float]]], xlabel: str, ylabel: str, log: bool = False
) -> None:
    """One marked line per series of (x, y) points; `log`: both axes logarithmic (base 2 on x)."""
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for label, points in series.items():
        points = sorted(p for p in points if p[1] is not None and not math.isnan(p[1]))
        ax.plot([x for x, _ in points], [y for _, y in points], marker="o", label=label)
    if log:
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def report(out: Path, title: str, table: str, notes: str = "") -> None:
    """Print the table and keep a copy (with the command that produced it) next to the runs."""
    command = shlex.join(["python", *sys.argv])
    text = f"## {title}\n\n`{command}`\n\n{table}\n" + (f"\n{notes}\n" if notes else "")
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text(text)
    print("\n" + text, flush=True)
