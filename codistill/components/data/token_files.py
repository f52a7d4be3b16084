"""A token corpus on disk: memory-mapped shards of token ids (uint16 or uint32), served as next-token windows.

A corpus directory (written by `codistill-tokenize`, codistill/tools/tokenize.py) holds `meta.json` (dtype,
vocabulary size, end-of-document id, shard names per split) and raw shards `<split>_NNNNN.bin`: documents one after
another, each followed by the end-of-document token. Shards are mapped, never read whole, so a corpus larger than
memory trains as well as a small one, and DataLoader workers map them again in their own process.

Example i is a window of seq_len + 1 tokens at a fixed offset: (w[:-1], w[1:]), an input and its next-token labels
— already shifted, so any model (and a Hugging Face causal LM called with a tensor) trains next-token prediction.
Which windows a step trains on is the stream's choice (codistill/components/data/streams.py): a permutation per
(seed, group, epoch), so the offsets of step s are a pure function of (seed, group, step) — identical in
simulated mode and under torchrun, and a resume at step s needs nothing but s.

Document boundaries: `pack` (windows run across documents, separated by the end-of-document token, as GPT-style
pre-training packs them) or `honour` (windows lie inside one document; a document shorter than seq_len + 1 tokens
and each document's ragged tail are left out).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from codistill.components.data.base import Batch, DataMissingError

BOUNDARIES = ("pack", "honour")


def read_meta(root: Path) -> dict:
    path = root / "meta.json"
    if not path.is_file():
        raise DataMissingError(f"{root} is not a token corpus (no meta.json): write one with codistill-tokenize")
    return json.loads(path.read_text())


def window_starts(tokens: np.ndarray, seq_len: int, boundaries: str, eos_id: Optional[int]) -> np.ndarray:
    """Offsets of the windows of seq_len + 1 tokens in one shard (see the module's docstring)."""
    n = len(tokens)
    if boundaries == "pack":
        return np.arange(0, max(n - 1, 0) // seq_len, dtype=np.int64) * seq_len
    if eos_id is None:
        raise ValueError("boundaries=honour needs the corpus's end-of-document id (meta.json eos_id)")
    ends = np.flatnonzero(tokens == eos_id)  # a document is [start, end], its end-of-document token included
    starts = np.concatenate([[0], ends[:-1] + 1]).astype(np.int64)
    counts = (ends - starts) // seq_len  # windows of seq_len + 1 tokens inside each document
    first = np.repeat(starts, counts)
    within = np.arange(counts.sum(), dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)
    return first + within * seq_len


class TokenFiles(Dataset):
    """The `split` of a corpus directory as (input ids [seq_len], next ids [seq_len]) windows, fetched by batch."""

    def __init__(self, root: str, split: str = "train", seq_len: int = 128, boundaries: str = "pack") -> None:
        if boundaries not in BOUNDARIES:
            raise ValueError(f"boundaries={boundaries!r} is not one of {', '.join(BOUNDARIES)}")
        self.root, self.seq_len = Path(root).expanduser(), seq_len
        meta = read_meta(self.root)
        shards = meta["shards"].get(split)
        if not shards:
            raise DataMissingError(f"{self.root} has no {split!r} split (it has {', '.join(meta['shards'])})")
        self.dtype, self.vocab_size, self.eos_id = np.dtype(meta["dtype"]), int(meta["vocab_size"]), meta.get("eos_id")
        self.paths = [self.root / name for name in shards]
        starts = [window_starts(m, seq_len, boundaries, self.eos_id) for m in self._open()]
        self.shard = np.concatenate([np.full(len(s), i, dtype=np.int64) for i, s in enumerate(starts)])
        self.offset = np.concatenate(starts)
        if len(self.offset) == 0:
            raise ValueError(f"{self.root} {split}: no window of seq_len + 1 = {seq_len + 1} tokens "
                             f"(boundaries={boundaries})")
        self._maps: Optional[list[np.memmap]] = None

    def _open(self) -> list[np.memmap]:
        for p in self.paths:
            if not p.is_file():
                raise DataMissingError(f"token shard {p} is missing: write the corpus again with codistill-tokenize")
        return [np.memmap(p, dtype=self.dtype, mode="r") for p in self.paths]

    @property
    def maps(self) -> list[np.memmap]:
        if self._maps is None:  # mapped on first use in each process (a DataLoader worker maps its own)
            self._maps = self._open()
        return self._maps

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_maps": None}  # a worker maps the files again instead of receiving a copy

    @property
    def num_tokens(self) -> int:
        return sum(len(m) for m in self.maps)

    def __len__(self) -> int:
        return len(self.offset)

    def _windows(self, indices: Sequence[int]) -> torch.Tensor:
        span = np.arange(self.seq_len + 1, dtype=np.int64)
        rows = [self.maps[self.shard[i]][self.offset[i] + span] for i in indices]
        return torch.from_numpy(np.stack(rows).astype(np.int64))

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        w = self._windows([i])[0]
        return w[:-1], w[1:]

    def __getitems__(self, indices: Sequence[int]) -> Batch:
        w = self._windows(indices)
        return Batch((w[:, :-1], w[:, 1:]))


def dataset(root: str, split: str = "train", seq_len: int = 128, boundaries: str = "pack") -> TokenFiles:
    """conf/data/token_files.yaml's component."""
    return TokenFiles(root, split, seq_len, boundaries)
