"""A heterogeneous cohort under torchrun: the collective exchange pads to the larger architecture, exactly."""

from pathlib import Path

import pytest

from tests.helpers import load_final, max_abs_diff, run_cli, run_torchrun

ARGS = [
    "model_per_group=[hinton_tiny,{_target_:codistill.components.models.MLP,input_shape:[32],num_classes:10,hidden:[48,24]}]", "trainer.max_steps=12", "distill.burn_in_steps=3",
    "distill.exchange_every=3", "topology.groups=2",
]


@pytest.mark.torchrun
def test_heterogeneous_cohort_simulated_equals_torchrun(tmp_path: Path) -> None:
    dist_dir, sim_dir = tmp_path / "torchrun", tmp_path / "simulated"
    job = run_torchrun(2, [*ARGS, f"hydra.run.dir={dist_dir}"], timeout=120)
    assert job.returncode == 0, job.stderr[-3000:]
    sim = run_cli([*ARGS, f"hydra.run.dir={sim_dir}"], timeout=120)
    assert sim.returncode == 0, sim.stderr[-3000:]
    shapes = [[tuple(v.shape) for v in load_final(dist_dir, g).values()] for g in (0, 1)]
    assert shapes[0] != shapes[1]
    for g in (0, 1):
        assert max_abs_diff(load_final(dist_dir, g), load_final(sim_dir, g)) < 1e-5
