"""A Hugging Face causal LM (transformers' LlamaForCausalLM, tied embeddings) trained with its output layer fused
into the chunked loss: simulated == torchrun (2 groups x 2 replicas, gloo) within 1e-5, resume bit for bit, the
embeddings still tied; and the one logged line when a model's output layer cannot be fused."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from tests.helpers import ANY_MODEL, REPO, load_final, make_trainer, max_abs_diff, run_torchrun, train_for, trained_state

LM = [*ANY_MODEL, f"hydra.searchpath=[file://{REPO}/tests/conf]", "data=tokens", "model=tiny_llama"]
# exchanges before steps 2, 4, 8: a run resumed at step 6 must restore the copies of step 4 from its checkpoint
ARGS = ["topology.groups=2", "trainer.batch_size=8", "distill.burn_in_steps=2", "distill.exchange_every=4",
        "distill.temperature=2", "optim.lr=0.5", "loss.output_layer=auto", "loss.chunk_tokens=24",
        "logger.plots=false", "data.eval_examples=0"]


@pytest.mark.torchrun
def test_fused_llama_simulated_equals_torchrun_and_resumes_exactly(tmp_path: Path) -> None:
    straight = train_for(tmp_path / "simulated", 12, [*ARGS, "topology.replicas=2"], LM)
    for w in straight.workers.values():
        assert w.head == "lm_head"  # fused, not fallen back
        assert w.model.lm_head.weight is w.model.model.embed_tokens.weight  # still tied
    train_for(tmp_path / "resumed", 6, [*ARGS, "topology.replicas=2"], LM)
    resumed = train_for(tmp_path / "resumed", 12, [*ARGS, "topology.replicas=2"], LM)
    assert resumed.start_step == 6
    after, before = trained_state(resumed), trained_state(straight)
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], before[k]) for k in before)
    job = run_torchrun(4, [*ARGS, "trainer.max_steps=12", f"hydra.run.dir={tmp_path / 'torchrun'}"], base=LM)
    assert job.returncode == 0, job.stderr[-3000:]
    for g in (0, 1):
        final = load_final(tmp_path / "torchrun", g)
        assert max_abs_diff(final, load_final(tmp_path / "simulated", g)) < 1e-5
    logs = (tmp_path / "torchrun" / "logs" / "rank0.log").read_text()
    assert "loss.output_layer=auto: lm_head runs inside the chunked loss" in logs


def test_unfusable_output_layer_falls_back_with_one_line(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="codistill"):
        trainer = make_trainer(["topology.groups=2", "trainer.max_steps=2", "distill.burn_in_steps=1",
                                "model._target_=tests.lm_components.CappedLM", "~model.config", "+model.vocab=64",
                                "loss.output_layer=head", "loss.chunk_tokens=8"], tmp_path, LM)
        trainer.fit()
        trainer.close()
    lines = [r.getMessage() for r in caplog.records if "loss.output_layer" in r.getMessage()]
    assert lines == ["loss.output_layer=head: not fused, the loss chunks the full logits instead, because its output "
                     "layer 'head' is a ScaledLinear, not a plain nn.Linear"]


@pytest.mark.torchrun
def test_fused_head_on_fsdp_groups_equals_simulated(tmp_path: Path) -> None:
    """FSDP2 groups: the student's output layer is gathered once per step and its gradient averaged into the
    shards (tied: added to the embedding's); teacher copies gather theirs."""
    args = [*ARGS, "trainer.max_steps=6", "trainer.grad_accum=2"]
    job = run_torchrun(4, [*args, "topology.strategy=fsdp", f"hydra.run.dir={tmp_path / 'fsdp'}"], base=LM)
    assert job.returncode == 0, job.stderr[-3000:]
    trainer = make_trainer([*args, "topology.replicas=2"], tmp_path / "simulated", LM)
    trainer.fit()
    trainer.close()
    for g in (0, 1):
        assert max_abs_diff(load_final(tmp_path / "fsdp", g), load_final(tmp_path / "simulated", g)) < 1e-5
    assert "lm_head runs inside the chunked loss" in (tmp_path / "fsdp" / "logs" / "rank0.log").read_text()
    # evaluation with sharded heads (gathered per batch) scores what the simulated run scores
    records = [json.loads(line) for line in (tmp_path / "fsdp" / "metrics.jsonl").read_text().splitlines()]
    final = [r for r in records if "ensemble/loss" in r][-1]
    for key, value in trainer.final_eval[1].items():
        if key.startswith(("ensemble", "churn")):
            assert final[key] == pytest.approx(value, abs=1e-5), key
