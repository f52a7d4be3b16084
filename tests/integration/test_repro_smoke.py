"""Every reproduction script runs end to end (--smoke: tiny runs; the numbers mean nothing, the code paths run)."""

import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO, clean_env

SCRIPTS = REPO / "scripts" / "repro"


def smoke(script: str, out: Path, *args: str) -> str:
    job = subprocess.run(
        [sys.executable, str(SCRIPTS / script), "--smoke", "--out", str(out), *args],
        capture_output=True, text=True, timeout=600, env=clean_env(), cwd=REPO,
    )
    assert job.returncode == 0, job.stderr[-3000:]
    return job.stdout


def test_anil_churn_and_weight_decay_share_runs(tmp_path: Path) -> None:
    out = smoke("anil.py", tmp_path, "--variants", "baseline", "shared", "k1")
    assert "| baseline (independent) |" in out and "| codistill K=1 shared |" in out
    assert (tmp_path / "table.md").read_text().startswith("## Anil et al. 2018")
    assert (tmp_path / "eval_loss.png").stat().st_size > 0
    assert "top-1 churn between retrains" in smoke("churn.py", tmp_path)
    assert (tmp_path / "churn" / "table.md").exists()
    assert "| 0.001 |" in smoke("sodhani_weight_decay.py", tmp_path)


def test_anil_on_the_character_language_model(tmp_path: Path) -> None:
    out = smoke("anil.py", tmp_path, "--experiment", "anil_kjv", "--variants", "baseline", "disjoint")
    assert "KJV character-level LSTM LM" in out


def test_dml_writes_its_table_and_curves(tmp_path: Path) -> None:
    smoke("dml.py", tmp_path)
    assert (tmp_path / "table.md").exists() and (tmp_path / "eval_acc.png").exists()


def test_hinton_writes_the_three_tables(tmp_path: Path) -> None:
    out = smoke("hinton_mnist.py", tmp_path, "--seeds", "1")
    assert "| student distilled (T = 20, lr 0.01) |" in out and "seeds whose three runs finished" in out
    assert "class-3 bias (chosen on validation)" in (tmp_path / "digit3" / "table.md").read_text()
    assert "| T = 2.5 |" in (tmp_path / "temperature" / "table.md").read_text()
    assert (tmp_path / "eval_acc.png").exists() and (tmp_path / "temperature" / "eval_acc.png").exists()


def test_baselines_table_has_every_variant_and_its_bytes(tmp_path: Path) -> None:
    out = smoke("baselines.py", tmp_path, "--seeds", "1")
    for label in ("independent groups", "codistillation", "post-local SGD", "synchronous SGD / DDP"):
        assert f"| {label}" in out
    assert "| 0.0 | 0.0 |" in out  # independent groups communicate nothing


def test_low_comm_table_has_every_method_tuned_on_held_out_training_examples(tmp_path: Path) -> None:
    out = smoke("low_comm.py", tmp_path, "--seeds", "1")
    for label in ("synchronous SGD", "local SGD", "DiLoCo", "codistillation (G=2", "codistillation (G=4"):
        assert f"| {label}" in out
    assert "validation loss" in (tmp_path / "tune" / "table.md").read_text()
    assert (tmp_path / "eval_loss.png").stat().st_size > 0


def test_exchange_quality_pairs_each_factor_and_reads_bytes_from_the_metrics(tmp_path: Path) -> None:
    out = smoke("exchange_quality.py", tmp_path, "--seeds", "1", "--codecs", "none", "int8")
    assert "| independent | - | - | - |" in out and "| codistill | int8 | 4 | 4 |" in out
    for factor in ("codec int8 vs none | 4 |", "F = 4 vs 1 | 4 |", "tau = 4 vs 0 | 4 |"):
        assert f"| {factor}" in out
    assert "| 0.0 |" in out  # independent groups send nothing


def test_regime_scripts(tmp_path: Path) -> None:
    """Noisy labels on a subset, the batch sweep, long runs and the K-spike check, one seed each."""
    out = smoke("noisy_labels.py", tmp_path / "noisy", "--seeds", "1", "--noise", "0.4", "--examples", "5000")
    for label in ("independent (G=2)", "codistill (G=4)", "DML (G=2)"):
        assert f"| 0.4 | 5,000 | {label} |" in out
    assert (tmp_path / "noisy" / "noise0.4_n5000_20steps" / "eval_acc.png").exists()
    out = smoke("large_batch.py", tmp_path / "batch", "--seeds", "1")
    assert "| (iii) codistill, 2 groups x 16 |" in out and (tmp_path / "batch" / "steps_to_target.png").exists()
    assert "| codistill K=50 |" in smoke("long_runs.py", tmp_path / "long", "--seeds", "1")
    out = smoke("k_spikes.py", tmp_path / "spikes", "--seeds", "1", "--momentum", "0.9", "--k", "5")
    assert "all on schedule" in out and "| 0.9 | independent |" in out


def test_group_failure_kills_a_group_and_reports_each_outcome(tmp_path: Path) -> None:
    out = smoke("group_failure.py", tmp_path)
    assert "| DiLoCo (G=2) | torchrun, 2 ranks |" in out
    assert "| codistillation (G=2), separate jobs |" in out and "group 0 finished all 60 steps" in out
    assert "refused before start (exit 2): `codistill: error: distill.mode=diloco needs every group" in out
