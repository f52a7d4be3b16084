"""model_per_group: heterogeneous cohorts, presets, and the one-line errors for cohorts that cannot work."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from codistill.build import validate_components
from codistill.components import cohort
from codistill.config import ConfigError, validate
from codistill.engine.teachers import state_sizes
from tests.helpers import ANY_MODEL, make_config, make_trainer


def _widths(model: torch.nn.Module) -> list[int]:
    return [m.out_features for m in model.modules() if isinstance(m, torch.nn.Linear)]


def test_hinton_presets() -> None:
    cfg = make_config(["data=mnist"])
    teacher, student, tiny = (cohort.preset(n, cfg.data) for n in ("hinton_teacher", "hinton_student", "hinton_tiny"))
    assert (list(teacher.hidden), teacher.dropout, teacher.input_dropout) == ([1200, 1200], 0.5, 0.2)
    assert (list(student.hidden), student.dropout) == ([800, 800], 0.0)
    assert list(tiny.hidden) == [30, 30] and list(tiny.input_shape) == [1, 28, 28]  # sized by the run's data
    cfg = make_config(["data=mnist", "model=hinton_teacher"])
    assert (cfg.model.dropout, cfg.model.input_dropout) == (0.5, 0.2)


MLP16 = "{_target_:codistill.components.models.MLP,input_shape:[32],num_classes:10,hidden:[16]}"


def test_heterogeneous_cohort_trains_each_groups_model(tmp_path: Path) -> None:
    trainer = make_trainer(
        [f"model_per_group=[hinton_tiny,{MLP16}]", "trainer.max_steps=4", "distill.burn_in_steps=1",
         "distill.exchange_every=1"],
        tmp_path,
    )
    w0, w1 = trainer.workers[0], trainer.workers[1]
    assert _widths(w0.model) == [30, 30, 10] and _widths(w1.model) == [16, 10]
    assert _widths(w0.teachers.models[1]) == [16, 10] and _widths(w1.teachers.models[0]) == [30, 30, 10]
    sizes = state_sizes(lambda g: trainer.workers[g].model, 2)
    assert sizes == [w0.flattener.numel, w1.flattener.numel] and sizes[0] != sizes[1]
    trainer.fit()
    trainer.close()
    assert all(w.teachers.ready for w in (w0, w1)) and trainer.final_eval is not None


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["model_per_group=[hinton_tiny]"], "lists 1 models for topology.groups=2"),
        (["model_per_group=[hinton_tiny,nope]"], "model preset 'nope' does not exist"),
        (["model_per_group=[hinton_tiny,{_target_:codistill.components.models.MLP,widths:[3]}]"],
         r"model_per_group\[1\]._target_=codistill.components.models.MLP rejects its arguments"),
        (["model._target_=codistill.components.models.Nope"], "model._target_=codistill.components.models.Nope does not resolve"),
    ],
)
def test_bad_cohorts_are_one_line_config_errors(overrides: list[str], message: str) -> None:
    cfg = make_config(overrides)
    with pytest.raises(ConfigError, match=message) as e:
        validate(cfg, 1)
        validate_components(cfg)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ([f"model_per_group=[{MLP16},{MLP16.replace('num_classes:10', 'num_classes:5')}]"],
         "models predict different numbers of classes"),
        (["model=cnn"], "CNN needs image inputs"),  # synthetic data: feature vectors
        (["model=char_lstm", "model.hidden=8"], "group 0's model fails on a batch of the training set"),  # not ids
        (["model.num_classes=5"], r"data.train has label \d, outside \[0, 5\)"),
    ],
)
def test_models_that_cannot_train_on_the_data_are_one_line_errors(tmp_path: Path, overrides: list[str],
                                                                  message: str) -> None:
    with pytest.raises(ConfigError, match=message) as e:
        make_trainer(overrides, tmp_path, base=ANY_MODEL)
    assert "\n" not in str(e.value)
