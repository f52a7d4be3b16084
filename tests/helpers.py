"""Shared test helpers: compose configs in-process, build trainers, launch real torchrun jobs with timeouts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Sequence

import torch
from omegaconf import DictConfig

from codistill.compose import compose_config
from codistill.config import validate
from codistill.distributed.topology import Topology, resolve_layout
from codistill.build import build_trainer, components_from_config
from codistill.engine.trainer import Trainer

REPO = Path(__file__).resolve().parents[1]
# Small, fast defaults for tests: synthetic data, tiny MLP.
FAST = [
    "data=synthetic",
    "model.hidden=[32]",
    "trainer.batch_size=32",
    "trainer.log_every=5",
    "trainer.eval_every=0",
    "data.eval_examples=128",
]


ANY_MODEL = [o for o in FAST if not o.startswith("model.")]  # FAST for a model preset other than mlp
# A user's model and data (tests/user_components.py), through their own config directory as a user would add it.
USER = [*ANY_MODEL, f"hydra.searchpath=[file://{REPO}/tests/conf]", "data=blobs", "model=dict_net"]


def make_config(overrides: Sequence[str] = (), base: Sequence[str] = FAST) -> DictConfig:
    return compose_config([*base, *overrides], run_id="test")


def make_trainer(overrides: Sequence[str], run_dir: Path, base: Sequence[str] = FAST) -> Trainer:
    """A simulated-mode Trainer built in this process (no process group is ever created)."""
    cfg = make_config(["topology.mode=simulated", *overrides], base)
    layout = resolve_layout(cfg.topology, env={})
    validate(cfg, layout.replicas)
    return build_trainer(cfg, Topology.start(layout, "cpu"), run_dir, components_from_config(cfg))


def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(WANDB_MODE="disabled", OMP_NUM_THREADS="1", HYDRA_FULL_ERROR="0", PYTHONUNBUFFERED="1")
    return env


def run_cli(args: Sequence[str], timeout: float = 120, cwd: Path | None = None, base: Sequence[str] = FAST
            ) -> subprocess.CompletedProcess:
    """`python -m codistill.train ARGS` in a fresh process (simulated mode), with a hard timeout."""
    return subprocess.run(
        [sys.executable, "-m", "codistill.train", *base, *args],
        capture_output=True, text=True, timeout=timeout, env=clean_env(), cwd=cwd or REPO,
    )


def run_torchrun(nproc: int, args: Sequence[str], timeout: float = 180, torchrun_args: Sequence[str] = (),
                 base: Sequence[str] = FAST) -> subprocess.CompletedProcess:
    """A real `torchrun --standalone` job of `nproc` CPU processes (gloo), with a hard timeout."""
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", *torchrun_args,
        "-m", "codistill.train", *base, "topology.timeout_s=30", *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=clean_env(), cwd=REPO)


def load_final(run_dir: Path, group: int) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoints" / f"group{group}" / "final.pt", weights_only=True)["model"]


def max_abs_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


def snapshot_steps(folder: Path, shards: int | None = None) -> list[int]:
    """Steps of an exchange directory's group folder complete in a layout (whole, or all `shards` shards), newest
    first: what a reader of that layout could load."""
    from codistill.distributed.exchange.filesystem import complete_tags, versions

    need = complete_tags(shards)
    return sorted((s for s, tags in versions(folder).items() if need <= tags), reverse=True)


def train_for(run_dir: Path, steps: int, args: Sequence[str] = (), base: Sequence[str] = FAST) -> Trainer:
    """A simulated run of `steps` steps in `run_dir` (resuming what a previous call left there), closed after fit."""
    trainer = make_trainer([*args, f"trainer.max_steps={steps}"], run_dir, base)
    trainer.fit()
    trainer.close()
    return trainer


def trained_state(trainer: Trainer) -> dict[str, torch.Tensor]:
    """Everything a resume must reproduce: every group's model, its teacher copies (and their steps), the outer step."""
    out = {}
    for g, w in trainer.workers.items():
        out.update({f"g{g}.{k}": v for k, v in w.model.state_dict().items()})
        out.update({f"g{g}.teacher{p}": c["flat"] for p, c in w.teachers.state_dict().items()})
        out.update({f"g{g}.teacher{p}.step": torch.tensor(c["step"]) for p, c in w.teachers.state_dict().items()})
    if trainer.outer is not None:
        outer = trainer.outer.state_dict()
        for i, (params, buffers, opt) in enumerate(zip(outer["params"], outer["buffers"], outer["optimizers"])):
            out.update({f"outer{i}.params": params, f"outer{i}.buffers": buffers})
            out.update({f"outer{i}.momentum{k}": s["momentum_buffer"] for k, s in opt["state"].items()})
    return out
