"""model_per_group: heterogeneous cohorts, presets, and the one-line errors for cohorts that cannot work."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from codistill import cohort
from codistill.config import ConfigError, validate
from tests.helpers import make_config, make_trainer


def _widths(model: torch.nn.Module) -> list[int]:
    return [m.out_features for m in model.modules() if isinstance(m, torch.nn.Linear)]


def test_hinton_presets() -> None:
    teacher, student, tiny = (cohort.preset(n) for n in ("hinton_teacher", "hinton_student", "hinton_tiny"))
    assert (list(teacher.hidden), teacher.dropout, teacher.input_dropout) == ([1200, 1200], 0.5, 0.2)
    assert (list(student.hidden), student.dropout) == ([800, 800], 0.0)
    assert list(tiny.hidden) == [30, 30]
    cfg = make_config(["data=mnist", "model=hinton_teacher"])
    assert (cfg.model.dropout, cfg.model.input_dropout) == (0.5, 0.2)


def test_heterogeneous_cohort_trains_each_groups_model(tmp_path: Path) -> None:
    trainer = make_trainer(
        ["model_per_group=[hinton_tiny,{name:mlp,hidden:[16]}]", "trainer.max_steps=4", "distill.burn_in_steps=1",
         "distill.exchange_every=1"],
        tmp_path,
    )
    w0, w1 = trainer.workers[0], trainer.workers[1]
    assert _widths(w0.model) == [30, 30, 10] and _widths(w1.model) == [16, 10]
    assert _widths(w0.teachers.models[1]) == [16, 10] and _widths(w1.teachers.models[0]) == [30, 30, 10]
    sizes = cohort.state_sizes(lambda g: trainer.workers[g].model, 2)
    assert sizes == [w0.flattener.numel, w1.flattener.numel] and sizes[0] != sizes[1]
    trainer.fit()
    trainer.close()
    assert all(w.teachers.ready for w in (w0, w1)) and trainer.final_eval is not None


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["model_per_group=[hinton_tiny]"], "lists 1 models for topology.groups=2"),
        (["model_per_group=[hinton_tiny,nope]"], "model preset 'nope' does not exist"),
        (["model_per_group=[{name:mlp,num_classes:10},{name:mlp,num_classes:5}]"], "different class counts"),
        (["model_per_group=[hinton_tiny,{name:mlp,widths:[3]}]"], r"model_per_group\[1\]"),
        (["model=cnn", "data=kjv_chars"], "cannot train on data=kjv_chars"),
        (["model=char_lstm"], "cannot train on data=synthetic"),
        (["model_per_group=[hinton_tiny,char_lstm]"], r"model_per_group\[1\].name=char_lstm cannot train"),
        (["data.seq_len=0"], "data.seq_len=0 must be >= 1"),
    ],
)
def test_bad_cohorts_are_one_line_config_errors(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as e:
        validate(make_config(overrides), 1)
    assert "\n" not in str(e.value)


def test_declared_class_count_must_match_the_data(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="num_classes=5 but the data has 10 classes"):
        make_trainer(["model.num_classes=5"], tmp_path)
