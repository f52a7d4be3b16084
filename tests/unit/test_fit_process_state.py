"""`codistill.fit` runs inside the user's process (a notebook, a script): afterwards that process is as it was."""

from __future__ import annotations

import logging
import random
import signal
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

import codistill
from tests.user_components import Blobs, DictNet


def process_state() -> dict:
    root = logging.getLogger()
    return {
        "deterministic": (torch.are_deterministic_algorithms_enabled(),
                          torch.is_deterministic_algorithms_warn_only_enabled()),
        "handlers": list(root.handlers), "level": root.level,
        "signals": {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR1)},
        "resolvers": {n: OmegaConf.has_resolver(n) for n in ("codistill_run_id", "codistill_output_subdir")},
        "torch": torch.get_rng_state(), "numpy": np.random.get_state()[1].copy(), "python": random.getstate(),
    }


def test_fit_leaves_the_process_as_it_found_it(tmp_path: Path) -> None:
    root = logging.getLogger()
    mine = logging.NullHandler()  # the user's own logging
    root.addHandler(mine)
    was = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(False)
    try:
        torch.manual_seed(7)
        before = process_state()
        result = codistill.fit(
            ["trainer.max_steps=4", "trainer.batch_size=32", "trainer.deterministic=true", "logger.plots=false",
             "data.eval_examples=64"],
            model=lambda: DictNet(16, 4, width=8), train_data=Blobs("train"), eval_data=Blobs("test"), run_dir=tmp_path,
        )
        after = process_state()
    finally:
        root.removeHandler(mine)
        torch.use_deterministic_algorithms(was[0], warn_only=was[1])
    assert result["run"]["ensemble/acc"] >= 0  # it ran (and set all of these while it did)
    assert (tmp_path / "logs" / "rank0.log").is_file()
    for key in ("deterministic", "handlers", "level", "signals", "resolvers", "python"):
        assert after[key] == before[key], key
    assert torch.equal(after["torch"], before["torch"]) and np.array_equal(after["numpy"], before["numpy"])
