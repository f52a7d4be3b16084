"""A validation set for tuning: training-split examples that data.train_examples left out (never trained on).

Used as `data.eval` by the tuning runs of scripts/repro/low_comm.py, so hyperparameters are never chosen on the test
set. Its labels are the dataset's own (data.label_noise acts on the training stream only).
"""

from __future__ import annotations

import importlib
from typing import Any

from torch.utils.data import Dataset, Subset

from codistill.data.pipeline import training_order


def training_holdout(holdout_of: str, holdout_examples: int, holdout_after: int, holdout_seed: int, **args: Any
                     ) -> Dataset:
    """`holdout_examples` examples of `holdout_of(**args)` (the training split) outside the run's
    data.train_examples (= `holdout_after`) subset of seed `holdout_seed`."""
    module, name = holdout_of.rsplit(".", 1)
    full = getattr(importlib.import_module(module), name)(**args)
    unused = training_order(len(full), holdout_seed)[holdout_after:]
    if len(unused) < holdout_examples:
        raise ValueError(f"only {len(unused)} training examples are left out by data.train_examples={holdout_after}")
    return Subset(full, unused[:holdout_examples].tolist())
