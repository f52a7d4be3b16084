"""Writing a token corpus (codistill/components/data/token_files.py) from text: a tokenizer trained or loaded
locally, documents encoded in order, each followed by the end-of-document token, shards written atomically.

The command-line front end is codistill-tokenize (codistill/tools/tokenize.py); data=kjv_bpe calls it at first use.
A byte-level BPE (Hugging Face `tokenizers`) is trained on the training texts, or a tokenizer.json is loaded; nothing
is downloaded. Shards are raw uint16 (uint32 above 65,536 ids) with meta.json beside them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import numpy as np
from tqdm import tqdm

EOS = "<|endoftext|>"
DOCUMENTS = ("file", "paragraph", "line")
EXTRA = "pip install 'codistill[hf]'"


def tokenizers_module() -> Any:
    try:
        import tokenizers
    except ImportError:
        raise ImportError(f"tokenizing needs the tokenizers package: {EXTRA}") from None
    return tokenizers


def documents(texts: Sequence[str], unit: str) -> Iterator[str]:
    """The documents of some texts: each text whole, its blank-line separated paragraphs, or its lines."""
    for text in texts:
        if unit == "file":
            parts = [text]
        elif unit == "paragraph":
            parts = re.split(r"\n\s*\n", text)
        else:
            parts = text.splitlines()
        yield from (p for p in parts if p.strip())


def train_bpe(texts: Sequence[str], vocab_size: int, unit: str) -> Any:
    """A byte-level BPE of `vocab_size` ids (the end-of-document token included), trained on `texts`."""
    tk = tokenizers_module()
    tokenizer = tk.Tokenizer(tk.models.BPE())
    tokenizer.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = tk.decoders.ByteLevel()
    trainer = tk.trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS], show_progress=False,
                                     initial_alphabet=tk.pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(documents(texts, unit), trainer)
    return tokenizer


def encode(tokenizer: Any, docs: list[str], eos_id: int, dtype: np.dtype, desc: str, batch: int = 256) -> np.ndarray:
    """Every document's ids followed by eos_id, with a progress bar."""
    out: list[np.ndarray] = []
    with tqdm(total=len(docs), desc=desc, unit="doc", disable=None, file=sys.stderr) as bar:
        for i in range(0, len(docs), batch):
            for enc in tokenizer.encode_batch(docs[i : i + batch], add_special_tokens=False):
                out.append(np.asarray(enc.ids + [eos_id], dtype=dtype))
            bar.update(min(batch, len(docs) - i))
    return np.concatenate(out) if out else np.zeros(0, dtype=dtype)


def write_corpus(out: Path, splits: dict[str, Sequence[str]], tokenizer: Optional[Any] = None,
                 vocab_size: int = 4096, unit: str = "file", shard_tokens: int = 100_000_000,
                 replace: bool = True) -> dict:
    """Tokenize `splits` ({name: texts}) into the corpus directory `out`, atomically; return its meta.

    `replace` False: a corpus another process completed at `out` first is kept (ranks building one cache entry)."""
    if tokenizer is None:
        tokenizer = train_bpe(splits["train"], vocab_size, unit)
    eos_id = tokenizer.token_to_id(EOS)
    if eos_id is None:
        tokenizer.add_special_tokens([EOS])
        eos_id = tokenizer.token_to_id(EOS)
    vocab = tokenizer.get_vocab_size(with_added_tokens=True)
    dtype = np.dtype(np.uint16 if vocab <= 2**16 else np.uint32)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        meta: dict[str, Any] = {"dtype": dtype.name, "vocab_size": vocab, "eos_id": eos_id, "eos": EOS,
                                "documents": unit, "shards": {}, "tokens": {}}
        for name, texts in splits.items():
            ids = encode(tokenizer, list(documents(texts, unit)), eos_id, dtype, f"tokenizing {name}")
            shards = [f"{name}_{i:05d}.bin" for i in range(max(1, -(-len(ids) // shard_tokens)))]
            for i, shard in enumerate(shards):
                ids[i * shard_tokens : (i + 1) * shard_tokens].tofile(tmp / shard)
            meta["shards"][name], meta["tokens"][name] = shards, int(len(ids))
        tokenizer.save(str(tmp / "tokenizer.json"))
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        if out.exists() and replace:
            shutil.rmtree(out)
        try:
            os.replace(tmp, out)
        except OSError:
            if replace or not (out / "meta.json").is_file():
                raise
            shutil.rmtree(tmp)  # another process wrote the same corpus first: keep its complete copy
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return meta


def load_tokenizer(path: str) -> Any:
    return tokenizers_module().Tokenizer.from_file(path)
