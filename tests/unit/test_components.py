"""A user's components: output forms, the seeded input pipeline, train_examples and label_noise, ignore_index and
the Python entry point."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import codistill
from codistill.engine.algorithm import loss_from_logits
from codistill.components.data.pipeline import Labels, LoaderOptions, TrainingData, TrainSetOptions
from codistill.components.data.streams import GroupStream
from codistill.engine.logits import ModelOutputError, as_logits
from codistill.io import metrics
from codistill.tools import evaluate
from codistill.train import RunError
from tests.helpers import USER, make_trainer
from tests.user_components import Blobs, DictNet, ObjectNet, Output

SHORT = ["trainer.max_steps=8", "distill.burn_in_steps=2", "distill.exchange_every=2", "logger.plots=false"]


def test_every_output_form_gives_the_logits() -> None:
    z = torch.randn(3, 5)
    for out in (z, (z, "aux"), [z], {"logits": z, "aux": 1}, Output(z)):
        assert as_logits(out) is z
    for bad in ("logits", {"scores": z}, (), None):
        with pytest.raises(ModelOutputError, match="the model returned"):
            as_logits(bad)


def test_a_model_with_a_logits_attribute_trains(tmp_path: Path) -> None:
    trainer = make_trainer([*SHORT, "model._target_=tests.user_components.ObjectNet", "~model.width", "~model.dropout"],
                           tmp_path, USER)
    assert isinstance(trainer.workers[0].model, ObjectNet) and trainer.num_classes == 4
    trainer.fit()
    trainer.close()
    per_group, run = trainer.final_eval
    assert run["ensemble/acc"] > 0.5 and all(r["eval/acc"] > 0.5 for r in per_group)


def pipeline(workers: int, **kwargs) -> TrainingData:
    return TrainingData.create(Blobs("train"), Blobs("test"), None, seed=3, train_set=TrainSetOptions(**kwargs),
                               options=LoaderOptions(workers)).with_labels(Labels(4))


def batches(data: TrainingData, group: int, replica: int, start: int, stop: int) -> list:
    stream = GroupStream(data.num_examples, group, 2, 2, 32, 3, "shared")
    out = list(data.train_loader(stream, group, replica, start, stop))
    assert [step for step, _, _ in out] == list(range(start, stop))
    return [(x, y) for _, x, y in out]


def test_augmentation_is_a_function_of_seed_group_replica_and_step() -> None:
    """The same batches with any number of loader workers, and from any start step (a resume)."""
    inline, two_workers = batches(pipeline(0), 1, 1, 0, 6), batches(pipeline(2), 1, 1, 0, 6)
    resumed = batches(pipeline(2), 1, 1, 3, 6)
    for (x, y), (x2, y2) in zip(inline, two_workers):
        assert torch.equal(x, x2) and torch.equal(y, y2)
    for (x, _), (x2, _) in zip(inline[3:], resumed):
        assert torch.equal(x, x2)
    other_replica = batches(pipeline(0), 1, 0, 0, 1)[0][0]
    raw = torch.stack([Blobs("train").x[i] for i in GroupStream(512, 1, 2, 2, 32, 3, "shared").batch_indices(0, 1)])
    assert not torch.equal(inline[0][0], raw)  # augmented
    assert not torch.equal(inline[0][0], other_replica)


def test_fetching_leaves_the_process_generators_alone() -> None:
    torch.manual_seed(11)
    expected = torch.rand(3)
    torch.manual_seed(11)
    batches(pipeline(0), 0, 0, 0, 4)
    assert torch.equal(torch.rand(3), expected)


def test_label_noise_is_seeded_symmetric_and_shared_by_the_groups() -> None:
    clean, noisy = pipeline(0), pipeline(0, label_noise=0.4)
    labels = {}
    for g in (0, 1):
        stream = GroupStream(512, g, 2, 1, 512, 3, "shared")
        ((_, x, y),) = list(noisy.train_loader(stream, g, 0, 0, 1))
        labels[g] = dict(zip(stream.batch_indices(0, 0).tolist(), y.tolist()))
    assert labels[0] == labels[1]  # every group sees the same corrupted label for an example
    true = Blobs("train").y
    flipped = sum(labels[0][i] != int(true[i]) for i in labels[0]) / 512
    assert 0.3 < flipped < 0.5  # p = 0.4, always to another class
    assert all(0 <= v < 4 for v in labels[0].values())
    x_eval, y_eval = noisy.eval_loader(range(256), 256).__iter__().__next__()
    assert torch.equal(y_eval, Blobs("test").y[:256])  # the held-out labels stay clean
    assert clean.noise is None


def test_train_examples_is_one_seeded_subset() -> None:
    a, b = pipeline(0, train_examples=100), pipeline(0, train_examples=100)
    assert a.num_examples == 100 and torch.equal(a.subset, b.subset) and len(set(a.subset.tolist())) == 100


def test_ignore_index_drops_padding_from_both_terms_and_the_metrics() -> None:
    torch.manual_seed(0)
    logits, teacher = torch.randn(2, 6, 5, requires_grad=True), torch.randn(2, 6, 5)
    y = torch.randint(0, 5, (2, 6))
    y[0, 4:] = -100
    keep = y.reshape(-1) != -100
    parts = loss_from_logits(logits, [teacher], y, 1.0, 2.0, "kl", "mean_probs", ignore_index=-100)
    kept = loss_from_logits(logits.reshape(-1, 5)[keep], [teacher.reshape(-1, 5)[keep]], y.reshape(-1)[keep], 1.0, 2.0,
                            "kl", "mean_probs")
    torch.testing.assert_close(parts.ce, F.cross_entropy(logits.reshape(-1, 5), y.reshape(-1), ignore_index=-100))
    torch.testing.assert_close(parts.distill, kept.distill)
    probs = torch.softmax(torch.stack([logits, teacher]).detach(), -1)
    with_padding = metrics.eval_sums(probs, y, ignore_index=-100)
    without = metrics.eval_sums(probs.reshape(2, -1, 5)[:, keep], y.reshape(-1)[keep])
    assert torch.equal(with_padding, without) and with_padding[0, 2] == keep.sum()


def test_fit_takes_python_objects(tmp_path: Path, capsys) -> None:
    result = codistill.fit(
        ["topology.replicas=2", *SHORT, "trainer.batch_size=32"],
        model=lambda: DictNet(16, 4, width=16), train_data=Blobs("train"), eval_data=Blobs("test"),
        run_dir=tmp_path,
    )
    assert len(result["per_group"]) == 2 and result["run"]["ensemble/acc"] > 0.5
    final = tmp_path / "checkpoints" / "group1" / "final.pt"
    with pytest.raises(SystemExit):  # the tools cannot rebuild objects: one line says so, nothing runs on other data
        evaluate.main([str(final)])
    assert "was given to codistill.fit as a Python object (tests.user_components.Blobs)" in capsys.readouterr().err
    with pytest.raises(RunError, match="not an instance"):
        codistill.fit(model=DictNet(16, 4))
    with pytest.raises(RunError, match="samples must be"):
        codistill.fit(SHORT, model=lambda: DictNet(16, 4), train_data=[1, 2, 3], eval_data=Blobs("test"),
                      run_dir=tmp_path / "bad")
