"""An error on one rank ends every rank of a real torchrun job, each printing one line that names the failing rank,
its phase and the reason; no rank waits out topology.timeout_s (set far beyond the test's own timeout)."""

from __future__ import annotations

import pytest

from tests.helpers import FAST, run_torchrun

pytestmark = pytest.mark.torchrun

FAILING = ["model=custom", "model._target_=tests.user_components.FailsOnRank", "+model.features=${data.input_shape.0}",
           "+model.classes=${data.num_classes}", "topology.groups=2", "trainer.max_steps=8", "logger.plots=false"]


@pytest.mark.parametrize(("when", "rank", "phase", "where"), [
    ("train", 3, "training", "group 1, replica 1"),
    ("eval", 2, "evaluating", "group 1, replica 0"),
])
def test_an_error_on_one_rank_ends_all_four_with_one_line_each(tmp_path, when: str, rank: int, phase: str,
                                                               where: str) -> None:
    job = run_torchrun(4, [*FAILING, f"+model.rank={rank}", f"+model.when={when}", "topology.timeout_s=600",
                           f"hydra.run.dir={tmp_path}"], timeout=150,
                       base=[o for o in FAST if not o.startswith("model.")])
    assert job.returncode != 0
    lines = [x for x in job.stderr.splitlines() if x.startswith("codistill: error:")]
    expected = (f"codistill: error: RuntimeError: injected failure in {when} "
                f"[first reported by rank {rank} ({where}) while {phase}]")
    assert lines == [expected] * 4, job.stderr[-3000:]
    assert "Traceback" not in job.stdout
    log = (tmp_path / "logs" / f"rank{rank}.log").read_text()
    assert "this rank failed" in log and "Traceback" in log  # the failing rank's traceback is in its log
