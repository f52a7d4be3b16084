"""The King James Bible as a character-level language-modelling corpus (next-character prediction).

Provenance: Debian's `bible-kjv` and `bible-kjv-text` packages (the KJV text, public domain) and their `bible`
command, which prints the whole book with `bible -m 8192 "Genesis 1:1 - Revelation 22:21"` (about 4.3 M
characters, 73 distinct). The text is extracted once and cached as `kjv.txt` (in data.train.root when given, else the
codistill cache directory); nothing is downloaded.

Fixed split: the text is cut into blocks of 10,000 characters and every tenth block (index % 10 == 9) is held out,
so both splits span every book. Each split is cut into non-overlapping windows of `seq_len` characters; an
example is a window and its label the same window shifted by one character. Evaluation scores every character.
"""

from __future__ import annotations

import functools
import shutil
import subprocess
from pathlib import Path
from typing import Optional

import torch

from codistill.components.data.base import Splits, TensorDataset, DataMissingError
from codistill.components.data.cache import atomic_write, cache_dir

INSTALL = "sudo apt-get install bible-kjv bible-kjv-text"
COMMAND = ["bible", "-m", "8192", "Genesis 1:1 - Revelation 22:21"]
FILE = "kjv.txt"
BLOCK, HOLDOUT_EVERY = 10_000, 10
MIN_CHARS = 4_000_000  # the full text is ~4.3 M characters; less means a truncated extraction


def extract() -> str:
    """Run the `bible` command and return the whole text."""
    if shutil.which(COMMAND[0]) is None:
        raise DataMissingError(f"the `bible` command is not installed: install it with `{INSTALL}`")
    done = subprocess.run(COMMAND, capture_output=True, text=True, timeout=300)
    if done.returncode != 0 or len(done.stdout) < MIN_CHARS:
        raise DataMissingError(
            f"`{' '.join(COMMAND[:3])} ...` gave {len(done.stdout)} characters (exit {done.returncode}): "
            f"reinstall the text with `{INSTALL}`"
        )
    return done.stdout


def read_text(root: Optional[str]) -> str:
    path = (Path(root) if root else cache_dir()) / FILE
    if not path.is_file():
        text = extract()
        atomic_write(path, lambda f: f.write(text.encode("utf-8")))
        return text
    text = path.read_text(encoding="utf-8")
    if len(text) < MIN_CHARS:
        raise ValueError(f"{path} holds {len(text)} characters, fewer than the full text: delete it to re-extract")
    return text


def split(text: str) -> tuple[str, str]:
    """(train, validation): every HOLDOUT_EVERY-th block of BLOCK characters is held out."""
    blocks = [text[i : i + BLOCK] for i in range(0, len(text), BLOCK)]
    train = "".join(b for i, b in enumerate(blocks) if i % HOLDOUT_EVERY != HOLDOUT_EVERY - 1)
    held = "".join(b for i, b in enumerate(blocks) if i % HOLDOUT_EVERY == HOLDOUT_EVERY - 1)
    return train, held


def windows(tokens: torch.Tensor, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Non-overlapping windows [N, L] of `tokens` and their next-token labels [N, L]."""
    n = (len(tokens) - 1) // seq_len
    x = tokens[: n * seq_len].view(n, seq_len)
    y = tokens[1 : n * seq_len + 1].view(n, seq_len)
    return x.clone(), y.clone()


def build(text: str, seq_len: int) -> Splits:
    vocab = sorted(set(text))
    lookup = torch.zeros(max(map(ord, vocab)) + 1, dtype=torch.long)
    lookup[[ord(c) for c in vocab]] = torch.arange(len(vocab))

    def encode(s: str) -> torch.Tensor:
        return lookup[torch.frombuffer(bytearray(s.encode("utf-32-le")), dtype=torch.int32).long()]

    train, held = split(text)
    train_x, train_y = windows(encode(train), seq_len)
    test_x, test_y = windows(encode(held), seq_len)
    return Splits("kjv_chars", train_x, train_y, test_x, test_y, len(vocab), (seq_len,), sequence=True)


def load(root: Optional[str], seq_len: int) -> Splits:
    return build(read_text(root), seq_len)


_loaded = functools.lru_cache(maxsize=2)(load)  # train and eval splits share one read of the files


def dataset(split: str = "train", root: Optional[str] = None, seq_len: int = 128) -> TensorDataset:
    """conf/data/kjv_chars.yaml's component: one split as (seq_len character ids, the seq_len next ids)."""
    return _loaded(root, seq_len).split(split)
