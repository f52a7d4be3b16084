"""Sinks: wandb (one run per group, run-level records in group 0's, failures only warn) and the progress bar."""

from __future__ import annotations

import io
import sys
import types
from pathlib import Path

import pytest

from codistill.io.loggers import ProgressBar, open_sinks, run_id
from tests.helpers import make_config, make_trainer

SHORT = ["trainer.max_steps=6", "distill.burn_in_steps=2", "distill.exchange_every=2", "trainer.log_every=3",
         "trainer.eval_every=6"]


class FakeRun:
    def __init__(self, **kwargs) -> None:
        self.kwargs, self.logged, self.finished = kwargs, [], False

    def log(self, data: dict, step: int) -> None:
        self.logged.append((step, data))

    def finish(self) -> None:
        self.finished = True


def fake_wandb(monkeypatch: pytest.MonkeyPatch, init) -> types.ModuleType:
    module = types.ModuleType("wandb")
    module.init = init
    module.Settings = lambda **kw: kw
    monkeypatch.setitem(sys.modules, "wandb", module)
    return module


def test_one_wandb_run_per_group_with_run_records_in_group0(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runs: list[FakeRun] = []
    fake_wandb(monkeypatch, lambda **kw: runs.append(FakeRun(**kw)) or runs[-1])
    trainer = make_trainer(["logger=wandb", "run_name=demo", *SHORT], tmp_path / "2026-01-01_00-00-00")
    trainer.fit()
    trainer.close()
    assert [r.kwargs["name"] for r in runs] == ["demo-g0", "demo-g1"]
    assert {r.kwargs["group"] for r in runs} == {"2026-01-01_00-00-00"}
    assert [r.kwargs["id"] for r in runs] == ["demo-2026-01-01_00-00-00-g0", "demo-2026-01-01_00-00-00-g1"]
    assert all(r.kwargs["job_type"] == "train" and r.finished for r in runs)
    assert runs[0].kwargs["config"]["distill"]["exchange_every"] == 2 and runs[1].kwargs["config"]["group"] == 1
    keys0 = set().union(*(d for _, d in runs[0].logged))
    keys1 = set().union(*(d for _, d in runs[1].logged))
    assert {"train/loss", "eval/acc", "staleness", "ensemble/acc", "churn/top1"} <= keys0
    assert "train/loss" in keys1 and not any(k.startswith(("ensemble", "churn")) for k in keys1)
    assert [s for s, _ in runs[1].logged] == [3, 6]


def test_wandb_failure_is_a_warning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog) -> None:
    def broken_init(**kw):
        raise RuntimeError("no network")

    fake_wandb(monkeypatch, broken_init)
    trainer = make_trainer(["logger=wandb", *SHORT], tmp_path)
    trainer.fit()
    trainer.close()
    assert "wandb disabled for group 0: RuntimeError: no network" in caplog.text
    assert (tmp_path / "checkpoints" / "group1" / "final.pt").exists()


def test_wandb_offline_writes_one_run_per_group(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    trainer = make_trainer(["logger=wandb", *SHORT], tmp_path)
    trainer.fit()
    trainer.close()
    runs = sorted((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 2
    assert all(len(list(r.glob("run-*.wandb"))) == 1 for r in runs)


def test_wandb_group_can_be_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runs: list[FakeRun] = []
    fake_wandb(monkeypatch, lambda **kw: runs.append(FakeRun(**kw)) or runs[-1])
    cfg = make_config(["logger=wandb", "logger.group=exp1"])
    topo = types.SimpleNamespace(is_main=False, groups=2, local_groups=[1], is_group_leader=lambda g: True)
    open_sinks(cfg.logger, cfg.run_name, cfg.trainer.max_steps, topo, tmp_path / "group1", {}).close()
    assert [(r.kwargs["name"], r.kwargs["group"]) for r in runs] == [("codistill-g1", "exp1")]


def test_sweep_points_get_distinct_run_ids() -> None:
    assert run_id(Path("outputs/codistill/abc")) == "abc"
    assert run_id(Path("multirun/codistill/abc/1")) == "abc-1"


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_only_on_a_terminal(tmp_path: Path) -> None:
    cfg = make_config(["topology.mode=simulated", "trainer.max_steps=10"])
    topo = types.SimpleNamespace(is_main=True, groups=2, local_groups=[0, 1], is_group_leader=lambda g: True)
    plain = open_sinks(cfg.logger, cfg.run_name, cfg.trainer.max_steps, topo, tmp_path, {}, stream=io.StringIO())
    assert not any(isinstance(s, ProgressBar) for s in plain.sinks)
    plain.close()
    term = Terminal()
    sinks = open_sinks(cfg.logger, cfg.run_name, cfg.trainer.max_steps, topo, tmp_path, {}, stream=term)
    sinks.write({"step": 5, "group": 0, "train/loss": 0.5, "staleness": 2, "eval/acc": 0.75})
    sinks.write({"step": 5, "group": None, "ensemble/acc": 0.8})
    sinks.close()
    out = term.getvalue()
    assert "5/10" in out and "g0=0.500/0.750" in out and "ens=0.800" in out and "stale=2" in out
