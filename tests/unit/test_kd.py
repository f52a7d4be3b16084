"""mode=kd: a frozen teacher from a checkpoint, outside DDP and the optimizer, that never changes; clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from codistill.components import cohort
from codistill.config import ConfigError, validate
from codistill.components.instantiate import build
from tests.helpers import make_config, make_trainer, run_cli


@pytest.fixture(scope="module")
def teacher_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("teacher")
    trainer = make_trainer(["distill=none", "topology.groups=1", "trainer.max_steps=5", "model.hidden=[32]"], run_dir)
    trainer.fit()
    trainer.close()
    return run_dir / "checkpoints" / "group0" / "final.pt"


def _kd(ckpt: Path, run_dir: Path, extra: tuple[str, ...] = ()):
    return make_trainer(
        ["distill=kd", f"distill.teacher_checkpoint={ckpt}", "model.hidden=[16]", "trainer.max_steps=6", *extra], run_dir
    )


@pytest.mark.parametrize("groups", [1, 2])
def test_teacher_is_frozen_outside_the_optimizer_and_never_changes(teacher_ckpt: Path, tmp_path: Path, groups: int) -> None:
    trainer = _kd(teacher_ckpt, tmp_path, (f"topology.groups={groups}",))
    teacher = trainer.workers[0].teachers.model
    assert all(w.teachers.model is teacher for w in trainer.workers.values())  # one teacher, shared
    saved = torch.load(teacher_ckpt, weights_only=True)["model"]
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    assert all(torch.equal(before[k], saved[k]) for k in saved)  # the checkpoint's weights
    trainer.fit()
    trainer.close()
    after = teacher.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # bit-identical
    assert not teacher.training
    assert all(not p.requires_grad and p.grad is None for p in teacher.parameters())
    teacher_ids = {id(p) for p in teacher.parameters()}
    for w in trainer.workers.values():
        in_optimizer = {id(p) for group in w.optimizer.param_groups for p in group["params"]}
        assert not teacher_ids & in_optimizer
        assert not teacher_ids & {id(p) for p in w.model.parameters()}  # the student is its own model
        assert all(m is not teacher for m in w.model.modules())  # the teacher is not inside any student
    assert not any(trainer.schedule.exchange_before(s) for s in range(6))  # nothing is exchanged
    assert trainer.final_eval is not None


def test_distill_term_is_present_from_the_first_step(teacher_ckpt: Path, tmp_path: Path) -> None:
    trainer = _kd(teacher_ckpt, tmp_path, ("topology.groups=1",))
    parts = trainer.workers[0].train_step(0)
    assert parts[2] > 0 and torch.isclose(parts[0], parts[1] + parts[2])  # alpha = 1
    trainer.close()


def test_bare_state_dict_needs_and_uses_teacher_model(tmp_path: Path) -> None:
    bare = tmp_path / "tiny.pt"
    torch.save(build(cohort.preset("hinton_tiny", make_config().data), "model").state_dict(), bare)
    with pytest.raises(ConfigError, match="bare state_dict.*teacher_model"):
        _kd(bare, tmp_path / "a", ("topology.groups=1",))
    trainer = _kd(bare, tmp_path / "b", ("topology.groups=1", "distill.teacher_model=hinton_tiny"))
    assert [m.out_features for m in trainer.workers[0].teachers.model.modules() if isinstance(m, torch.nn.Linear)] == [30, 30, 10]
    trainer.close()


def test_unusable_teacher_checkpoints_are_one_line_config_errors(teacher_ckpt: Path, tmp_path: Path) -> None:
    cfg = make_config(["distill=kd", f"distill.teacher_checkpoint={tmp_path / 'missing.pt'}"])
    with pytest.raises(ConfigError, match="does not exist"):
        validate(cfg, 1)
    with pytest.raises(ConfigError, match="needs distill.teacher_checkpoint"):
        validate(make_config(["distill=kd"]), 1)
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(teacher_ckpt.read_bytes()[:200])
    with pytest.raises(ConfigError, match="corrupt"):
        _kd(corrupt, tmp_path / "c")
    with pytest.raises(ConfigError, match="another architecture or class count"):  # 784-30-30-10 vs a [32] MLP
        _kd(teacher_ckpt, tmp_path / "d", ("distill.teacher_model=hinton_tiny",))
    with pytest.raises(ConfigError, match="different numbers of classes") as e:  # a 10-class teacher, 5-class students
        _kd(teacher_ckpt, tmp_path / "e", ("data.num_classes=5",))
    assert "\n" not in str(e.value)


def test_cli_reports_a_missing_teacher_in_one_line(tmp_path: Path) -> None:
    done = run_cli(["distill=kd", f"distill.teacher_checkpoint={tmp_path / 'nope.pt'}", f"hydra.run.dir={tmp_path}"], timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [f"codistill: error: distill.teacher_checkpoint={tmp_path / 'nope.pt'} does not exist"]
