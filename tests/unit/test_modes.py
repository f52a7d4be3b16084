"""Each distillation mode's loss composition (none, codistill, kd, dml) and the aggregates at G = 2 and G = 3."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from codistill.engine.algorithm import loss_from_logits
from codistill.engine.losses import distill_loss
from tests.helpers import make_trainer, max_abs_diff


def _records(run_dir: Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r.get("group") is not None and "train/loss" in r]


def _fit(overrides: list[str], run_dir: Path):
    trainer = make_trainer(["trainer.log_every=1", *overrides], run_dir)
    trainer.fit()
    trainer.close()
    return trainer


def test_none_is_label_loss_only(tmp_path: Path) -> None:
    trainer = _fit(["distill=none", "trainer.max_steps=4"], tmp_path)
    assert all(not w.teachers.models for w in trainer.workers.values())
    for r in _records(tmp_path):
        assert r["train/distill"] == 0 and r["train/loss"] == pytest.approx(r["train/ce"])


@pytest.mark.parametrize("psi", ["kl", "logit_mse"])
def test_codistill_is_ce_then_ce_plus_alpha_psi_after_burn_in(tmp_path: Path, psi: str) -> None:
    overrides = ["distill=codistill", "distill.burn_in_steps=3", "distill.exchange_every=2", "distill.alpha=0.5",
                 f"distill.psi={psi}", "trainer.max_steps=6"]
    _fit(overrides, tmp_path)
    for r in _records(tmp_path):
        if r["step"] <= 3:  # steps 0..2 are burn-in (records carry the number of completed steps)
            assert r["train/distill"] == 0 and r["train/loss"] == pytest.approx(r["train/ce"])
        else:
            assert r["train/distill"] > 0
            assert r["train/loss"] == pytest.approx(r["train/ce"] + 0.5 * r["train/distill"], rel=1e-5)


def test_dml_distills_from_the_first_step_and_exchanges_every_step(tmp_path: Path) -> None:
    trainer = _fit(["distill=dml", "distill.alpha=2.0", "trainer.max_steps=3"], tmp_path)
    assert trainer.workers[0].loss.aggregate == "mean_kl"
    assert all(trainer.schedule.exchange_before(s) for s in range(3))
    for r in _records(tmp_path):
        assert r["staleness"] == 1  # read after the step: the copies are the peers as they entered it
        assert r["train/distill"] > 0  # from step 0: the groups' initialisations differ
        assert r["train/loss"] == pytest.approx(r["train/ce"] + 2.0 * r["train/distill"], rel=1e-5)


def test_kd_is_ce_plus_alpha_t2_kl_to_the_fixed_teacher() -> None:
    torch.manual_seed(0)
    student, teacher = torch.nn.Linear(6, 4), torch.nn.Linear(6, 4)
    x, y, T = torch.randn(16, 6), torch.randint(0, 4, (16,)), 20.0
    got = loss_from_logits(student(x), [teacher(x).detach()], y, 0.3, T, "kl", "mean_probs")
    z, t = student(x), teacher(x).detach()
    kl = (F.softmax(t / T, -1) * (F.log_softmax(t / T, -1) - F.log_softmax(z / T, -1))).sum(-1).mean()
    torch.testing.assert_close(got.total, F.cross_entropy(z, y) + 0.3 * T**2 * kl)


def test_sequence_logits_are_scored_at_every_position() -> None:
    torch.manual_seed(0)
    student = torch.nn.Embedding(7, 5)  # tokens [B, L] -> logits [B, L, 5]
    x, y = torch.randint(0, 7, (3, 4)), torch.randint(0, 5, (3, 4))
    teacher = torch.randn(3, 4, 5)
    got = loss_from_logits(student(x), [teacher], y, 1.0, 2.0, "kl", "mean_probs")
    z = student(x).reshape(12, 5)
    want = F.cross_entropy(z, y.reshape(12)) + distill_loss(z, [teacher.reshape(12, 5)], 2.0, "kl", "mean_probs")
    torch.testing.assert_close(got.total, want)


def _entropy(p: torch.Tensor) -> torch.Tensor:
    return -(p * p.log()).sum(-1).mean()


@pytest.mark.parametrize("psi", ["kl", "logit_mse"])
def test_mean_kl_and_mean_probs_agree_for_one_peer_and_differ_in_value_for_two(psi: str) -> None:
    torch.manual_seed(1)
    z = torch.randn(32, 6, requires_grad=True)
    peers = [torch.randn(32, 6) * 2 for _ in range(2)]  # G = 3: two peers per group
    T = 2.0
    one = [distill_loss(z, peers[:1], T, psi, agg) for agg in ("mean_kl", "mean_probs")]
    torch.testing.assert_close(one[0], one[1])  # G = 2: identical
    kl_, probs_ = (distill_loss(z, peers, T, psi, agg) for agg in ("mean_kl", "mean_probs"))
    assert kl_.item() > probs_.item() + 1e-3  # G = 3: the per-peer mean is larger (Jensen) ...
    if psi == "kl":  # ... by exactly T^2 * (H(mean of peers) - mean of the peers' entropies)
        p = [F.softmax(t / T, -1) for t in peers]
        gap = T**2 * (_entropy(torch.stack(p).mean(0)) - torch.stack([_entropy(q) for q in p]).mean())
        torch.testing.assert_close(kl_ - probs_, gap)
    # ... yet both psi are linear in the target, so the two aggregates give the student the same gradient.
    g_kl, g_probs = (torch.autograd.grad(v, z)[0] for v in (kl_, probs_))
    torch.testing.assert_close(g_kl, g_probs)


def test_three_group_runs_report_different_losses_but_train_the_same(tmp_path: Path) -> None:
    common = ["distill=dml", "topology.groups=3", "trainer.max_steps=3", "distill.temperature=2.0"]
    runs = {agg: _fit([*common, f"distill.aggregate={agg}"], tmp_path / agg) for agg in ("mean_kl", "mean_probs")}
    reported = {agg: [r["train/distill"] for r in _records(tmp_path / agg)] for agg in runs}
    assert all(a > b for a, b in zip(reported["mean_kl"], reported["mean_probs"]))
    for wa, wb in zip(runs["mean_kl"].workers.values(), runs["mean_probs"].workers.values()):
        assert max_abs_diff(wa.model.state_dict(), wb.model.state_dict()) < 1e-5
