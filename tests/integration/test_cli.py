"""The installed command works from any directory (configs ship inside the package), and --help helps."""

import subprocess
import sys
from pathlib import Path

from tests.helpers import FAST, REPO, clean_env


def test_train_from_another_directory(tmp_path: Path) -> None:
    job = subprocess.run(
        [sys.executable, "-m", "codistill.train", *FAST, "trainer.max_steps=6", "distill.burn_in_steps=2",
         "logger.plots=false", "hydra.run.dir=run"],
        capture_output=True, text=True, timeout=180, env=clean_env(), cwd=tmp_path,
    )
    assert job.returncode == 0, job.stderr[-2000:]
    assert (tmp_path / "run" / "checkpoints" / "group1" / "final.pt").exists()


def test_a_typo_beside_a_users_config_dir_is_one_line(tmp_path: Path) -> None:
    job = subprocess.run(
        [sys.executable, "-m", "codistill.train", "--config-dir", str(REPO / "tests" / "conf"), "data=blobs",
         "model=dict_net", "trainer.max_step=3"],
        capture_output=True, text=True, timeout=120, env=clean_env(), cwd=REPO,
    )
    assert job.returncode == 2
    assert job.stderr.strip().splitlines() == [
        "codistill: error: Could not override 'trainer.max_step'.; Key 'max_step' not in 'TrainerConfig'"
    ]


def test_help_lists_groups_and_examples(tmp_path: Path) -> None:
    job = subprocess.run([sys.executable, "-m", "codistill.train", "--help"], capture_output=True, text=True,
                         timeout=120, env=clean_env(), cwd=tmp_path)
    assert job.returncode == 0
    assert "torchrun --standalone" in job.stdout and "distill: " in job.stdout and "docs/configuration.md" in job.stdout
