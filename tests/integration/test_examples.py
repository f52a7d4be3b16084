"""The examples' documented commands work end to end (small): a user's own model and data, by import path.

examples/fmnist_resnet: a ResNet on an image folder of PGM files (simulated and under torchrun);
examples/char_transformer: a transformer LM on the built-in KJV characters. Each run must train both groups,
distil, evaluate above chance and write distinct final checkpoints.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Sequence

import pytest
import torch

from codistill.components.data import fashion_mnist, kjv_chars
from codistill.components.data.cache import cache_dir
from tests.helpers import REPO, clean_env, load_final, max_abs_diff

RESNET, TRANSFORMER = REPO / "examples" / "fmnist_resnet", REPO / "examples" / "char_transformer"
# Tiny and short, but past burn-in and across several exchanges.
SCHEDULE = ["trainer.max_steps=30", "trainer.batch_size=32", "trainer.log_every=10", "trainer.eval_every=15",
            "distill.exchange_every=10", "logger.plots=false"]
RESNET_ARGS = ["--config-dir", str(RESNET / "conf"), "model=resnet", "data=fmnist_images", "model.widths=[8,16]",
               *SCHEDULE]

needs_fmnist = pytest.mark.skipif(not fashion_mnist.DEFAULT_ROOT.is_dir(),
                                  reason=f"Fashion-MNIST not installed ({fashion_mnist.INSTALL})")
needs_kjv = pytest.mark.skipif(shutil.which("bible") is None and not (cache_dir() / kjv_chars.FILE).is_file(),
                               reason=f"KJV text not installed ({kjv_chars.INSTALL})")


def run(example: Path, argv: Sequence[str], timeout: float = 120) -> subprocess.CompletedProcess:
    """`argv` (a python -m ... command) as the example's README runs it: the example's package on PYTHONPATH."""
    env = clean_env()
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(example), env.get("PYTHONPATH")) if p)
    return subprocess.run([sys.executable, *argv], capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO)


def check_run(run_dir: Path, target: str, min_acc: float) -> None:
    """Both groups trained (loss fell), distilled and beat `min_acc`; their final models are the user's, and differ."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    for g in (0, 1):
        mine = [r for r in records if r["group"] == g]
        evals = [r for r in mine if "eval/acc" in r]
        assert [r["step"] for r in evals] == [15, 30]
        assert evals[-1]["eval/acc"] > min_acc, evals
        assert mine[-1]["train/loss"] < mine[0]["train/loss"]
        assert any(r["train/distill"] > 0 for r in mine)
    ensemble = [r for r in records if "ensemble/acc" in r]
    assert ensemble[-1]["step"] == 30 and ensemble[-1]["ensemble/acc"] > min_acc
    final = torch.load(run_dir / "checkpoints" / "group0" / "final.pt", weights_only=True)
    assert final["config"]["model"]["_target_"] == target
    assert max_abs_diff(load_final(run_dir, 0), load_final(run_dir, 1)) > 0


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("fmnist_images")
    job = run(RESNET, ["-m", "fmnist_resnet.write_images", str(out), "--per-class", "20"])
    assert job.returncode == 0, job.stderr[-2000:]
    assert len(list(out.glob("train/*/*.pgm"))) == 200 and len(list(out.glob("test/*/*.pgm"))) == 200
    return out


@pytest.fixture(scope="module")
def resnet_run(images: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess, Path]:
    run_dir = tmp_path_factory.mktemp("resnet") / "run"
    job = run(RESNET, ["-m", "codistill.train", *RESNET_ARGS, f"data.train.root={images}", f"hydra.run.dir={run_dir}"])
    return job, run_dir


@needs_fmnist
def test_resnet_on_an_image_folder(resnet_run: tuple[subprocess.CompletedProcess, Path]) -> None:
    job, run_dir = resnet_run
    assert job.returncode == 0, job.stderr[-3000:]
    check_run(run_dir, "fmnist_resnet.models.ResNet", min_acc=0.15)  # 10 classes: chance is 0.1


@needs_fmnist
@pytest.mark.torchrun
def test_resnet_under_torchrun_equals_simulated(
    images: Path, resnet_run: tuple[subprocess.CompletedProcess, Path], tmp_path: Path
) -> None:
    """2 processes = 2 groups x 1 replica; the augmented batches, and so the models, match the one-process run."""
    job = run(RESNET, [
        "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "codistill.train", *RESNET_ARGS,
        f"data.train.root={images}", "topology.groups=2", "topology.timeout_s=30", f"hydra.run.dir={tmp_path}",
    ], timeout=180)
    assert job.returncode == 0, job.stderr[-3000:]
    check_run(tmp_path, "fmnist_resnet.models.ResNet", min_acc=0.15)
    for g in (0, 1):
        assert max_abs_diff(load_final(tmp_path, g), load_final(resnet_run[1], g)) < 1e-5


@needs_kjv
def test_char_transformer_on_kjv(tmp_path: Path) -> None:
    job = run(TRANSFORMER, [
        "-m", "codistill.train", "--config-dir", str(TRANSFORMER / "conf"), "model=char_transformer", "data=kjv_chars",
        "optim=adam", "optim.lr=0.003", "data.train.seq_len=32", "model.dim=32", "model.layers=1", "model.heads=2",
        "data.eval_examples=256", *SCHEDULE, f"hydra.run.dir={tmp_path}",
    ])
    assert job.returncode == 0, job.stderr[-3000:]
    check_run(tmp_path, "char_transformer.model.CharTransformer", min_acc=0.22)  # above the space's 19% frequency
