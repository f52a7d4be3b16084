"""The input pipeline: any map-style dataset of (input, target) samples -> each replica's batches, through a DataLoader.

    loader of (group g, replica r) = DataLoader(TrainBatches, batch_sampler=StepSampler(g's stream, r, start step))

The batch sampler yields (step, indices): which examples is a pure function of (seed, group, step) (see
streams.py), so resuming at step s only starts the sampler at s. Randomness inside a dataset (augmentation) is
seeded per batch from (seed, group, replica, step) — in the main process or whichever loader worker fetches it —
so augmented batches are the same with any `num_workers`, in simulated mode and under torchrun, and after a resume.
The process's own generators (dropout) are saved and restored around the fetch.

Dataset-independent options act on the training set only, the same way for every group (`TrainSetOptions`):
`validation_examples` (a fixed set of examples kept out of training, to tune on without touching the test set),
`exclude_classes` (a transfer set without some classes), `train_examples` (a seeded subset of what remains),
`label_noise` (seeded symmetric noise: each label is replaced, with probability p, by one of the other C - 1
classes, drawn uniformly) and `jitter` (images shifted by up to N pixels, drawn per batch like any augmentation).
"""

from __future__ import annotations

import contextlib
import dataclasses
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, default_collate

from codistill.components.data.base import Batch, IndexedDataset
from codistill.components.data.labels import Labels, split_labels
from codistill.components.data.streams import GroupStream
from codistill.components.rng import derive_seed
from codistill.errors import DataFormatError


Collate = Callable[[list[Any]], Any]


def fetch(dataset: Dataset, indices: Sequence[int], collate: Optional[Collate],
          labels_key: str = "labels") -> tuple[Any, torch.Tensor]:
    """The (inputs, targets) batch of `indices`: a batched fetch when the dataset has one, else sample by sample.

    Samples (or a collated batch) may be dicts, as Hugging Face datasets and collators give them: the targets are
    the `labels_key` entry and the inputs every other entry (codistill/components/data/labels.py).
    """
    getitems = getattr(dataset, "__getitems__", None)
    samples = getitems(list(indices)) if getitems is not None else [dataset[i] for i in indices]
    if isinstance(samples, Batch):
        batch: Any = tuple(samples)
    else:
        if not isinstance(samples, (list, tuple)) or not samples:
            raise DataFormatError(f"the dataset's batched fetch returned {type(samples).__name__}, not a list of samples")
        first = samples[0]
        if collate is None and not (isinstance(first, (tuple, list)) and len(first) == 2 or isinstance(first, Mapping)):
            raise DataFormatError(
                f"a sample of the dataset is {_describe(first)}: samples must be (input, target) pairs or dicts with "
                f"{labels_key!r} (or give data.collate_fn that turns samples into an (inputs, targets) batch)"
            )
        batch = (collate or (collate_rows if isinstance(first, Mapping) else default_collate))(samples)
    if isinstance(batch, Mapping):
        batch = split_labels(batch, labels_key)
    if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
        raise DataFormatError(f"a collated batch is {_describe(batch)}: it must be (inputs, targets) or a dict with "
                              f"{labels_key!r}")
    x, y = batch
    if not isinstance(y, torch.Tensor) or y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise DataFormatError(f"targets must be integer class labels; a batch's targets are {_describe(y)}")
    return x, y.long()


def collate_rows(rows: list[Mapping]) -> dict[str, torch.Tensor]:
    """Dict rows (a Hugging Face dataset, with or without with_format("torch")) -> a dict batch of tensors."""
    batch = {}
    for key in rows[0]:
        values = [row[key] for row in rows]
        try:
            batch[key] = torch.stack(values) if isinstance(values[0], torch.Tensor) else torch.as_tensor(values)
        except (RuntimeError, ValueError, TypeError):
            shapes = sorted({tuple(torch.as_tensor(v).shape) for v in values}, key=str)[:3]
            raise DataFormatError(f"rows' {key!r} have different shapes ({shapes}): pad them to one length, or give "
                                  "data.collate_fn (e.g. a transformers data collator)") from None
    return batch


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
    if isinstance(obj, Mapping):
        return f"a dict with keys {sorted(map(str, obj))[:6]}"
    return f"a {type(obj).__name__}"


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


def jitter(x: Any, pixels: int) -> torch.Tensor:
    """Each image of the batch shifted by its own (dy, dx) in [-pixels, pixels]^2, edge pixels replicated.

    Hinton et al. (2015) trained their MNIST teacher on inputs "jittered by up to two pixels in any direction".
    Replicating the edge (not padding with zeros) keeps a standardised background at its own value.
    """
    if not (isinstance(x, torch.Tensor) and x.is_floating_point() and x.dim() >= 3):
        raise DataFormatError(f"data.jitter shifts images: inputs must be a float tensor [B, ..., H, W]; a batch's inputs "
                              f"are {_describe(x)}")
    B, H, W = x.shape[0], x.shape[-2], x.shape[-1]
    dy, dx = torch.randint(-pixels, pixels + 1, (2, B))
    rows = (torch.arange(H) + dy[:, None]).clamp_(0, H - 1)
    cols = (torch.arange(W) + dx[:, None]).clamp_(0, W - 1)
    shifted = x.reshape(B, -1, H, W)[torch.arange(B)[:, None, None], :, rows[:, :, None], cols[:, None, :]]
    return shifted.permute(0, 3, 1, 2).reshape(x.shape)  # advanced indexing put the channels last


def all_labels(dataset: Dataset, collate: Optional[Collate], chunk: int = 4096) -> torch.Tensor:
    """Every training label, from the dataset's `targets` when it has them, else read batch by batch (once)."""
    targets = getattr(dataset, "targets", None)
    if targets is not None:
        return torch.as_tensor(targets)
    return torch.cat([fetch(dataset, range(i, min(i + chunk, len(dataset))), collate)[1]
                      for i in range(0, len(dataset), chunk)])


def validation_indices(num_examples: int, count: int) -> torch.Tensor:
    """The `count` training examples kept out for validation: a fixed draw, the same for every seed and group, so
    runs tuned on it compare on the same examples."""
    return torch.from_numpy(np.sort(np.random.default_rng(0x7A11D).permutation(num_examples)[:count]))


@dataclass(frozen=True)
class TrainSetOptions:
    """What a run does to its training set, whatever the dataset (the `data.*` keys of the same names)."""

    train_examples: int = 0  # > 0: a seeded subset of this many examples
    label_noise: float = 0.0
    exclude_classes: tuple[int, ...] = ()  # classes (by their true label) left out of the training set
    validation_examples: int = 0  # kept out of training, for tuning; see validation_indices
    jitter: int = 0  # pixels

    def training_indices(self, dataset: Dataset, collate: Optional[Collate], seed: int) -> Optional[torch.Tensor]:
        """The indices of `dataset` the streams draw from (sorted), or None for all of them."""
        n = len(dataset)
        keep = torch.ones(n, dtype=torch.bool)
        if self.validation_examples:
            if self.validation_examples >= n:
                raise DataFormatError(f"data.validation_examples={self.validation_examples} leaves no training example "
                                      f"(the training set has {n})")
            keep[validation_indices(n, self.validation_examples)] = False
        if self.exclude_classes:
            labels = all_labels(dataset, collate)
            for c in self.exclude_classes:
                if not (labels == c).any():
                    raise DataFormatError(f"data.exclude_classes has class {c}, but no training example has that label "
                                          f"(labels are in [{int(labels.min())}, {int(labels.max())}])")
            keep &= ~torch.isin(labels, torch.tensor(self.exclude_classes, dtype=labels.dtype))
            if not keep.any():
                raise DataFormatError(f"data.exclude_classes={list(self.exclude_classes)} leaves no training example")
        available = keep.nonzero().squeeze(1).numpy()
        if self.train_examples > len(available):
            raise DataFormatError(f"data.train_examples={self.train_examples} is larger than the training set "
                                  f"({len(available)} examples)")
        if 0 < self.train_examples < len(available):
            available = np.sort(np.random.default_rng([seed, 0x5B5E7]).permutation(available)[: self.train_examples])
        return None if len(available) == n else torch.from_numpy(np.ascontiguousarray(available))


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
            x, y = fetch(d.dataset, indices.tolist(), d.collate, d.labels_key)
            if d.jitter:
                x = jitter(x, d.jitter)
        if d.noise is not None:
            y = d.noise.apply(y, indices, d.labels.num_classes)
        y = d.labels.align(x, y)
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
        x, y = fetch(self.data.eval_dataset, indices, self.data.collate, self.data.labels_key)
        y = self.data.labels.align(x, y)
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


@dataclass(frozen=True)
class TrainingData:
    """The run's data: training and held-out datasets, their collate function, and the training-set options.

    What a label may be (`labels`) depends on the models, which the datasets do not know: the engine checks the
    models' class count and then makes the run's data with `with_labels`, complete before any loader exists.
    """

    dataset: Dataset
    eval_dataset: Dataset
    collate: Optional[Collate]
    seed: int
    subset: Optional[torch.Tensor] = None  # the indices of `dataset` trained on (TrainSetOptions.training_indices)
    noise: Optional[LabelNoise] = None
    jitter: int = 0
    labels: Optional[Labels] = None  # None until `with_labels`: the loaders need it
    options: LoaderOptions = dataclasses.field(default_factory=lambda: LoaderOptions())
    labels_key: str = "labels"  # the labels' key in dict batches (data.labels_key)

    @classmethod
    def create(
        cls, dataset: Dataset, eval_dataset: Optional[Dataset], collate: Optional[Collate], seed: int,
        train_set: TrainSetOptions = TrainSetOptions(), options: Optional[LoaderOptions] = None,
        labels_key: str = "labels",
    ) -> "TrainingData":
        """Check the datasets' sizes and one sample of each; raise DataFormatError with one line on a problem.

        `eval_dataset` None: evaluate on the validation examples of the training set (data.eval_split=validation).
        """
        if eval_dataset is None:
            if not train_set.validation_examples:
                raise DataFormatError("data.eval_split=validation needs data.validation_examples > 0")
            eval_dataset = IndexedDataset(dataset, validation_indices(len(dataset), train_set.validation_examples))
        for name, ds in (("data.train", dataset), ("data.eval", eval_dataset)):
            if not hasattr(ds, "__len__") or not hasattr(ds, "__getitem__"):
                raise DataFormatError(f"{name} is a {type(ds).__name__}, not a map-style dataset (__len__ and __getitem__)")
            if len(ds) == 0:
                raise DataFormatError(f"{name} is empty")
            with seeded(derive_seed(seed, "check")):  # a dataset's augmentation must not draw from our generators
                fetch(ds, [0], collate, labels_key)  # (input, target) pairs or dicts, with integer targets
        subset = train_set.training_indices(dataset, collate, seed)
        noise = LabelNoise(train_set.label_noise, len(dataset), seed) if train_set.label_noise > 0 else None
        return cls(dataset, eval_dataset, collate, seed, subset, noise, train_set.jitter,
                   options=options or LoaderOptions(), labels_key=labels_key)

    def with_labels(self, labels: Labels) -> "TrainingData":
        """This data with the models' label range: what the loaders check every batch against."""
        return dataclasses.replace(self, labels=labels)

    def check_labels(self, y: torch.Tensor) -> None:
        """Check labels `y` of the training set, and every training label when the dataset holds them up front
        (in-memory datasets' `targets`); a DataFormatError names the first bad one."""
        assert self.labels is not None, "with_labels first"
        self.labels.check(y, "data.train")
        targets = getattr(self.dataset, "targets", None)
        if isinstance(targets, torch.Tensor):
            self.labels.check(targets if self.subset is None else targets[self.subset], "data.train")

    @property
    def num_examples(self) -> int:
        """Training examples the streams draw from (after data.train_examples)."""
        return len(self.subset) if self.subset is not None else len(self.dataset)

    def check_held_out(self, examples: int, replicas: int) -> None:
        """The held-out labels to be scored, checked on every rank before training (as the training labels are):
        a bad one met mid-run would stop only the replica whose shard holds it. Read through `targets` when the
        dataset has them, else sample by sample, once. Raise DataFormatError with one line."""
        if examples < replicas:
            raise DataFormatError(f"the held-out set scores {examples} example(s), fewer than the {replicas} replicas "
                                  "that split it: raise data.eval_examples (0 = the whole held-out set)")
        targets = getattr(self.eval_dataset, "targets", None)
        if targets is not None:
            y = torch.as_tensor(targets)[:examples]
        else:
            with seeded(derive_seed(self.seed, "check")):
                y = torch.cat([fetch(self.eval_dataset, range(i, min(i + 4096, examples)), self.collate)[1]
                               for i in range(0, examples, 4096)])
        self.labels.check(y, "data.eval")

    def probe(self) -> tuple[Any, torch.Tensor]:
        """Two training examples (a batch of the model's input type), to check a model's output against the labels."""
        with seeded(derive_seed(self.seed, "check")):
            return fetch(self.dataset, [0, 1] if len(self.dataset) > 1 else [0], self.collate, self.labels_key)

    def train_loader(self, stream: GroupStream, group: int, replica: int, start: int, stop: int) -> DataLoader:
        if self.labels is None:
            raise ValueError("TrainingData.with_labels first: the loaders check every label against the models' classes")
        return DataLoader(
            TrainBatches(self, group, replica), batch_sampler=StepSampler(stream, replica, start, stop),
            **self.options.kwargs(persistent=False),
        )

    def eval_loader(self, indices: Sequence[int], batch_size: int) -> DataLoader:
        """Batches of the held-out `indices`, in order; reusable (its workers persist between evaluations)."""
        if self.labels is None:
            raise ValueError("TrainingData.with_labels first: the loaders check every label against the models' classes")
        chunks = [list(indices[i : i + batch_size]) for i in range(0, len(indices), batch_size)]
        return DataLoader(EvalBatches(self), batch_sampler=chunks, **self.options.kwargs(persistent=True))


class GroupBatches:
    """One group's training batches in this process: a DataLoader per local replica, started at the first step
    asked for (a resume's step) and read one step after another up to `stop` (trainer.max_steps)."""

    def __init__(self, data: TrainingData, stream: GroupStream, group: int, stop: int, device: torch.device) -> None:
        self.data, self.stream, self.group, self.stop, self.device = data, stream, group, stop, device
        self._loaders: dict[int, Iterator[tuple[int, Any, torch.Tensor]]] = {}  # replica -> its loader

    def get(self, step: int, replica: int) -> tuple[Any, torch.Tensor]:
        """`replica`'s batch of `step`, on the device. Steps must be consecutive: the loader prefetches them in order."""
        if replica not in self._loaders:
            self._loaders[replica] = iter(self.data.train_loader(self.stream, self.group, replica, step, self.stop))
        got, x, y = next(self._loaders[replica])
        if got != step:
            raise RuntimeError(f"group {self.group} replica {replica}: asked for step {step}'s batch, the loader is at {got}")
        return to_device(x, self.device), y.to(self.device, non_blocking=True)

    def close(self) -> None:
        """Stop the loaders' worker processes."""
        self._loaders.clear()
