"""Padding with loss.ignore_index: micro-batches (trainer.grad_accum) and replicas are weighted by their labelled
positions, so the step's gradient is the one-batch gradient (up to float summation order: compared at 1e-6)."""

from __future__ import annotations

from pathlib import Path

import torch

from codistill.engine.worker import micro_batches
from tests.helpers import ANY_MODEL, REPO, make_trainer

PADDED = [*ANY_MODEL, f"hydra.searchpath=[file://{REPO}/tests/conf]", "data=padded", "model=token_net",
          "loss.ignore_index=-100", "trainer.batch_size=18", "trainer.max_steps=4", "distill.burn_in_steps=1",
          "distill.exchange_every=1", "logger.plots=false", "data.eval_examples=0"]


def params(overrides: list[str], run_dir: Path) -> dict[str, torch.Tensor]:
    trainer = make_trainer(overrides, run_dir, PADDED)
    trainer.fit()
    trainer.close()
    return {f"{g}.{k}": v for g, w in trainer.workers.items() for k, v in w.model.state_dict().items()}


def test_padded_steps_equal_the_one_batch_step_across_replicas_and_micro_batches(tmp_path: Path) -> None:
    one = params(["topology.replicas=1"], tmp_path / "one")
    for name, split in {"3_replicas": ["topology.replicas=3"],
                        "3_replicas_x_3_micro_batches": ["topology.replicas=3", "trainer.grad_accum=3"],
                        "vectorized": ["topology.replicas=3", "trainer.grad_accum=3", "topology.vectorize=true"]}.items():
        got = params(split, tmp_path / name)
        for k in one:
            torch.testing.assert_close(got[k], one[k], rtol=0, atol=1e-6, msg=lambda m: f"{name} {k}: {m}")


def test_dict_inputs_split_into_micro_batches() -> None:
    x = {"ids": torch.arange(12).view(6, 2), "extra": (torch.arange(6), [torch.zeros(6, 1)])}
    parts = micro_batches(x, torch.arange(6), 3)
    assert [p[0]["ids"].tolist() for p in parts] == [[[0, 1], [2, 3]], [[4, 5], [6, 7]], [[8, 9], [10, 11]]]
    assert [p[0]["extra"][0].tolist() for p in parts] == [[0, 1], [2, 3], [4, 5]]
    assert [p[1].tolist() for p in parts] == [[0, 1], [2, 3], [4, 5]]
