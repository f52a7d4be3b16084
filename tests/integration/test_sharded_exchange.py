"""distill.shard_exchange: each replica moves 1/R of the peers' states across groups; the result is the full exchange."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from codistill.config import ConfigError, validate
from tests.helpers import REPO, clean_env, make_config

CHECK = Path(__file__).with_name("sharded_exchange_check.py")


@pytest.mark.torchrun
def test_sharded_exchange_equals_full_exchange_2x2(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=4", str(CHECK), "2", str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=clean_env(), cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("sharded exchange == full exchange") == 4


def test_sharding_needs_the_collective_exchange() -> None:
    cfg = make_config(["distill.shard_exchange=true", "distill.exchange=filesystem"])
    with pytest.raises(ConfigError, match="shard_exchange"):
        validate(cfg, 1)
