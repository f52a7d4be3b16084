"""Language models as users bring them: Hugging Face dict rows and causal LMs, token corpora, tied embeddings.

The data and model are a user's (tests/lm_components.py, tests/conf/model/tiny_llama.yaml): a datasets.Dataset of
rows in Hugging Face's convention (labels = input_ids, -100 padding, attention_mask) and a transformers
LlamaForCausalLM from a nested LlamaConfig with tied input/output embeddings.
"""

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from codistill.components import instantiate
from codistill.components.data import corpus, kjv_bpe, kjv_chars
from codistill.components.data.cache import cache_dir
from codistill.components.data.streams import GroupStream
from codistill.components.data.token_files import TokenFiles, window_starts
from codistill.components.models import hf
from codistill.config import ConfigError
from codistill.engine.outer import OuterStep
from codistill.engine.teachers import StateFlattener
from codistill.tools import tokenize
from tests.helpers import REPO, make_trainer, train_for

transformers = pytest.importorskip("transformers")
pytest.importorskip("datasets")

LM = [f"hydra.searchpath=[file://{REPO}/tests/conf]", "data=hf_rows", "model=tiny_llama", "trainer.batch_size=8",
      "trainer.eval_every=0", "data.eval_examples=16", "logger.plots=false"]


def tiny_llama(tied: bool = True) -> torch.nn.Module:
    config = transformers.LlamaConfig(vocab_size=48, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                      num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=tied)
    return transformers.LlamaForCausalLM(config)


def test_hf_convention_labels_train_the_shifted_cross_entropy(tmp_path: Path) -> None:
    """labels = input_ids is scored one position later, -100 and padding never: the loss equals a hand computation
    and Hugging Face's own loss on the same rows."""
    trainer = make_trainer(["loss.ignore_index=-100", "topology.groups=1", "distill=none"], tmp_path, LM)
    w = trainer.workers[0]
    x, y = w._batch(0, 0)
    assert set(x) == {"input_ids", "attention_mask"}  # the labels were taken out of the inputs
    ce = w._loss(x, y, False).ce
    rows = trainer.data.dataset[w.batches.stream.batch_indices(0, 0).tolist()]
    model = w.model.train()  # no dropout in the tiny Llama: train mode computes what _loss computed
    with torch.no_grad():
        logits = model(input_ids=rows["input_ids"], attention_mask=rows["attention_mask"]).logits
        terms = [-F.log_softmax(logits[b, t], -1)[rows["input_ids"][b, t + 1]]
                 for b in range(len(logits)) for t in range(logits.shape[1] - 1)
                 if rows["attention_mask"][b, t + 1] and rows["labels"][b, t + 1] != -100]
        hand = torch.stack(terms).mean()
        theirs = model(**rows).loss  # transformers shifts labels = input_ids itself
    assert (rows["attention_mask"] == 0).any()  # the batch does have padding
    assert torch.allclose(ce, hand, atol=1e-6) and torch.allclose(ce, theirs, atol=1e-6)


@pytest.mark.parametrize(("args", "message"), [
    (["loss.ignore_index=-100", "+data.train.shifted=true"], "already shifted (labels[t] = input_ids[t + 1])"),
    (["data.train._target_=tests.lm_components.copy_pairs", "~data.train.split", "~data.train.examples"],
     "labels equal its input tokens: the model would learn to copy the current token"),
    ([], "set loss.ignore_index=-100"),
    (["data.shift_labels=false", "+data.train.shifted=true"], "if -100 marks padding, set loss.ignore_index=-100"),
])
def test_labels_that_contradict_the_convention_are_refused(tmp_path: Path, args: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as e:
        make_trainer(args, tmp_path, LM)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_tied_embeddings_are_one_parameter_in_the_exchange_and_the_outer_step() -> None:
    torch.manual_seed(0)
    model = tiny_llama()
    flattener = StateFlattener(model)
    assert flattener.numel == sum(p.numel() for p in model.parameters())  # the tied weight once
    assert flattener.numel < sum(t.numel() for t in model.state_dict().values())
    assert "lm_head.weight" not in [name for name, _, _ in flattener.entries]
    d = OmegaConf.create({"mode": "diloco", "outer_dtype": "float32",
                          "outer_optim": {"lr": 0.7, "momentum": 0.9, "nesterov": True}})
    outer = OuterStep(d, flattener, torch.device("cpu"), [(0, flattener.numel)])
    start = flattener.flatten(model)
    outer.update(0, [start, start + 1.0])  # the outer state starts from group 0's
    states = [start + 0.01 * torch.randn_like(start) for _ in range(2)]
    payload = [start - s for s in states]  # what each group sends: outer - its state
    new = outer.update(0, payload)
    # Nesterov SGD, first step: buffer = g, update = g + momentum * buffer
    delta = (payload[0] + payload[1]) / 2
    expected = start - 0.7 * (1 + 0.9) * delta
    assert torch.allclose(new, expected, atol=1e-6)
    flattener.load(model, new)
    embed = model.model.embed_tokens.weight
    assert model.lm_head.weight is embed
    assert torch.allclose(embed.flatten(), expected[: embed.numel()], atol=1e-6)  # not the plain mean of a buffer


def test_from_pretrained_reads_the_directory_once_per_process(tmp_path: Path) -> None:
    saved = tiny_llama()
    saved.save_pretrained(tmp_path / "saved")
    hf._loaded.clear()
    before = hf.loads
    args = ["model=hf_pretrained", f"model.path={tmp_path / 'saved'}", "topology.groups=2", "loss.ignore_index=-100",
            "distill.burn_in_steps=0"]
    trainer = make_trainer(args, tmp_path / "run", LM)
    assert hf.loads == before + 1  # 2 students, 2 teacher copies and the size probe: one read
    for w in trainer.workers.values():
        assert torch.equal(w.model.model.embed_tokens.weight, saved.model.embed_tokens.weight)
        assert w.model.lm_head.weight is w.model.model.embed_tokens.weight
    fresh = make_trainer([*args, "model.reinit_per_group=true"], tmp_path / "fresh", LM)
    assert hf.loads == before + 1
    a, b = (fresh.workers[g].model.model.embed_tokens.weight for g in (0, 1))
    assert not torch.equal(a, saved.model.embed_tokens.weight) and not torch.equal(a, b)


def test_tokenize_round_trip_and_token_windows(tmp_path: Path) -> None:
    docs = ["In the beginning God created the heaven and the earth.", "And the earth was without form, and void.",
            "And God said, Let there be light: and there was light."]
    (tmp_path / "a.txt").write_text("\n\n".join(docs * 20))
    assert tokenize.main(["--train", str(tmp_path / "a.txt"), "--val", str(tmp_path / "a.txt"), "--out",
                          str(tmp_path / "corpus"), "--vocab-size", "300", "--documents", "paragraph"]) == 0
    tok = corpus.load_tokenizer(str(tmp_path / "corpus" / "tokenizer.json"))
    ids = np.fromfile(tmp_path / "corpus" / "train_00000.bin", dtype=np.uint16)
    eos = tok.token_to_id(corpus.EOS)
    pieces = np.split(ids, np.flatnonzero(ids == eos) + 1)[:-1]
    assert [tok.decode(p[:-1].tolist()) for p in pieces] == docs * 20  # every document back, each ended by EOS
    packed = TokenFiles(str(tmp_path / "corpus"), "train", seq_len=8)
    x, y = packed[3]
    assert torch.equal(x[1:], y[:-1]) and torch.equal(x, torch.from_numpy(ids[24:32].astype(np.int64)))
    honour = TokenFiles(str(tmp_path / "corpus"), "val", seq_len=8, boundaries="honour")
    bx, by = honour.__getitems__(list(range(len(honour))))
    assert not (bx == eos).any()  # no window crosses a document: an EOS can only be the last label
    assert ((by == eos).sum(1) <= 1).all() and ((by[:, :-1] == eos).sum() == 0)
    # which windows a step trains on is a pure function of (seed, group, step): a fresh stream (a resumed run,
    # another process) draws the same ones
    streams = [GroupStream(len(packed), 1, 2, 2, 4, seed=3, partition="shared") for _ in range(2)]
    assert torch.equal(streams[0].batch_indices(7, 1), streams[1].batch_indices(7, 1))
    assert len(window_starts(ids, 8, "pack", eos)) == (len(ids) - 1) // 8


@pytest.mark.parametrize("mode", ["codistill", "diloco"])
def test_token_corpus_training_resumes_bit_exact(tmp_path: Path, mode: str) -> None:
    """Windows of a token corpus, a tied-embedding Llama: 8 steps straight == 4, stop, resume, 4 (DiLoCo: its outer
    state, the tied embedding one parameter, restored too)."""
    text = "\n\n".join(f"verse {i} and the light was good {i % 7}" for i in range(300))
    (tmp_path / "t.txt").write_text(text)
    meta = corpus.write_corpus(tmp_path / "corpus", {"train": [text], "val": [text[:2000]]}, vocab_size=64,
                                 unit="paragraph")
    args = ["data=token_files", f"data.train.root={tmp_path / 'corpus'}", f"data.num_classes={meta['vocab_size']}",
            "data.train.seq_len=16", "trainer.checkpoint_every=4", "distill.burn_in_steps=2",
            "distill.exchange_every=3", "optim.name=adam", "optim.lr=0.01", f"distill={mode}"]

    straight = train_for(tmp_path / "straight", 8, args, LM)
    train_for(tmp_path / "resumed", 4, args, LM)
    resumed = train_for(tmp_path / "resumed", 8, args, LM)
    for g in (0, 1):
        a, b = straight.workers[g].model.state_dict(), resumed.workers[g].model.state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a)
    if mode == "diloco":
        assert torch.equal(straight.outer.params[0], resumed.outer.params[0])
        assert straight.outer.buffers[0].numel() == 0  # the tied lm_head is no buffer


def test_a_presets_leftover_arguments_are_named_with_the_empty_preset() -> None:
    node = OmegaConf.create({"_target_": "torch.nn.Linear", "in_features": 4, "out_features": 2, "input_shape": [4]})
    with pytest.raises(ConfigError, match=r"model sets input_shape, which it does not take.*model=custom"):
        instantiate.check_arguments(node, "model")
    node = OmegaConf.create({"_target_": "tests.lm_components.hf_rows", "split": "train", "root": None})
    with pytest.raises(ConfigError, match=r"data.train sets root.*data=custom"):
        instantiate.check_arguments(node, "data.train")


def test_plain_hf_rows_collate_and_ragged_rows_are_one_line(tmp_path: Path) -> None:
    """A datasets.Dataset as load_from_disk or load_dataset give it (python lists, no torch format) batches as is;
    rows of different lengths without a collator are refused with one line naming the key."""
    import datasets

    from codistill.components.data.pipeline import DataFormatError, fetch

    rows = datasets.Dataset.from_dict({"input_ids": [[1, 2, 3], [4, 5, 6]], "labels": [[1, 2, 3], [4, 5, 6]]})
    x, y = fetch(rows, [0, 1], None)
    assert torch.equal(x["input_ids"], torch.tensor([[1, 2, 3], [4, 5, 6]])) and y.shape == (2, 3)
    rows.save_to_disk(str(tmp_path / "rows"))  # load_from_disk as a component, by import path
    saved = instantiate.build(OmegaConf.create({"_target_": "datasets.load_from_disk",
                                                "dataset_path": str(tmp_path / "rows")}), "data.train")
    sx, sy = fetch(saved, [0, 1], None)
    assert torch.equal(sx["input_ids"], x["input_ids"]) and torch.equal(sy, y)
    ragged = datasets.Dataset.from_dict({"input_ids": [[1, 2, 3], [4, 5]], "labels": [[1, 2, 3], [4, 5]]})
    with pytest.raises(DataFormatError, match="'input_ids' have different shapes.*data.collate_fn"):
        fetch(ragged, [0, 1], None)


@pytest.mark.skipif(not (cache_dir() / kjv_chars.FILE).is_file() and shutil.which("bible") is None,
                    reason=f"KJV text not installed ({kjv_chars.INSTALL})")
def test_kjv_bpe_is_a_local_bpe_token_corpus() -> None:
    """data=kjv_bpe: a byte-level BPE trained locally on the KJV training text (cached), both splits as windows."""
    train, test = (kjv_bpe.dataset(split, seq_len=128, vocab_size=4096) for split in ("train", "test"))
    assert train.vocab_size == 4096 and train.dtype == np.uint16
    assert 0.9e6 < train.num_tokens < 1.2e6 and 0.09e6 < test.num_tokens < 0.13e6  # 4.3 M characters, ~3.8 per token
    assert len(train) == (train.num_tokens - 1) // 128 and len(test) == (test.num_tokens - 1) // 128
    x, y = train[5]
    assert x.shape == y.shape == (128,) and torch.equal(x[1:], y[:-1]) and int(x.max()) < 4096
    tok = corpus.load_tokenizer(str(train.root / "tokenizer.json"))
    assert "In the beginning God created the heaven" in tok.decode(train.__getitems__([0])[0][0].tolist())


def test_dict_inputs_go_to_the_keys_the_forward_names() -> None:
    """model(**inputs) with the named keys (use_cache=False where taken); a forward naming none takes the dict whole."""
    from codistill.engine.logits import call

    class Whole(torch.nn.Module):
        def forward(self, batch):
            return sorted(batch)

    class Named(torch.nn.Module):
        def forward(self, input_ids, attention_mask=None, use_cache=None):
            return (input_ids, attention_mask, use_cache)

    x = {"input_ids": torch.zeros(1), "attention_mask": torch.ones(1), "special_tokens_mask": torch.ones(1)}
    assert call(Whole(), x) == ["attention_mask", "input_ids", "special_tokens_mask"]
    ids, mask, cache = call(Named(), x)
    assert ids is x["input_ids"] and mask is x["attention_mask"] and cache is False


def test_the_examples_datasets_blocks_and_transformers_collator(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                                ) -> None:
    """examples/hf_causal_lm's data path: load_dataset("text") blocks + DataCollatorForLanguageModeling give dict
    batches whose labels are the input ids (Hugging Face's convention, shifted by the engine for a causal LM)."""
    from codistill.components.data.pipeline import fetch

    monkeypatch.syspath_prepend(str(REPO / "examples" / "hf_causal_lm"))
    from hf_causal_lm import data

    text = tmp_path / "t.txt"
    text.write_text("\n".join(f"And the evening and the morning were day {i}." for i in range(200)))
    tok = corpus.train_bpe([text.read_text()], 128, "line")
    tok.save(str(tmp_path / "tokenizer.json"))
    blocks = data.text_blocks([str(text)], str(tmp_path / "tokenizer.json"), "train", block_size=16)
    x, y = fetch(blocks, [0, 1, 2], data.collator(str(tmp_path / "tokenizer.json")))
    assert set(x) == {"input_ids", "attention_mask"} and x["input_ids"].shape == (3, 16)
    assert torch.equal(y, x["input_ids"])
