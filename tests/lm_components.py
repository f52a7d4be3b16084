"""A user's language-model data as Hugging Face brings it, defined outside the codistill package.

`hf_rows` is a `datasets.Dataset` of dict rows in Hugging Face's causal-LM convention: `labels = input_ids`,
padding labelled -100 and masked by `attention_mask`; sequences have different lengths, padded to `seq_len`.
"""

from __future__ import annotations

import numpy as np


def hf_rows(split: str = "train", examples: int = 64, seq_len: int = 12, vocab: int = 48, shifted: bool = False,
            pad_id: int = 0):
    """Rows of a small seeded corpus whose next token is predictable (an arithmetic pattern plus noise)."""
    import datasets

    rng = np.random.default_rng([7, 0 if split == "train" else 1])
    rows = {"input_ids": [], "attention_mask": [], "labels": []}
    for _ in range(examples):
        length = int(rng.integers(seq_len // 2, seq_len + 1))
        start, step = int(rng.integers(1, vocab)), int(rng.integers(1, 4))
        ids = [1 + (start + step * t) % (vocab - 1) for t in range(length)]
        pad = seq_len - length
        labels = ids[1:] + [-100] if shifted else list(ids)
        rows["input_ids"].append(ids + [pad_id] * pad)
        rows["attention_mask"].append([1] * length + [0] * pad)
        rows["labels"].append(labels + [-100] * pad)
    return datasets.Dataset.from_dict(rows).with_format("torch")


def copy_pairs(examples: int = 32, seq_len: int = 12, vocab: int = 48) -> list:
    """(ids, ids) pairs: labels equal to the inputs, a "copy the current token" objective by mistake."""
    import torch

    ids = torch.randint(1, vocab, (examples, seq_len), generator=torch.Generator().manual_seed(0))
    return [(row, row.clone()) for row in ids]
