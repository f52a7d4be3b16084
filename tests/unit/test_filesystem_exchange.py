"""The filesystem exchange in one process: two groups run as separate (simulated) jobs sharing a directory."""

import json
import logging
from pathlib import Path

import pytest
import torch

from codistill.config import ConfigError
from codistill.distributed.exchange.filesystem import ExchangeWriteError, claim
from tests.helpers import make_trainer, snapshot_steps

ARGS = ["distill.exchange=filesystem", "distill.burn_in_steps=0", "trainer.max_steps=40", "logger.plots=false"]


def group_job(tmp_path: Path, g: int, *extra: str):
    """The trainer one job of a separate-jobs run holds: only group g, peers reached through the directory."""
    return make_trainer([*ARGS, f"topology.group_id={g}", f"distill.exchange_dir={tmp_path / 'ex'}", *extra],
                        tmp_path / f"g{g}")


def publish(trainer, step: int) -> None:
    """Exchange once the background reader has seen every version published so far (an exchange step never waits
    for a download, so without this what arrives by the step depends on timing)."""
    ex = trainer.exchange.transport
    ex.reader.refresh()
    trainer._exchange(step)
    ex.writer.flush(60)


def test_groups_in_separate_jobs_read_each_others_snapshots(tmp_path: Path) -> None:
    a, b = group_job(tmp_path, 0), group_job(tmp_path, 1)
    assert list(a.workers) == [0] and list(b.workers) == [1]
    publish(a, 0)  # b has published nothing yet: group 1 is left out of a's aggregate
    assert a.workers[0].teachers.ready == []
    b.workers[1].train_step(0)
    publish(b, 1)  # b reads a's step-0 snapshot, a stale copy of a peer that is ahead or behind is fine
    assert b.workers[1].teachers.source_step == {0: 0}
    a.workers[0].train_step(0)
    publish(a, 5)
    assert a.workers[0].teachers.source_step == {1: 1}
    assert torch.equal(a.workers[0].teachers.flattener[1].flatten(a.workers[0].teachers.models[1]),
                       b.workers[1].flattener.flatten(b.workers[1].model))
    assert a.workers[0].train_step(1)[2] > 0  # the distillation term is present
    a.close(), b.close()


@pytest.mark.parametrize("damage", ["truncated", "bit_flip", "foreign_run", "other_architecture"])
def test_bad_snapshots_are_rejected_and_the_previous_copy_kept(tmp_path: Path, damage: str, caplog) -> None:
    a, b = group_job(tmp_path, 0), group_job(tmp_path, 1)
    publish(b, 2)
    publish(a, 2)
    kept = a.workers[0].teachers.flattener[1].flatten(a.workers[0].teachers.models[1]).clone()
    b.workers[1].train_step(2)
    publish(b, 4)
    folder = tmp_path / "ex" / "group1"
    data, manifest = folder / "step000000004.pt", folder / "step000000004.json"
    if damage == "truncated":
        data.write_bytes(data.read_bytes()[:100])
    elif damage == "bit_flip":
        raw = bytearray(data.read_bytes())
        raw[-200] ^= 1
        data.write_bytes(bytes(raw))
    else:
        m = json.loads(manifest.read_text())
        m["run_id" if damage == "foreign_run" else "signature"] = "someone-else"
        manifest.write_text(json.dumps(m))
    with caplog.at_level(logging.WARNING, logger="codistill.distributed.exchange.filesystem"):
        publish(a, 6)
        publish(a, 8)  # the same bad snapshot is not reported twice
    rejections = [r for r in caplog.records if "rejected snapshot" in r.getMessage()]
    assert len(rejections) == 1, caplog.text
    assert a.workers[0].teachers.source_step == {1: 2}
    assert torch.equal(a.workers[0].teachers.flattener[1].flatten(a.workers[0].teachers.models[1]), kept)
    a.close(), b.close()


def test_old_snapshots_are_pruned_and_a_restart_drops_its_future(tmp_path: Path) -> None:
    a = group_job(tmp_path, 0, "distill.exchange_keep=2")
    for s in (1, 2, 3):
        publish(a, s)
    folder = tmp_path / "ex" / "group0"
    assert snapshot_steps(folder) == [3, 2]
    assert not list(folder.glob("*.tmp"))
    a.close()
    # A job that restarts at step 2 removes its snapshot of step 3: no peer may read a state it will not reach.
    from codistill.distributed.exchange.filesystem import FilesystemExchange

    ex = a.exchange.transport
    FilesystemExchange(ex.store, ex.run_id, ex.topo, ex.signatures, ex.sizes, keep=2, start_step=2).close()
    assert snapshot_steps(folder) == [2]


def test_a_directory_of_another_run_is_refused(tmp_path: Path) -> None:
    claim(tmp_path, "run-a")
    claim(tmp_path, "run-a")  # the same run (another group's job, or a restart) is welcome
    with pytest.raises(ConfigError, match="belongs to run 'run-a'"):
        claim(tmp_path, "run-b")


def test_a_failed_write_is_reported_and_leaves_no_loadable_file(tmp_path: Path) -> None:
    a = group_job(tmp_path, 0)
    (tmp_path / "ex" / "group0").write_text("not a directory")  # the writer cannot create its folder
    a.exchange.transport.exchange(1, {0: a.workers[0].flat_state()})
    with pytest.raises(ExchangeWriteError, match="could not publish a snapshot"):
        a.exchange.transport.writer.flush(60)
    assert not list((tmp_path / "ex").rglob("*.pt"))
