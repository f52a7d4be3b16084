"""Hydra sweeps (one run per point), the Slurm launcher config, the torchrun guard and launch/single_node.sh."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch.distributed as dist
from hydra import compose, initialize_config_dir

from codistill.compose import CONF_DIR
from codistill.train import run
from tests.helpers import FAST, REPO, clean_env, make_config

TINY = ["trainer.max_steps=4", "distill.burn_in_steps=2", "distill.exchange_every=2", "trainer.log_every=2"]


def multirun(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    """`python -m codistill.train --multirun ARGS` (Hydra wants its flags before the overrides)."""
    return subprocess.run(
        [sys.executable, "-m", "codistill.train", "--multirun", *FAST, *TINY, *args],
        capture_output=True, text=True, timeout=180, env=env, cwd=REPO,
    )


def test_multirun_makes_one_run_per_point(tmp_path: Path) -> None:
    r = multirun(["distill.mode=none,codistill", "logger.plots=false", f"hydra.sweep.dir={tmp_path}"], clean_env())
    assert r.returncode == 0, r.stderr[-2000:]
    for point, mode in (("0", "none"), ("1", "codistill")):
        records = [json.loads(line) for line in (tmp_path / point / "metrics.jsonl").read_text().splitlines()]
        assert records[-1]["step"] == 4
        assert (tmp_path / point / "checkpoints" / "group1" / "final.pt").exists()
        assert (mode == "codistill") == any(rec.get("train/distill", 0) > 0 for rec in records)


def test_multirun_under_torchrun_is_refused_before_any_process_group(tmp_path: Path) -> None:
    env = {**clean_env(), "RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0"}
    r = multirun(["seed=0,1", f"hydra.sweep.dir={tmp_path}"], env)
    assert r.returncode == 2
    assert "codistill: error: --multirun under torchrun" in r.stderr


def test_slurm_launcher_config_targets_submitit() -> None:
    make_config()  # registers the schema and resolvers
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=["hydra/launcher=submitit_slurm"], return_hydra_config=True)
    assert cfg.hydra.launcher._target_.endswith("submitit_launcher.SlurmLauncher")
    assert cfg.hydra.launcher.tasks_per_node == 1


def test_demo_experiment_composes() -> None:
    cfg = make_config(["experiment=demo"])
    assert cfg.run_name == "demo" and cfg.distill.exchange_every == 50


def test_single_node_script_runs_torchrun(tmp_path: Path) -> None:
    r = subprocess.run(
        ["bash", "launch/single_node.sh", *FAST, *TINY, "topology.timeout_s=30", f"hydra.run.dir={tmp_path}"],
        capture_output=True, text=True, timeout=180, env={**clean_env(), "NPROC": "2"}, cwd=REPO,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert (tmp_path / "metrics.jsonl").exists() and (tmp_path / "plots" / "loss.png").exists()
    assert (tmp_path / "logs" / "rank1.log").exists()


def test_a_run_refuses_an_already_initialised_process_group(tmp_path: Path, capsys) -> None:
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        with pytest.raises(SystemExit) as e:
            run(make_config(["topology.mode=simulated", *TINY]), tmp_path / "run")
    finally:
        dist.destroy_process_group()
    assert e.value.code == 2
    assert "a process group is already initialised in this process" in capsys.readouterr().err
