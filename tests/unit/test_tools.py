"""codistill-plot, codistill-eval and codistill-export on a tiny finished run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from codistill.io import checkpoint
from codistill.tools import evaluate, export, plot
from tests.helpers import make_trainer


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("run")
    trainer = make_trainer(
        ["trainer.max_steps=8", "distill.burn_in_steps=2", "distill.exchange_every=2", "trainer.log_every=2",
         "trainer.eval_every=4"],
        path,
    )
    trainer.fit()
    trainer.close()
    return path


def ckpt(run_dir: Path, g: int) -> Path:
    return run_dir / "checkpoints" / f"group{g}" / "final.pt"


def test_final_checkpoint_is_self_describing(run_dir: Path) -> None:
    c = checkpoint.load(ckpt(run_dir, 1))
    assert {"model", "step", "group", "config"} <= set(c)
    assert c["group"] == 1 and c["step"] == 8 and c["config"]["distill"]["exchange_every"] == 2


def test_plot_writes_every_png(run_dir: Path) -> None:
    written = plot.plot_run(run_dir)
    assert {p.name for p in written} == {"loss.png", "accuracy.png", "distill.png", "staleness.png", "churn.png"}
    assert all(p.stat().st_size > 10_000 for p in written)


def test_plot_keeps_the_later_record_of_a_repeated_step(tmp_path: Path) -> None:
    (tmp_path / "metrics.jsonl").write_text(
        '{"step": 2, "group": 0, "train/loss": 1.0}\n{"step": 2, "group": 0, "train/loss": 0.5}\n'
    )
    assert [r["train/loss"] for r in plot.read_metrics(tmp_path / "metrics.jsonl")] == [0.5]
    assert [p.name for p in plot.plot_run(tmp_path)] == ["loss.png"]


def test_eval_matches_the_runs_final_evaluation(run_dir: Path, capsys) -> None:
    rows, run = evaluate.evaluate([ckpt(run_dir, 0), ckpt(run_dir, 1)], examples=128)
    final = {r["group"]: r for r in plot.read_metrics(run_dir / "metrics.jsonl") if r["step"] == 8}
    assert [r["eval/acc"] for r in rows] == pytest.approx([final[0]["eval/acc"], final[1]["eval/acc"]])
    assert run["ensemble/acc"] == pytest.approx(final[None]["ensemble/acc"])
    assert run["churn/top1"] == pytest.approx(final[None]["churn/top1"])
    evaluate.main([str(ckpt(run_dir, 0)), str(ckpt(run_dir, 1)), "--examples", "128"])
    out = capsys.readouterr().out
    assert "ensemble" in out and "churn: top-1 disagreement" in out


def test_eval_rejects_a_file_that_is_not_a_checkpoint(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pt"
    torch.save({"weights": 1}, bad)
    with pytest.raises(SystemExit) as e:
        evaluate.main([str(bad)])
    assert e.value.code == 2


def test_export_is_a_plain_model_and_a_program(run_dir: Path, tmp_path: Path) -> None:
    written = export.export(ckpt(run_dir, 0), tmp_path)
    plain = torch.load(written["model"], weights_only=True)
    assert set(plain) == {"state_dict", "model_config", "input_shape", "input_dtype", "trained_steps", "group"}
    assert plain["input_shape"] == [32] and plain["input_dtype"] == "float32"
    model = export.load_model(written["model"])
    assert type(model).__module__ == "codistill.components.models.mlp" and not model.training
    original = checkpoint.load(ckpt(run_dir, 0))["model"]
    assert all(torch.equal(v, original[k]) for k, v in model.state_dict().items())
    program = torch.export.load(written["program"]).module()
    x = torch.randn(5, *plain["input_shape"])
    torch.testing.assert_close(program(x), model(x))


def test_end_of_run_plotting_only_warns(tmp_path: Path, caplog) -> None:
    (tmp_path / "metrics.jsonl").write_text("not json\n")
    plot.plot_run_safely(tmp_path)
    assert "plots not written: JSONDecodeError" in caplog.text
