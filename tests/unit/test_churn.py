"""Churn and held-out metrics on hand-made predictions, and the codistill-churn command."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from codistill.io import metrics
from codistill.tools import churn as churn_tool
from tests.helpers import make_trainer

# Three models' probabilities on four examples (true labels 0, 1, 2, 0).
P = torch.tensor([
    [[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8], [0.6, 0.3, 0.1]],
    [[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.5, 0.2, 0.3], [0.2, 0.7, 0.1]],
    [[0.1, 0.8, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8], [0.6, 0.3, 0.1]],
])
Y = torch.tensor([0, 1, 2, 0])


def test_churn_between_two_models() -> None:
    top1, l1 = metrics.churn(P[0], P[1])
    assert top1 == pytest.approx(2 / 4)  # examples 2 and 3 differ
    # |diff| summed over classes: 0, 0, 0.4+0.1+0.5, 0.4+0.4+0 -> mean 1.8 / 4
    assert l1 == pytest.approx(1.8 / 4)
    assert metrics.churn(P[0], P[0]) == (0.0, 0.0)


def test_eval_sums_and_summarise_by_hand() -> None:
    per_group, run = metrics.summarise(metrics.eval_sums(P, Y))
    assert [r["eval/acc"] for r in per_group] == pytest.approx([1.0, 0.5, 0.75])
    expected_loss0 = -(math.log(0.8) * 3 + math.log(0.6)) / 4
    assert per_group[0]["eval/loss"] == pytest.approx(expected_loss0)
    ens = P.mean(0)
    assert run["ensemble/acc"] == pytest.approx((ens.argmax(-1) == Y).float().mean().item())
    assert run["ensemble/loss"] == pytest.approx(-torch.log(ens[torch.arange(4), Y]).mean().item())
    pairs = [metrics.churn(P[a], P[b]) for a, b in ((0, 1), (0, 2), (1, 2))]
    assert run["churn/top1"] == pytest.approx(sum(p[0] for p in pairs) / 3)
    assert run["churn/prob_l1"] == pytest.approx(sum(p[1] for p in pairs) / 3)


def test_sums_of_shards_equal_the_whole() -> None:
    whole = metrics.eval_sums(P, Y)
    assert torch.allclose(metrics.eval_sums(P[:, :2], Y[:2]) + metrics.eval_sums(P[:, 2:], Y[2:]), whole)


def test_sequence_predictions_count_every_position() -> None:
    seq = P.reshape(3, 2, 2, 3)  # 2 windows of 2 positions
    assert torch.equal(metrics.eval_sums(seq, Y.reshape(2, 2)), metrics.eval_sums(P, Y))
    assert metrics.churn(seq[0], seq[1]) == pytest.approx(metrics.churn(P[0], P[1]))


def test_one_group_has_no_churn_record() -> None:
    _, run = metrics.summarise(metrics.eval_sums(P[:1], Y))
    assert "churn/top1" not in run and run["ensemble/acc"] == pytest.approx(1.0)


def test_churn_command_between_two_checkpoints(tmp_path: Path, capsys) -> None:
    trainer = make_trainer(["trainer.max_steps=6", "distill.burn_in_steps=2", "distill.exchange_every=2"], tmp_path)
    trainer.fit()
    trainer.close()
    a, b = (tmp_path / "checkpoints" / f"group{g}" / "final.pt" for g in (0, 1))
    churn_tool.main([str(a), str(b), "--json", "--examples", "128"])
    got = json.loads(capsys.readouterr().out)
    x, _ = trainer.data.eval_dataset.__getitems__(range(128))
    probs = torch.stack([torch.softmax(w.predict(x).float(), -1) for w in trainer.workers.values()])
    top1, l1 = metrics.churn(probs[0], probs[1])
    assert got["top1"] == pytest.approx(top1) and got["prob_l1"] == pytest.approx(l1, rel=1e-5)
    assert got["examples"] == 128 and got["dataset"] == "codistill.components.data.synthetic.dataset"
    churn_tool.main([str(a), str(a), "--examples", "128"])
    assert "top-1 disagreement   0.0000" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        churn_tool.main([str(a), str(tmp_path / "nope.pt")])
    assert e.value.code == 2
