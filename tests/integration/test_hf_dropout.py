"""A Hugging Face GPT-2 with its default dropout: the same numbers simulated and under torchrun, and on resume.

GPT-2 draws dropout masks in its embeddings, residual branches and attention (SDPA's dropout_p), and ties its input
and output embeddings. With one replica per group a simulated process once shared one stream among its groups,
while each torchrun rank had its own; every replica now draws from its own stream in both modes.
"""

from pathlib import Path

import pytest
import torch

from tests.helpers import ANY_MODEL, REPO, load_final, max_abs_diff, run_cli, run_torchrun, train_for, trained_state
from tests.integration.test_examples import needs_kjv

pytest.importorskip("transformers", reason="the Hugging Face model needs transformers (pip install codistill[hf])")

HF = [*ANY_MODEL, f"hydra.searchpath=[file://{REPO}/tests/conf]", "model=gpt2_tiny", "data=kjv_chars",
      "data.train.seq_len=16", "optim=sgd", "optim.lr=0.1", "logger.plots=false"]
# Past burn-in (step 8) and across exchanges before steps 8 and 14: the distillation phase with dropout in the
# student's forward and teacher forwards drawn in between.
SCHEDULE = ["trainer.max_steps=20", "distill.burn_in_steps=8", "distill.exchange_every=6", "topology.groups=2"]
HOST_DRAW = "draws from Python's `random` or numpy's global generator"


@needs_kjv
@pytest.mark.torchrun
@pytest.mark.parametrize("replicas", [1, 2])
def test_gpt2_dropout_simulated_equals_torchrun(tmp_path: Path, replicas: int) -> None:
    dist_dir, sim_dir = tmp_path / "torchrun", tmp_path / "simulated"
    job = run_torchrun(2 * replicas, [*SCHEDULE, f"hydra.run.dir={dist_dir}"], base=HF)
    assert job.returncode == 0, job.stderr[-3000:]
    sim = run_cli([*SCHEDULE, f"topology.replicas={replicas}", f"hydra.run.dir={sim_dir}"], base=HF)
    assert sim.returncode == 0, sim.stderr[-3000:]
    finals = [load_final(dist_dir, g) for g in (0, 1)]
    assert all(torch.equal(f["transformer.wte.weight"], f["lm_head.weight"]) for f in finals)  # still tied
    for g in (0, 1):
        assert max_abs_diff(finals[g], load_final(sim_dir, g)) < 1e-5  # the tolerance of models without dropout
    assert max_abs_diff(finals[0], finals[1]) > 1e-2  # two different models, not one stream copied
    logs = [p.read_text() for p in [*(dist_dir / "logs").glob("rank*.log"), *(sim_dir / "logs").glob("rank*.log")]]
    assert len(logs) == 2 * replicas + 1 and not any(HOST_DRAW in text for text in logs)


@needs_kjv
def test_gpt2_dropout_resume_is_bit_identical(tmp_path: Path) -> None:
    args = [*SCHEDULE, "trainer.checkpoint_every=10", "optim=adam", "optim.lr=0.003"]
    straight = trained_state(train_for(tmp_path / "straight", 20, args, HF))
    train_for(tmp_path / "resumed", 10, args, HF)
    resumed = train_for(tmp_path / "resumed", 20, args, HF)
    assert resumed.start_step == 10
    after = trained_state(resumed)
    assert after.keys() == straight.keys()
    assert all(torch.equal(after[k], straight[k]) for k in after), [k for k in after if not torch.equal(after[k], straight[k])]
