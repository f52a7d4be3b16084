"""Simulated == torchrun (2 groups x 2 replicas, gloo) with a delayed, fragmented, int8 exchange: codistillation's
teacher copies, and Streaming DiLoCo's outer steps."""

import json
from pathlib import Path

import pytest

from tests.helpers import load_final, max_abs_diff, run_cli, run_torchrun

# Exchanges launched before step 5 (both fragments), then fragment 0 at 8, 12, ... and fragment 1 at 6, 10, ...,
# each landing 3 steps later: several exchanges are in flight while the groups train. shard_exchange: the
# asynchronous all-gather across groups, then the within-group gather of the shards when it lands.
ARGS = ["trainer.max_steps=24", "distill.burn_in_steps=5", "distill.exchange_every=4", "distill.exchange_delay=3",
        "distill.fragments=2", "distill.snapshot_codec=int8", "distill.shard_exchange=true", "topology.groups=2",
        "trainer.log_every=4"]


def traffic(run_dir: Path) -> list[tuple]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["group"], r["exchange/bytes_sent"], r["exchange/bytes_received"], r["staleness"])
            for r in rows if r.get("group") is not None]


# Streaming DiLoCo: outer steps on every fragment before steps 0-5 (warm-up), then per fragment on the schedule above
MODES = {"codistill": [], "streaming_diloco": ["distill=diloco", "optim.name=adamw", "optim.lr=0.01"]}


@pytest.mark.torchrun
@pytest.mark.parametrize("mode", sorted(MODES))
def test_delayed_fragments_simulated_equals_torchrun(tmp_path: Path, mode: str) -> None:
    args = [*ARGS, *MODES[mode]]
    dist_dir, sim_dir = tmp_path / "torchrun", tmp_path / "simulated"
    job = run_torchrun(4, [*args, f"hydra.run.dir={dist_dir}"])
    assert job.returncode == 0, job.stderr[-3000:]
    sim = run_cli([*args, "topology.replicas=2", f"hydra.run.dir={sim_dir}"])
    assert sim.returncode == 0, sim.stderr[-3000:]
    for g in (0, 1):
        assert max_abs_diff(load_final(dist_dir, g), load_final(sim_dir, g)) < 1e-5
    # the same bytes counted (simulated: what the torchrun run moves) and the same staleness at every record
    assert traffic(dist_dir) == traffic(sim_dir)
    assert any(row[2] > 0 for row in traffic(dist_dir))
