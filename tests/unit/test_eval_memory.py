"""Evaluation's peak memory does not grow with the held-out set: metrics are accumulated batch by batch and chunk
by chunk. Measured by counting the bytes of live tensor storages allocated during evaluation, not by timing."""

from __future__ import annotations

import weakref
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from tests.helpers import ANY_MODEL, REPO, make_trainer

LM = [*ANY_MODEL, f"hydra.searchpath=[file://{REPO}/tests/conf]", "data=tokens", "model=tiny_llama"]


class LiveBytes(TorchDispatchMode):
    """The peak of the bytes held by tensor storages created inside the mode (a storage counts while any tensor
    made here still views it)."""

    def __init__(self) -> None:
        super().__init__()
        self.holders: dict[int, set[int]] = {}
        self.size: dict[int, int] = {}
        self.live = self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.device.type != "meta":
                self._hold(t)
        return out

    def _hold(self, t: torch.Tensor) -> None:
        key = t.untyped_storage().data_ptr()
        if key not in self.holders:
            self.holders[key], self.size[key] = set(), t.untyped_storage().nbytes()
            self.live += self.size[key]
            self.peak = max(self.peak, self.live)
        if id(t) not in self.holders[key]:
            self.holders[key].add(id(t))
            weakref.finalize(t, self._release, key, id(t))

    def _release(self, key: int, tid: int) -> None:
        holders = self.holders.get(key)
        if holders is None:
            return
        holders.discard(tid)
        if not holders:
            self.live -= self.size.pop(key)
            del self.holders[key]


def eval_peak(tmp_path: Path, examples: int) -> int:
    trainer = make_trainer(["topology.groups=2", "trainer.max_steps=1", "data.eval_batch_size=16",
                            f"data.eval.examples={examples}", f"data.eval_examples={examples}",
                            "loss.output_layer=auto", "loss.chunk_tokens=64"], tmp_path / str(examples), LM)
    try:
        with LiveBytes() as counter:
            sums = trainer.evaluator.sums()
        assert sums[0, 2].item() == examples * 16  # every position scored
        return counter.peak
    finally:
        trainer.close()


def test_ten_times_the_held_out_set_adds_less_than_a_batch(tmp_path: Path) -> None:
    small, large = eval_peak(tmp_path, 32), eval_peak(tmp_path, 320)
    batch_logits = 16 * 16 * 64 * 4  # one batch's float32 logits: eval_batch_size x seq_len x vocab
    assert large - small <= batch_logits, (small, large)
