"""The reproduction report claims only what finished runs show, and says which runs stopped and where."""

from __future__ import annotations

import sys
from pathlib import Path

from tests.helpers import REPO

sys.path.insert(0, str(REPO / "scripts" / "repro"))

from _common import Run, cell  # noqa: E402
from hinton_mnist import ordering_claim  # noqa: E402

STOPPED = ("training loss of group(s) [0] is not finite at step 2500 (label loss 0.3, distillation term inf): "
           "lower optim.lr or distill.alpha; kept the checkpoint of step 2000")


def finished(variant: str, seed: int, acc: float) -> Run:
    return Run(variant, seed, Path("."), [{"step": 100, "group": 0, "eval/acc": acc}])


def test_no_finished_distilled_seed_claims_nothing() -> None:
    teachers, students = [finished("teacher", 0, 0.989)], [finished("student", 0, 0.986)]
    distilled = [Run("distilled", 0, Path("."), failed=STOPPED)]
    claim = ordering_claim(teachers, students, distilled, 10000)
    assert claim == ("No seed has all three runs finished: loss not finite at step 2500 (seed 0, distilled), so "
                     "nothing is claimed about the ordering.")
    assert "holds" not in claim
    assert cell(distilled, lambda r: 0.0) == "all 1 stopped (seed 0: loss not finite at step 2500)"


def test_claims_count_only_the_seeds_that_finished() -> None:
    teachers = [finished("teacher", s, 0.990) for s in range(3)]
    students = [finished("student", s, 0.985) for s in range(3)]
    distilled = [finished("distilled", 0, 0.988), Run("distilled", 1, Path("."), failed=STOPPED),
                 finished("distilled", 2, 0.987)]
    claim = ordering_claim(teachers, students, distilled, 10000)
    assert claim.startswith("The ordering teacher <= distilled <= student holds in 2 of the 2 seeds whose three runs "
                            "finished (of 3).")
    text = cell(distilled, lambda r: r.final("eval/acc"))
    assert text.endswith("(2 of 3 finished; seed 1: loss not finite at step 2500)")
