"""A resume that changes what fixes the trajectory (seed, batch, resolved schedule, data options, model,
vectorize) is refused with one line naming the key and both values, unless trainer.resume_allow_changes names it;
a longer run keeps the burn-in it started with."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from codistill import train
from codistill.io import checkpoint
from tests.helpers import make_config

FIRST = ["topology.mode=simulated", "trainer.max_steps=10", "logger.plots=false"]  # burn-in: null = 10% = 1 step


def run(run_dir: Path, *extra: str) -> None:
    train.run(make_config([*FIRST, *extra]), run_dir)


def refusal(run_dir: Path, capsys: pytest.CaptureFixture, *extra: str) -> str:
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run(run_dir, *extra)
    assert exit_info.value.code == 2
    (line,) = [x for x in capsys.readouterr().err.splitlines() if x.startswith("codistill: error:")]
    return line


def trajectory(run_dir: Path) -> dict[str, str]:
    newest = checkpoint.complete_checkpoints(run_dir / "checkpoints")[0]
    return json.loads((newest / checkpoint.MANIFEST).read_text())["trajectory"]


def test_resume_refuses_drift_unless_allowed_and_keeps_the_burn_in(tmp_path: Path, capsys) -> None:
    run_dir = tmp_path / "run"
    run(run_dir)
    assert trajectory(run_dir)["distill.burn_in_steps"] == "1" and trajectory(run_dir)["seed"] == "0"
    ckpt = checkpoint.complete_checkpoints(run_dir / "checkpoints")[0]

    line = refusal(run_dir, capsys, "seed=1", "trainer.max_steps=20")
    assert line == (f"codistill: error: resume checkpoint {ckpt} was written with seed=0, this run has seed=1: resume "
                    "with the same value, or allow the change with trainer.resume_allow_changes=[seed]")
    assert "trainer.batch_size=32, this run has trainer.batch_size=64" in refusal(
        run_dir, capsys, "trainer.batch_size=64", "trainer.max_steps=20")
    assert "distill.burn_in_steps=1, this run has distill.burn_in_steps=3" in refusal(
        run_dir, capsys, "distill.burn_in_steps=3", "trainer.max_steps=20")
    assert "data.label_noise=0.0, this run has data.label_noise=0.1" in refusal(
        run_dir, capsys, "data.label_noise=0.1", "trainer.max_steps=20")
    assert "written by another model, with model=" in refusal(run_dir, capsys, "model.hidden=[16]", "trainer.max_steps=20")
    line = refusal(run_dir, capsys, "topology.vectorize=true", "trainer.resume_allow_changes=[topology.vectorize]",
                   "trainer.max_steps=20")
    assert "topology.vectorize=false, this run has topology.vectorize=true: it cannot change on resume" in line
    assert "names seeds, which no checkpoint records" in refusal(run_dir, capsys, "trainer.resume_allow_changes=[seeds]",
                                                                 "trainer.max_steps=20")

    run(run_dir, "trainer.max_steps=20")  # twice the steps, default burn-in: still 1 step (not 2), as recorded
    assert trajectory(run_dir)["distill.burn_in_steps"] == "1"
    assert "(burn-in 1 steps)" in (run_dir / "logs" / "rank0.log").read_text().split("resumed from checkpoint")[1]
    run(run_dir, "trainer.max_steps=30", "seed=1", "trainer.resume_allow_changes=[seed]")  # named: allowed
    assert trajectory(run_dir)["seed"] == "1"
