"""Local text files as a Hugging Face dataset of token blocks, the way transformers' run_clm.py prepares them.

`datasets.load_dataset("text", data_files=...)` reads the files (no download: the "text" builder ships with
`datasets`), a tokenizer.json (e.g. the one `codistill-tokenize` trained) encodes every line, and the ids are
concatenated and cut into blocks of `block_size`. Every tenth block is held out. Rows are dicts with `input_ids` and
`attention_mask`; the labels come from the collator (DataCollatorForLanguageModeling with mlm=False sets
labels = input_ids, Hugging Face's causal-LM convention, which codistill shifts like transformers does).
"""

from __future__ import annotations

from itertools import chain

HELD_OUT_EVERY = 10


def tokenizer(tokenizer_file: str):
    """A transformers tokenizer around a tokenizer.json, padding with its end-of-document token."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_file=tokenizer_file, eos_token="<|endoftext|>",
                                   pad_token="<|endoftext|>")


def text_blocks(files: list[str], tokenizer_file: str, split: str = "train", block_size: int = 64,
                max_blocks: int = 0):
    """The `split` ("train" or "test") of `files` as blocks of `block_size` token ids."""
    import datasets

    tok = tokenizer(tokenizer_file)
    lines = datasets.load_dataset("text", data_files=list(files), split="train")
    ids = lines.map(lambda b: tok(b["text"]), batched=True, remove_columns=["text"])

    def group(batch: dict) -> dict:
        joined = {k: list(chain.from_iterable(batch[k])) for k in batch}
        n = len(joined["input_ids"]) // block_size * block_size
        return {k: [v[i : i + block_size] for i in range(0, n, block_size)] for k, v in joined.items()}

    blocks = ids.map(group, batched=True, batch_size=10_000)
    keep = [i for i in range(len(blocks)) if (i % HELD_OUT_EVERY == HELD_OUT_EVERY - 1) == (split == "test")]
    blocks = blocks.select(keep[:max_blocks] if max_blocks else keep)
    return blocks.with_format("torch")


def collator(tokenizer_file: str):
    """DataCollatorForLanguageModeling(mlm=False): dict batches with labels = input_ids (padding -100)."""
    from transformers import DataCollatorForLanguageModeling

    return DataCollatorForLanguageModeling(tokenizer(tokenizer_file), mlm=False)
