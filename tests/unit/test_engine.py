"""Algorithm 1 in simulated mode: burn-in, stale teacher copies, exchange schedule (DESIGN invariants 2 and 3)."""

from pathlib import Path

import torch

from codistill.engine.algorithm import Schedule, loss_from_logits
from tests.helpers import make_trainer

BURN_IN, K = 6, 4


def _trainer(tmp_path: Path, *extra: str):
    return make_trainer(
        [f"distill.burn_in_steps={BURN_IN}", f"distill.exchange_every={K}", "trainer.max_steps=30", *extra], tmp_path
    )


def test_schedule_exchanges_at_burn_in_then_every_k() -> None:
    s = Schedule(True, burn_in_steps=6, exchange_every=4)
    assert [t for t in range(20) if s.exchange_before(t)] == [6, 8, 12, 16]
    assert not any(s.distilling(t) for t in range(6)) and s.distilling(6)
    assert not any(Schedule(False, 0, 1).exchange_before(t) for t in range(5))


def test_no_distillation_before_burn_in_and_present_after(tmp_path: Path) -> None:
    trainer = _trainer(tmp_path)
    w = trainer.workers[0]
    for step in range(BURN_IN):
        assert w.train_step(step)[2].item() == 0.0  # logged distill part
        assert not w.teachers.ready  # no exchange has happened: nothing to distill from
    trainer._exchange(BURN_IN)
    assert w.train_step(BURN_IN)[2].item() > 0.0

    # The gradient carries the distillation term after burn-in: it differs from the label-only gradient.
    x, y = w._batch(BURN_IN + 1, 0)
    d = w.loss  # the distill section's alpha, temperature, psi, aggregate

    def grad(teacher_logits: list) -> torch.Tensor:
        w.model.zero_grad()
        loss_from_logits(w.model(x), teacher_logits, y, d.alpha, d.temperature, d.psi, d.aggregate).total.backward()
        return torch.cat([p.grad.flatten() for p in w.model.parameters()])

    w.model.eval()  # no dropout noise between the two evaluations
    assert not torch.allclose(grad(w.teachers.predict(x)), grad([]))


def test_teacher_copies_are_the_peers_state_at_the_last_exchange(tmp_path: Path) -> None:
    trainer = _trainer(tmp_path)
    taken: dict[int, dict[int, torch.Tensor]] = {}
    exchange = trainer._exchange

    def recording_exchange(step: int) -> None:
        taken[step] = {g: w.flattener.flatten(w.model).clone() for g, w in trainer.workers.items()}
        exchange(step)

    trainer._exchange = recording_exchange
    trainer.fit()
    last = max(taken)
    assert sorted(taken) == [6, 8, 12, 16, 20, 24, 28]
    for g, w in trainer.workers.items():
        for peer, copy in w.teachers.models.items():
            assert w.teachers.source_step[peer] == last
            held = w.teachers.flattener[peer].flatten(copy)
            assert torch.equal(held, taken[last][peer])  # exactly the peer at the exchange...
            live = trainer.workers[peer].flattener.flatten(trainer.workers[peer].model)
            assert not torch.equal(held, live)  # ...not the peer now, 2 steps later
            assert not any(p.requires_grad for p in copy.parameters()) and not copy.training


def test_groups_differ_and_single_group_is_plain_training(tmp_path: Path) -> None:
    trainer = _trainer(tmp_path, "topology.groups=3")
    trainer.fit()
    prints = {w.fingerprint() for w in trainer.workers.values()}
    assert len(prints) == 3
    solo = _trainer(tmp_path / "solo", "topology.groups=1")
    assert not solo.schedule.enabled
    solo.fit()
    assert not solo.workers[0].teachers.models


def test_metrics_and_final_checkpoints(tmp_path: Path) -> None:
    import json

    trainer = _trainer(tmp_path, "trainer.eval_every=10")
    trainer.fit()
    trainer.close()
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    group_records = [r for r in records if r["group"] is not None]
    assert {"step", "group", "train/loss", "train/ce", "train/distill", "staleness"} <= group_records[0].keys()
    evals = [r for r in group_records if "eval/acc" in r]
    assert {r["step"] for r in evals} == {10, 20, 30} and {r["group"] for r in evals} == {0, 1}
    assert any(r["train/distill"] > 0 for r in group_records) and all(
        r["train/distill"] == 0 for r in group_records if r["step"] <= BURN_IN
    )
    run_records = [r for r in records if r["group"] is None]
    assert {"ensemble/acc", "churn/top1", "churn/prob_l1"} <= run_records[-1].keys()
    for g in (0, 1):
        ckpt = torch.load(tmp_path / "checkpoints" / f"group{g}" / "final.pt", weights_only=True)
        assert ckpt["step"] == 30 and ckpt["group"] == g and ckpt["config"]["distill"]["exchange_every"] == K
        assert ckpt["model"].keys() == trainer.workers[g].model.state_dict().keys()
