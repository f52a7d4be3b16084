"""The input pipeline: any map-style dataset of (input, target) samples -> each replica's batches, through a DataLoader.

    loader of (group g, replica r) = DataLoader(TrainBatches, batch_sampler=StepSampler(g's stream, r, start step))

The batch sampler yields (step, indices): which examples is a pure function of (seed, group, step) (see
streams.py), so resuming at step s only starts the sampler at s. Randomness inside a dataset (augmentation) is
seeded per batch from (seed, group, replica, step) — in the main process or whichever loader worker fetches it —
so augmented batches are the same with any `num_workers`, in simulated mode and under torchrun, and after a resume.
The process's own generators (dropout) are saved and restored around the fetch.

Two dataset-independent options act on the training set only, the same way for every group: `train_examples` (a
seeded subset) and `label_noise` (seeded symmetric noise: each label is replaced, with probability p, by one of
the other C - 1 classes, drawn uniformly).
"""

from __future__ import annotations

import contextlib
import random
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, default_collate

from codistill.data.base import Batch
from codistill.data.streams import GroupStream
from codistill.rng import derive_seed


class DataFormatError(ValueError):
    """Samples that are not (input, target) pairs, or labels outside [0, C): one line that says what came."""

    @staticmethod
    def line(e: Exception) -> str:
        """The one-line message, also of an error a DataLoader worker raised (re-raised with its traceback)."""
        last = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        return last.split("DataFormatError: ", 1)[-1]


Collate = Callable[[list[Any]], Any]


def fetch(dataset: Dataset, indices: Sequence[int], collate: Optional[Collate]) -> tuple[Any, torch.Tensor]:
    """The (inputs, targets) batch of `indices`: a batched fetch when the dataset has one, else sample by sample."""
    getitems = getattr(dataset, "__getitems__", None)
    samples = getitems(list(indices)) if getitems is not None else [dataset[i] for i in indices]
    if isinstance(samples, Batch):
        batch = tuple(samples)
    else:
        if not isinstance(samples, (list, tuple)) or not samples:
            raise DataFormatError(f"the dataset's batched fetch returned {type(samples).__name__}, not a list of samples")
        first = samples[0]
        if collate is None and not (isinstance(first, (tuple, list)) and len(first) == 2):
            raise DataFormatError(
                f"a sample of the dataset is {_describe(first)}: samples must be (input, target) pairs "
                "(or give data.collate_fn that turns samples into an (inputs, targets) batch)"
            )
        batch = (collate or default_collate)(samples)
    if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
        raise DataFormatError(f"a collated batch is {_describe(batch)}: it must be (inputs, targets)")
    x, y = batch
    if not isinstance(y, torch.Tensor) or y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise DataFormatError(f"targets must be integer class labels; a batch's targets are {_describe(y)}")
    return x, y.long()


def to_device(x: Any, device: torch.device) -> Any:
    """A batch's inputs on `device`: a tensor, or (nested) lists, tuples and dicts of tensors."""
    if isinstance(x, torch.Tensor):
        return x.to(device, non_blocking=True)
    if isinstance(x, dict):
        return {k: to_device(v, device) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(to_device(v, device) for v in x)
    return x


def _describe(obj: Any) -> str:
    if isinstance(obj, torch.Tensor):
        return f"a {obj.dtype} tensor of shape {tuple(obj.shape)}"
    if isinstance(obj, (tuple, list)):
        return f"a {type(obj).__name__} of {len(obj)}"
    if isinstance(obj, dict):
        return f"a dict with keys {sorted(map(str, obj))[:6]}"
    return f"a {type(obj).__name__}"


@dataclass
class Labels:
    """What a label may be: a class in [0, num_classes), or `ignore_index` (padding)."""

    num_classes: int
    ignore_index: Optional[int] = None

    def check(self, y: torch.Tensor, where: str) -> None:
        bad = (y < 0) | (y >= self.num_classes)
        if self.ignore_index is not None:
            bad &= y != self.ignore_index
        if bad.any():
            value = int(y[bad][0])
            raise DataFormatError(
                f"{where} has label {value}, outside [0, {self.num_classes}) — the model predicts {self.num_classes} "
                "classes" + ("" if self.ignore_index is None else f" (loss.ignore_index={self.ignore_index} is allowed)")
            )


class LabelNoise:
    """Seeded symmetric label noise: the same corrupted labels for every group, replica and run of one seed."""

    def __init__(self, p: float, num_examples: int, seed: int) -> None:
        rng = np.random.default_rng([seed, 0x401CE])
        self.flip = torch.from_numpy(rng.random(num_examples) < p)
        self.draw = torch.from_numpy(rng.random(num_examples))

    def apply(self, y: torch.Tensor, indices: torch.Tensor, num_classes: int) -> torch.Tensor:
        if y.dim() != 1:
            raise DataFormatError(f"data.label_noise needs one class label per example; targets have shape {tuple(y.shape)}")
        flip = self.flip[indices]
        shift = 1 + (self.draw[indices] * (num_classes - 1)).long()  # one of the other C - 1 classes
        return torch.where(flip, (y + shift) % num_classes, y)


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seed torch's CPU generator, numpy's and python's for a block, then give the process back its own states.

    Only the CPU generator: a dataset draws on the CPU, and torch.manual_seed would also reseed (and here clobber)
    the CUDA generators that dropout draws from; it is also ~100x slower per call.
    """
    cpu = torch.default_generator
    states = cpu.get_state(), np.random.get_state(), random.getstate()
    cpu.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)
    try:
        yield
    finally:
        cpu.set_state(states[0])
        np.random.set_state(states[1])
        random.setstate(states[2])


class TrainBatches(Dataset):
    """The training set as one replica of one group fetches it: a batch per (step, indices) request."""

    def __init__(self, data: "TrainingData", group: int, replica: int) -> None:
        self.data, self.group, self.replica = data, group, replica

    def __len__(self) -> int:
        return self.data.num_examples

    def __getitems__(self, request: tuple[int, list[int]]) -> tuple[int, Any, torch.Tensor]:
        """(step, inputs, targets) of one step's request: the step comes back so the consumer can check its place."""
        step, positions = request
        d = self.data
        indices = torch.as_tensor(positions, dtype=torch.long)
        if d.subset is not None:
            indices = d.subset[indices]
        with seeded(derive_seed(d.seed, "data", self.group, self.replica, step)):
            x, y = fetch(d.dataset, indices.tolist(), d.collate)
        if d.noise is not None:
            y = d.noise.apply(y, indices, d.labels.num_classes)
        d.labels.check(y, f"the training batch of group {self.group} replica {self.replica} at step {step}")
        return step, x, y

    def __getitem__(self, i: int) -> Any:  # DataLoader only calls __getitems__; a Dataset must define this
        raise NotImplementedError


class EvalBatches(Dataset):
    """The held-out set, fetched batch by batch (no seeding: evaluation is deterministic)."""

    def __init__(self, data: "TrainingData") -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data.eval_dataset)

    def __getitems__(self, indices: list[int]) -> tuple[Any, torch.Tensor]:
        x, y = fetch(self.data.eval_dataset, indices, self.data.collate)
        self.data.labels.check(y, "the held-out set")
        return x, y

    def __getitem__(self, i: int) -> Any:
        raise NotImplementedError


class StepSampler:
    """(step, this replica's indices) for every step from `start` to `stop`: a batch sampler over the stream."""

    def __init__(self, stream: GroupStream, replica: int, start: int, stop: int) -> None:
        self.stream, self.replica, self.start, self.stop = stream, replica, start, stop

    def __iter__(self) -> Iterator[tuple[int, list[int]]]:
        for step in range(self.start, self.stop):
            yield step, self.stream.batch_indices(step, self.replica).tolist()

    def __len__(self) -> int:
        return self.stop - self.start


def _already_collated(batch: list[Any]) -> Any:
    return batch  # TrainBatches / EvalBatches already return the collated batch


@dataclass
class LoaderOptions:
    num_workers: int = 0
    pin_memory: bool = False
    prefetch_factor: int = 2

    def kwargs(self, persistent: bool) -> dict[str, Any]:
        workers = self.num_workers > 0
        return {
            "num_workers": self.num_workers,
            "pin_memory": self.pin_memory,
            "prefetch_factor": self.prefetch_factor if workers else None,
            "persistent_workers": persistent and workers,
            "collate_fn": _already_collated,
            "generator": torch.Generator(),  # the loader never draws from the process's own generator
        }


def training_order(n: int, seed: int) -> np.ndarray:
    """The seeded order data.train_examples takes its subset from (the first ones): the examples after them were
    never trained on, so a tuning script may hold them out as a validation set."""
    return np.random.default_rng([seed, 0x5B5E7]).permutation(n)


@dataclass
class TrainingData:
    """The run's data: training and held-out datasets, their collate function, and the training-set options."""

    dataset: Dataset
    eval_dataset: Dataset
    collate: Optional[Collate]
    seed: int
    subset: Optional[torch.Tensor] = None  # data.train_examples: the chosen indices of `dataset`
    noise: Optional[LabelNoise] = None
    labels: Labels = None  # type: ignore[assignment]  # set by the trainer once the model's class count is known
    options: LoaderOptions = None  # type: ignore[assignment]

    @classmethod
    def create(
        cls, dataset: Dataset, eval_dataset: Dataset, collate: Optional[Collate], seed: int, train_examples: int = 0,
        label_noise: float = 0.0, options: Optional[LoaderOptions] = None,
    ) -> "TrainingData":
        """Check the datasets' sizes and one sample of each; raise DataFormatError with one line on a problem."""
        for name, ds in (("data.train", dataset), ("data.eval", eval_dataset)):
            if not hasattr(ds, "__len__") or not hasattr(ds, "__getitem__"):
                raise DataFormatError(f"{name} is a {type(ds).__name__}, not a map-style dataset (__len__ and __getitem__)")
            if len(ds) == 0:
                raise DataFormatError(f"{name} is empty")
            with seeded(derive_seed(seed, "check")):  # a dataset's augmentation must not draw from our generators
                fetch(ds, [0], collate)  # samples are (input, target) pairs with integer targets
        n = len(dataset)
        if train_examples > n:
            raise DataFormatError(f"data.train_examples={train_examples} is larger than the training set ({n} examples)")
        subset = None
        if 0 < train_examples < n:
            subset = torch.from_numpy(np.sort(training_order(n, seed)[:train_examples]))
        noise = LabelNoise(label_noise, n, seed) if label_noise > 0 else None
        return cls(dataset, eval_dataset, collate, seed, subset, noise, options=options or LoaderOptions())

    @property
    def num_examples(self) -> int:
        """Training examples the streams draw from (after data.train_examples)."""
        return len(self.subset) if self.subset is not None else len(self.dataset)

    def probe(self) -> tuple[Any, torch.Tensor]:
        """Two training examples (a batch of the model's input type), to check a model's output against the labels."""
        with seeded(derive_seed(self.seed, "check")):
            return fetch(self.dataset, [0, 1] if len(self.dataset) > 1 else [0], self.collate)

    def train_loader(self, stream: GroupStream, group: int, replica: int, start: int, stop: int) -> DataLoader:
        return DataLoader(
            TrainBatches(self, group, replica), batch_sampler=StepSampler(stream, replica, start, stop),
            **self.options.kwargs(persistent=False),
        )

    def eval_loader(self, indices: Sequence[int], batch_size: int) -> DataLoader:
        """Batches of the held-out `indices`, in order; reusable (its workers persist between evaluations)."""
        chunks = [list(indices[i : i + batch_size]) for i in range(0, len(indices), batch_size)]
        return DataLoader(EvalBatches(self), batch_sampler=chunks, **self.options.kwargs(persistent=True))
