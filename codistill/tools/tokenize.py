"""codistill-tokenize: text files -> a token corpus (codistill/components/data/token_files.py), all locally.

    codistill-tokenize --train a.txt b.txt --val c.txt --out corpus/ --vocab-size 4096     # trains a byte-level BPE
    codistill-tokenize --train a.txt --out corpus/ --tokenizer my/tokenizer.json          # or uses yours

A byte-level BPE (Hugging Face `tokenizers`) is trained on the training files, or a tokenizer.json is loaded;
nothing is downloaded. Documents (a whole file, a paragraph between blank lines, or a line) are encoded in order,
each followed by the end-of-document token, and written as raw uint16 shards (uint32 above 65,536 ids) with
meta.json. The corpus is written into a temporary directory and renamed into place, so a reader never sees half a
corpus.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

from codistill.components.data.corpus import DOCUMENTS, load_tokenizer, write_corpus


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="codistill-tokenize", description=__doc__.split("\n\n")[0])
    parser.add_argument("--train", nargs="+", required=True, help="text files of the training split")
    parser.add_argument("--val", nargs="*", default=[], help="text files of the held-out split")
    parser.add_argument("--out", required=True, help="the corpus directory to write")
    parser.add_argument("--tokenizer", help="a tokenizer.json to use instead of training a BPE")
    parser.add_argument("--vocab-size", type=int, default=4096, help="ids of the trained BPE (default 4096)")
    parser.add_argument("--documents", choices=DOCUMENTS, default="file",
                        help="what one document is: a file, a blank-line separated paragraph, or a line")
    parser.add_argument("--shard-tokens", type=int, default=100_000_000, help="tokens per shard file")
    args = parser.parse_args(argv)
    try:
        files = {"train": args.train, **({"val": args.val} if args.val else {})}
        texts = {name: [Path(f).read_text(encoding="utf-8") for f in paths] for name, paths in files.items()}
        tokenizer = load_tokenizer(args.tokenizer) if args.tokenizer else None
        meta = write_corpus(Path(args.out), texts, tokenizer, args.vocab_size, args.documents, args.shard_tokens)
    except Exception as e:  # unreadable files, a bad tokenizer.json: tokenizers raises plain Exceptions
        print(f"codistill-tokenize: error: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
              file=sys.stderr)
        return 2
    print(f"wrote {args.out}: vocabulary {meta['vocab_size']}, {meta['dtype']}, tokens "
          + ", ".join(f"{k} {v}" for k, v in meta["tokens"].items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
