"""The step's hot path: no host syncs, graph-free teachers, and the shared-softmax loss equals the textbook one."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

import pytest
import torch
import torch.nn.functional as F

from codistill.engine.algorithm import loss_from_logits
from tests.helpers import make_trainer

SYNCS = ("item", "tolist", "__bool__", "__float__", "__int__", "numpy")


@contextlib.contextmanager
def host_syncs_forbidden() -> Iterator[None]:
    """Make every Tensor -> Python value conversion raise (the calls that would wait for a GPU)."""
    saved = {name: getattr(torch.Tensor, name) for name in SYNCS}

    def forbid(name: str):
        def raise_(*args, **kwargs):
            raise AssertionError(f"host sync in the hot path: Tensor.{name}")

        return raise_

    try:
        for name in SYNCS:
            setattr(torch.Tensor, name, forbid(name))
        yield
    finally:
        for name, fn in saved.items():
            setattr(torch.Tensor, name, fn)


# the chunked loss with the MLP's last layer fused (loss.output_layer) syncs no more than the unchunked one
FUSED = ["loss.output_layer=net.3", "loss.chunk_tokens=10"]


@pytest.mark.parametrize(("aggregate", "loss"), [("mean_probs", []), ("mean_kl", []), ("mean_kl", FUSED)])
def test_train_step_makes_no_host_sync(tmp_path: Path, aggregate: str, loss: list[str]) -> None:
    trainer = make_trainer(
        ["topology.groups=3", "topology.replicas=2", "distill.burn_in_steps=0", f"distill.aggregate={aggregate}",
         *loss],
        tmp_path,
    )
    trainer._exchange(0)
    # The input pipeline's CPU-side work (indexing, label checks: on CPU tensors, in loader workers when
    # data.num_workers > 0) is not the device step: fetch the batches first.
    batches = {(w.group, s, r): w._batch(s, r) for w in trainer.workers.values() for s in range(2) for r in range(2)}
    for w in trainer.workers.values():
        w._batch = lambda step, r, g=w.group: batches[(g, step, r)]
    with host_syncs_forbidden():
        for step in range(2):
            for w in trainer.workers.values():
                w.train_step(step)


def test_teacher_predictions_carry_no_graph(tmp_path: Path) -> None:
    trainer = make_trainer(["distill.burn_in_steps=0"], tmp_path)
    trainer._exchange(0)
    w = trainer.workers[0]
    x, _ = w._batch(0, 0)
    (logits,) = w.teachers.predict(x)
    assert not logits.requires_grad and logits.grad_fn is None


@pytest.mark.parametrize("temperature", [1.0, 2.5])
@pytest.mark.parametrize("aggregate", ["mean_probs", "mean_kl"])
def test_loss_matches_the_textbook_formula(temperature: float, aggregate: str) -> None:
    torch.manual_seed(0)
    student = torch.nn.Linear(6, 5)
    x, y = torch.randn(8, 6), torch.randint(0, 5, (8,))
    teachers = [torch.randn(8, 5), torch.randn(8, 5)]
    got = loss_from_logits(student(x), teachers, y, 0.7, temperature, "kl", aggregate)
    z = student(x)

    def kl_to_probs(z: torch.Tensor, q: torch.Tensor, t: float) -> torch.Tensor:  # T^2 KL(q || softmax(z / T))
        return t**2 * F.kl_div(F.log_softmax(z / t, -1), q, reduction="batchmean")

    if aggregate == "mean_probs":
        soft = kl_to_probs(z, torch.stack([F.softmax(t / temperature, -1) for t in teachers]).mean(0), temperature)
    else:
        soft = torch.stack([kl_to_probs(z, F.softmax(t / temperature, -1), temperature) for t in teachers]).mean()
    want = F.cross_entropy(z, y) + 0.7 * soft
    torch.testing.assert_close(got.total, want)
    g_got = torch.autograd.grad(got.total, student.weight)[0]
    g_want = torch.autograd.grad(want, student.weight)[0]
    torch.testing.assert_close(g_got, g_want)
