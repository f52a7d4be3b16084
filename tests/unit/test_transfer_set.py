"""The training-set options of Hinton et al.'s experiments, for any dataset: a transfer set without some classes
(data.exclude_classes), validation examples kept out of training (data.validation_examples, data.eval_split), input
jitter (data.jitter); and the evaluation tool's per-class logit bias."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from codistill.components.data.pipeline import DataFormatError, Labels, TrainingData, TrainSetOptions, jitter, validation_indices
from codistill.components.data.streams import GroupStream
from codistill.tools import evaluate
from codistill.tools.checkpoints import CheckpointError, shift_logits
from tests.helpers import USER, make_trainer, run_cli
from tests.user_components import Blobs


def data(**options) -> TrainingData:
    return TrainingData.create(Blobs("train"), Blobs("test"), None, seed=3, train_set=TrainSetOptions(**options)
                               ).with_labels(Labels(4))


def seen_labels(d: TrainingData, group: int, steps: int = 8) -> torch.Tensor:
    stream = GroupStream(d.num_examples, group, 2, 1, 128, 3, "shared")
    return torch.cat([y for _, _, y in d.train_loader(stream, group, 0, 0, steps)])


def test_excluded_classes_leave_the_training_set_only_the_same_for_every_group() -> None:
    d = data(exclude_classes=(1, 3))
    true = Blobs("train").y  # Blobs has no `targets`: the labels are read batch by batch, once
    assert torch.equal(d.subset, ((true != 1) & (true != 3)).nonzero().squeeze(1))
    for g in (0, 1):
        assert set(seen_labels(d, g).tolist()) == {0, 2}
    assert torch.equal(data(exclude_classes=(1, 3)).subset, d.subset)  # same indices in every group and process
    held = torch.cat([y for _, y in d.eval_loader(range(512), 256)])
    assert torch.equal(held, Blobs("test").y)  # the held-out set keeps every class


def test_a_bad_excluded_class_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(DataFormatError, match="has class 9, but no training example has that label"):
        data(exclude_classes=(9,))
    with pytest.raises(DataFormatError, match="leaves no training example"):
        data(exclude_classes=(0, 1, 2, 3))
    job = run_cli([f"hydra.run.dir={tmp_path}", "data.exclude_classes=[10]"])  # the preset names its 10 classes
    assert job.returncode == 2 and job.stderr.strip().splitlines()[-1] == (
        "codistill: error: data.exclude_classes has class 10: class ids are in [0, 10)")


def test_validation_examples_are_kept_out_and_can_be_evaluated_on(tmp_path: Path) -> None:
    d = data(validation_examples=100, train_examples=200)
    val = validation_indices(512, 100)
    assert d.num_examples == 200 and not set(val.tolist()) & set(d.subset.tolist())
    assert torch.equal(validation_indices(512, 100), val)  # one fixed draw, whatever the seed
    # validation examples come from data.train as it is: without its own augmentation they are the same every time
    trainer = make_trainer(["data.validation_examples=64", "data.eval_split=validation", "trainer.max_steps=4",
                            "+data.train.augment=false"], tmp_path, USER)
    assert len(trainer.data.eval_dataset) == 64
    trainer.fit()
    trainer.close()
    ckpt = tmp_path / "checkpoints" / "group0" / "final.pt"
    rows, run = evaluate.evaluate([ckpt], split="validation")
    assert run["examples"] == 64 and rows[0]["eval/acc"] == pytest.approx(trainer.final_eval[0][0]["eval/acc"])


def test_jitter_shifts_each_image_by_at_most_n_pixels() -> None:
    torch.manual_seed(0)
    x = torch.zeros(64, 1, 9, 9)
    x[:, 0, 4, 4] = 1.0  # one bright pixel in the middle of each image
    out = jitter(x, 2)
    where = out[:, 0].flatten(1).argmax(1)
    rows, cols = where // 9, where % 9
    assert out.shape == x.shape and torch.all(out.sum((1, 2, 3)) == 1)  # moved, not blurred or lost
    assert rows.sub(4).abs().max() == 2 and cols.sub(4).abs().max() == 2  # up to 2 pixels, every offset drawn
    assert len(set(zip(rows.tolist(), cols.tolist()))) > 10
    with pytest.raises(DataFormatError, match="data.jitter shifts images"):
        jitter(torch.zeros(4, 16), 2)


def test_the_bias_shift_changes_only_that_class_logit() -> None:
    logits = torch.randn(5, 7, 10)
    shifted = shift_logits(logits, {3: 3.5})
    assert torch.equal(shifted[..., 3], logits[..., 3] + 3.5)
    others = [c for c in range(10) if c != 3]
    assert torch.equal(shifted[..., others], logits[..., others])
    with pytest.raises(CheckpointError, match="names class 10, but the model predicts classes 0..9"):
        shift_logits(logits, {10: 1.0})
