"""Exact resume in simulated mode (DESIGN invariant 6): 40 steps straight == 20 steps, stop, resume, 20 steps."""

from pathlib import Path

import pytest
import torch

from codistill.io import checkpoint
from tests.helpers import FAST, USER, make_trainer, train_for, trained_state

# Exchanges before steps 5, 6, 12, 18, 24, ...: the copies at step 20 come from step 18, so the resumed run must
# restore them (and their source step) from the checkpoint rather than re-exchange.
SCHEDULE = ["distill.burn_in_steps=5", "distill.exchange_every=6", "trainer.checkpoint_every=10", "logger.plots=false"]
CASES = {
    # two simulated replicas with dropout: each replica's random stream must continue where it stopped
    "dropout_2_replicas": ["topology.replicas=2", "model.dropout=0.2", "optim.name=adam"],
    "plain_sgd": [],
    # stacked groups share one optimizer over stacked tensors; the checkpoint must restore it through the views
    "vectorized": ["topology.vectorize=true", "optim.name=adam"],
    # a user's model (dict output, BatchNorm, dropout) and augmenting dataset, fetched by 2 loader workers per
    # replica: the resumed loaders start at step 20 and draw the same augmentations
    "user_components_2_workers": ["topology.replicas=2", "data.num_workers=2"],
    # Streaming DiLoCo's outer parameters, averaged BatchNorm buffers and outer momentum per fragment (bf16
    # pseudo-gradients, AdamW inside) must be restored from the checkpoint: fragment 0's outer step launched before
    # step 18 lands before step 21, so at step 20 it is in flight and travels with the checkpoint
    "diloco": ["distill=diloco", "distill.outer_dtype=bfloat16", "optim.name=adamw", "topology.replicas=2",
               "distill.fragments=2", "distill.exchange_delay=3"],
}
BASE = {"user_components_2_workers": USER, "diloco": USER}
COLLECTIVE_ONLY = {"diloco"}  # needs every group at every outer step: the filesystem exchange is refused


@pytest.mark.parametrize(("case", "exchange"), [(c, e) for c in sorted(CASES) for e in ("collective", "filesystem")
                                               if e == "collective" or c not in COLLECTIVE_ONLY])
def test_resume_is_bit_identical(tmp_path: Path, exchange: str, case: str) -> None:
    args, base = [*SCHEDULE, *CASES[case], f"distill.exchange={exchange}"], BASE.get(case, FAST)
    straight = trained_state(train_for(tmp_path / "straight", 40, args, base))
    train_for(tmp_path / "resumed", 20, args, base)
    resumed = train_for(tmp_path / "resumed", 40, args, base)
    assert resumed.start_step == 20
    after = trained_state(resumed)
    assert after.keys() == straight.keys()
    assert all(torch.equal(after[k], straight[k]) for k in after), [k for k in after if not torch.equal(after[k], straight[k])]


def test_checkpoints_are_atomic_weights_only_and_pruned(tmp_path: Path) -> None:
    train_for(tmp_path, 30, [*SCHEDULE, "trainer.checkpoint_keep=2"])
    kept = checkpoint.complete_checkpoints(tmp_path / "checkpoints")
    assert [p.name for p in kept] == ["step000000030", "step000000020"]
    assert not list((tmp_path / "checkpoints").rglob("*.tmp"))
    for f in kept[0].glob("*.pt"):
        torch.load(f, weights_only=True)  # tensors and plain containers only
    assert checkpoint.find_resume("never", tmp_path) is None
    assert checkpoint.find_resume(str(tmp_path), tmp_path) == kept[0]  # a run dir: its newest checkpoint


def test_a_failed_checkpoint_write_keeps_the_previous_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The disk fills while step 20's checkpoint is written (ENOSPC at fsync, after the bytes went out): the run
    stops with one line naming the path and the cause, no partial file is left, and step 10's checkpoint resumes."""
    import errno
    import os

    trainer = make_trainer([*SCHEDULE, "trainer.max_steps=30"], tmp_path)
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        if Path(os.readlink(f"/proc/self/fd/{fd}")).parent.name == "step000000020":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    monkeypatch.setattr(checkpoint.os, "fsync", fsync)
    with pytest.raises(checkpoint.StorageError) as failed:
        trainer.fit()
    trainer.close()
    monkeypatch.undo()
    message = str(failed.value)
    assert message == f"could not write {tmp_path / 'checkpoints' / 'step000000020'}: No space left on device"
    assert not (tmp_path / "checkpoints" / "step000000020").exists()
    assert not list(tmp_path.rglob("*.tmp"))
    assert checkpoint.find_resume("auto", tmp_path) == tmp_path / "checkpoints" / "step000000010"
    resumed = train_for(tmp_path, 30, SCHEDULE)  # the previous checkpoint loads and the run goes on
    assert resumed.start_step == 10
