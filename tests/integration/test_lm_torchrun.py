"""A Hugging Face causal LM on Hugging Face dict rows, as a user brings them, under real torchrun.

tests/lm_components.hf_rows is a `datasets.Dataset` (with_format("torch")) of rows {input_ids, attention_mask,
labels = input_ids} padded with -100; the model a transformers LlamaForCausalLM built from a nested LlamaConfig with
tied embeddings. 2 groups x 2 replicas, 2 micro-batches per replica: torchrun == simulated, and a simulated run
stopped and resumed continues bit for bit (through the filesystem exchange).
"""

import json
import math
from pathlib import Path

import pytest
import torch

from codistill.tools.evaluate import evaluate
from codistill.tools.plot import plot_run
from tests.helpers import REPO, load_final, max_abs_diff, run_cli, run_torchrun, train_for

pytest.importorskip("transformers")
pytest.importorskip("datasets")

LM = [f"hydra.searchpath=[file://{REPO}/tests/conf]", "data=hf_rows", "model=tiny_llama", "loss.ignore_index=-100",
      "trainer.batch_size=8", "trainer.grad_accum=2", "trainer.log_every=4", "trainer.eval_every=0",
      "data.eval_examples=16", "optim.name=adam", "optim.lr=0.01", "distill.burn_in_steps=2",
      "distill.exchange_every=3", "logger.plots=false"]


@pytest.mark.torchrun
def test_hf_rows_and_llama_torchrun_equals_simulated(tmp_path: Path) -> None:
    dist_dir, sim_dir = tmp_path / "torchrun", tmp_path / "simulated"
    job = run_torchrun(4, ["trainer.max_steps=8", "topology.groups=2", f"hydra.run.dir={dist_dir}"], base=LM)
    assert job.returncode == 0, job.stderr[-3000:]
    sim = run_cli(["trainer.max_steps=8", "topology.groups=2", "topology.replicas=2", f"hydra.run.dir={sim_dir}"],
                  base=LM)
    assert sim.returncode == 0, sim.stderr[-3000:]
    for g in (0, 1):
        assert max_abs_diff(load_final(dist_dir, g), load_final(sim_dir, g)) < 1e-5
    assert max_abs_diff(load_final(dist_dir, 0), load_final(dist_dir, 1)) > 1e-3  # the groups differ
    # codistill-eval scores a final.pt as the run did: shifted labels, padding ignored
    records = [json.loads(line) for line in (sim_dir / "metrics.jsonl").read_text().splitlines()]
    rows, _ = evaluate([sim_dir / "checkpoints" / f"group{g}" / "final.pt" for g in (0, 1)], examples=16)
    for g in (0, 1):
        logged = [r["eval/loss"] for r in records if r.get("group") == g and "eval/loss" in r][-1]
        assert abs(rows[g]["eval/loss"] - logged) < 1e-5
    # language-model metrics: perplexities of the per-token losses, tokens per second; the perplexity plot
    last = [r for r in records if r["step"] == 8]
    for r in last:
        key = "eval" if r["group"] is not None else "ensemble"
        assert r[f"{key}/ppl"] == pytest.approx(math.exp(r[f"{key}/loss"]))
    assert all(r["train/tokens_per_s"] > 0 and "train/ppl" in r for r in last if r["group"] is not None)
    assert (sim_dir / "plots" / "perplexity.png") in plot_run(sim_dir)
    # The tied input/output embedding travels once: the exchange moves the distinct parameters, in float32.
    state = load_final(dist_dir, 0)
    assert torch.equal(state["lm_head.weight"], state["model.embed_tokens.weight"])
    unique = sum(v.numel() for k, v in state.items() if k != "lm_head.weight")
    log = (dist_dir / "logs" / "rank0.log").read_text()
    assert f"sent {4 * unique} bytes to each of 1 peer group(s)" in log


def test_hf_rows_and_llama_resume_bit_exact(tmp_path: Path) -> None:
    args = ["topology.replicas=2", "trainer.checkpoint_every=4", "distill.exchange=filesystem"]

    straight = train_for(tmp_path / "straight", 8, args, LM)
    train_for(tmp_path / "resumed", 4, args, LM)
    resumed = train_for(tmp_path / "resumed", 8, args, LM)
    assert resumed.start_step == 4
    for g in (0, 1):
        a, b = straight.workers[g].model.state_dict(), resumed.workers[g].model.state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a)
        assert straight.workers[g].teachers.state_dict()[1 - g]["step"] == 6
        assert torch.equal(straight.workers[g].teachers.state_dict()[1 - g]["flat"],
                           resumed.workers[g].teachers.state_dict()[1 - g]["flat"])
