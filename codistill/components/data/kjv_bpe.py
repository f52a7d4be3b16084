"""The King James Bible as a token corpus: a byte-level BPE trained locally on the text, then token shards.

Provenance: the same text as data=kjv_chars (Debian's bible-kjv, extracted with the `bible` command and cached),
with the same fixed split (every tenth block of 10,000 characters held out). At first use a byte-level BPE of
`vocab_size` ids is trained on the training text and both splits are written as a token corpus
(codistill/tools/tokenize.py) under the codistill cache, `kjv_bpe_<vocab_size>/`; later runs map those files.
Nothing is downloaded. Documents are the text's blank-line separated paragraphs (chapter headings and chapters),
packed with the end-of-document token between them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from codistill.components.data import kjv_chars
from codistill.components.data.cache import cache_dir
from codistill.components.data.corpus import write_corpus
from codistill.components.data.token_files import TokenFiles


def corpus(root: Optional[str], vocab_size: int) -> Path:
    """The corpus directory, tokenized on first use (ranks racing to write it each rename a complete copy)."""
    out = (Path(root) if root else cache_dir()) / f"kjv_bpe_{vocab_size}"
    if not (out / "meta.json").is_file():
        train, held = kjv_chars.split(kjv_chars.read_text(root))
        write_corpus(out, {"train": [train], "val": [held]}, vocab_size=vocab_size, unit="paragraph",
                     replace=False)
    return out


def dataset(split: str = "train", root: Optional[str] = None, seq_len: int = 128, vocab_size: int = 4096,
            boundaries: str = "pack") -> TokenFiles:
    """conf/data/kjv_bpe.yaml's component: `train` or `test` windows of seq_len BPE tokens and their next tokens."""
    if split not in ("train", "test"):
        raise ValueError(f"split={split!r} is not one of train, test")
    return TokenFiles(str(corpus(root, vocab_size)), "train" if split == "train" else "val", seq_len, boundaries)
