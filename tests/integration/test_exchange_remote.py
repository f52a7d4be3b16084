"""The exchange through an object store: a real S3-API server (moto) on 127.0.0.1, the s3fs client.

Groups run as separate jobs (one `codistill.train` process per group, topology.group_id), as
launch/groups_as_jobs.sh starts them; credentials and the endpoint come from the standard AWS environment variables.
"""

from __future__ import annotations

import logging
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from codistill import train
from codistill.config import register_configs
from tests.helpers import ANY_MODEL, FAST, REPO, clean_env, make_config, make_trainer

moto_server = pytest.importorskip("moto.server")
pytest.importorskip("s3fs")

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture(scope="module")
def s3_endpoint():
    """A moto S3 server on 127.0.0.1 (a free port), stopped after the module's tests."""
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # not a line per request
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3_env(s3_endpoint, monkeypatch):
    for k, v in {**CREDENTIALS, "AWS_ENDPOINT_URL": s3_endpoint}.items():
        monkeypatch.setenv(k, v)
    return s3_endpoint


def s3fs_client():
    import fsspec

    return fsspec.filesystem("s3", skip_instance_cache=True)


# --- in-process: two groups' trainers as separate jobs, the store tampered with between exchanges -------------------
ARGS = ["distill.exchange=filesystem", "distill.burn_in_steps=0", "trainer.max_steps=40", "logger.plots=false"]


def publish(trainer, step: int) -> None:
    ex = trainer.exchange.transport
    ex.reader.refresh()
    trainer._exchange(step)
    ex.writer.flush(60)


def test_torn_and_corrupt_uploads_are_rejected_and_the_previous_copy_kept(tmp_path: Path, s3_env, caplog) -> None:
    url = "s3://codistill-test/torn"
    a, b = (make_trainer([*ARGS, f"topology.group_id={g}", f"distill.exchange_dir={url}", "distill.exchange_keep=2",
                          "distill.snapshot_codec=int8"], tmp_path / f"g{g}") for g in (0, 1))
    publish(b, 2)
    publish(a, 2)
    copies = a.workers[0].teachers
    kept = copies.flattener[1].flatten(copies.models[1]).clone()
    assert copies.source_step == {1: 2}
    s3 = s3fs_client()
    folder = "codistill-test/torn/group1"
    manifest, data = s3.cat_file(f"{folder}/step000000002.json"), s3.cat_file(f"{folder}/step000000002.pt")
    with caplog.at_level(logging.WARNING, logger="codistill.distributed.exchange.filesystem"):
        s3.pipe_file(f"{folder}/step000000004.json", manifest)  # a manifest without its data (a torn upload)
        publish(a, 4)
        corrupt = bytearray(data)
        corrupt[-300] ^= 1
        s3.pipe_file(f"{folder}/step000000006.pt", bytes(corrupt))  # a corrupt data object, then its manifest
        s3.pipe_file(f"{folder}/step000000006.json", manifest)
        publish(a, 6)
        publish(a, 8)  # each bad version is reported once
    reasons = [r.getMessage() for r in caplog.records if "rejected snapshot" in r.getMessage()]
    assert len(reasons) == 2 and "torn: its manifest is there but its data is not" in reasons[0], reasons
    assert "checksum mismatch" in reasons[1]
    assert copies.source_step == {1: 2} and torch.equal(copies.flattener[1].flatten(copies.models[1]), kept)
    assert all("testing" not in r for r in reasons)  # no credential in a log line
    for step in (11, 12):  # exchange_keep=2: group 1 keeps its two newest versions (the bad ones are pruned too)
        b.workers[1].train_step(step - 1)
        publish(b, step)
    assert sorted(p.rsplit("/", 1)[1] for p in s3.ls(folder, refresh=True)) == [
        "step000000011.json", "step000000011.pt", "step000000012.json", "step000000012.pt"]
    publish(a, 14)
    assert copies.source_step == {1: 12}
    a.close(), b.close()


def test_an_unreachable_endpoint_fails_in_bounded_time(tmp_path: Path, monkeypatch, capsys) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for k, v in {**CREDENTIALS, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}.items():
        monkeypatch.setenv(k, v)
    register_configs()
    with pytest.raises(SystemExit) as exit_info:
        train.run(make_config(["topology.mode=simulated", "trainer.max_steps=4", "topology.timeout_s=3",
                               "distill.exchange=filesystem", "distill.exchange_dir=s3://nowhere/run"],
                              base=ANY_MODEL), tmp_path / "run")
    assert exit_info.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("codistill: error:")]
    assert len(errors) == 1 and "distill.exchange_dir=s3://nowhere/run is not usable" in errors[0], errors


# --- separate processes: G = 3 jobs through s3://, one of them killed mid-run ---------------------------------------
JOB = [*FAST, "topology.groups=3", "distill.exchange=filesystem", "distill.burn_in_steps=5",
       "distill.exchange_every=10", "distill.snapshot_codec=int8", "distill.exchange_delay=3", "logger.plots=false",
       "trainer.log_every=50"]


def start_job(group: int, url: str, run_dir: Path, steps: int, env: dict) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "codistill.train", *JOB, f"topology.group_id={group}", f"distill.exchange_dir={url}",
         f"trainer.max_steps={steps}", f"hydra.run.dir={run_dir}"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=REPO)


def loaded_from(run_dir: Path, peer: int) -> list[int]:
    text = "".join(p.read_text() for p in (run_dir / "logs").glob("rank*.log"))
    return [int(s) for s in re.findall(rf"exchange at step \d+: group {peer} snapshot of step (\d+)", text)]


def wait_for(condition, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


@pytest.mark.torchrun
def test_groups_as_separate_jobs_codistill_through_s3(tmp_path: Path, s3_env) -> None:
    """Group 2 starts first and is killed once groups 0 and 1 hold its snapshot: the jobs' start-up times differ by
    seconds under load, so without this order a short job could finish before a peer published anything."""
    env = {**clean_env(), **CREDENTIALS, "AWS_ENDPOINT_URL": s3_env}
    url = "s3://codistill-test/jobs"
    s3 = s3fs_client()

    def published(g: int) -> bool:
        try:
            return any(p.endswith(".json") for p in s3.ls(f"codistill-test/jobs/group{g}", refresh=True))
        except FileNotFoundError:
            return False

    jobs = {2: start_job(2, url, tmp_path / "group2", 20000, env)}
    try:
        wait_for(lambda: published(2), "group 2's first snapshot")
        jobs.update({g: start_job(g, url, tmp_path / f"group{g}", 3000, env) for g in (0, 1)})
        wait_for(lambda: all((tmp_path / f"group{g}" / "logs").is_dir() and loaded_from(tmp_path / f"group{g}", 2)
                             for g in (0, 1)), "groups 0 and 1 to load group 2's snapshot")
        assert jobs[2].poll() is None, "group 2 finished before it could be killed mid-run"
        jobs[2].send_signal(signal.SIGKILL)
        outs = {g: jobs[g].communicate(timeout=180)[0] for g in (0, 1)}
    finally:
        for p in jobs.values():
            if p.poll() is None:
                p.kill()
                p.wait()
    for g in (0, 1):
        assert jobs[g].returncode == 0, outs[g][-3000:]
        assert (tmp_path / f"group{g}" / "checkpoints" / f"group{g}" / "final.pt").is_file()
        peer = loaded_from(tmp_path / f"group{g}", 1 - g)
        assert peer and peer == sorted(peer), outs[g][-3000:]  # teacher copies of the other job, newer and newer
        assert loaded_from(tmp_path / f"group{g}", 2), outs[g][-3000:]  # the killed group's last snapshots
    assert jobs[2].returncode == -signal.SIGKILL
    assert "testing" not in outs[0] + outs[1]  # no credential in any log
