"""Typed configuration: every option, its type and its default.

The dataclasses are registered in Hydra's ConfigStore as the schema of `conf/config.yaml`, so a misspelt key or a
value of the wrong type fails when the config is composed. conf/config.yaml sets no value of its own beyond these
defaults; the option groups it composes (model/, data/, distill/, optim/, topology/, logger/, experiment/) set their
own values on top, each documented in its file. `validate` then checks the values that types cannot
express (ranges, names, divisibility) and raises `ConfigError` with one line that says what to change.
"""

from __future__ import annotations

import importlib.util
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from hydra.core.config_store import ConfigStore

from codistill.errors import ConfigError  # noqa: F401  (re-exported: `from codistill.config import ConfigError`)


@dataclass
class DataConfig:
    """The data: two map-style datasets of (input, target) samples, built by import path like any component."""

    # {_target_: import path of a callable returning a torch Dataset, **its arguments}; see conf/data/*.yaml
    train: Any = None
    eval: Any = None  # the held-out set
    collate_fn: Any = None  # optional {_target_: ...}: a callable turning a list of samples into (inputs, targets)
    # The data's shape for the built-in model presets, which interpolate ${data.input_shape} and ${data.num_classes}.
    # The engine itself takes the class count from the model's output and checks every label against it.
    input_shape: Optional[list[int]] = None  # one example's shape as the model sees it (e.g. [1, 28, 28])
    num_classes: Optional[int] = None  # classes (a language model's vocabulary size)
    partition: str = "shared"  # shared: every group sees all data in its own order; disjoint: 1/G shard per group
    train_examples: int = 0  # > 0: a seeded subset of the training set of this many examples, the same for every group
    label_noise: float = 0.0  # p: seeded symmetric noise on training labels (same for every group), in [0, 1)
    # classes left out of the training set (by true label; the held-out set keeps them), e.g. [3]: a transfer set
    # without 3s (Hinton et al. 2015, section 3)
    exclude_classes: list[int] = field(default_factory=list)
    # > 0: this many training examples (a fixed draw, the same for every seed) kept out of training, to tune on;
    # read through data.train as it is (a dataset that augments in __getitem__ augments them too)
    validation_examples: int = 0
    eval_split: str = "test"  # test: evaluate on data.eval | validation: on the validation examples (for tuning)
    jitter: int = 0  # training images shifted by up to N pixels in each direction, drawn per batch (0 = none)
    num_workers: int = 0  # DataLoader worker processes per replica (0 = fetch in the training process)
    pin_memory: bool = False  # page-locked batches for faster host-to-GPU copies (CUDA)
    prefetch_factor: int = 2  # batches each worker loads ahead (num_workers > 0)
    eval_batch_size: int = 1000  # batch size of held-out evaluation
    eval_examples: int = 0  # 0 = the whole held-out set
    labels_key: str = "labels"  # dict batches (Hugging Face rows, collators): the labels' key; the rest are inputs
    # Score position t against labels[t + 1] (labels = input_ids, Hugging Face's causal-LM convention, the last
    # position unscored); None = for dict batches fed to a `*ForCausalLM` model, with labels that contradict that
    # choice refused (copies of the inputs, or already shifted). Needs loss.ignore_index.
    shift_labels: Optional[bool] = None


@dataclass
class LossConfig:
    ignore_index: Optional[int] = None  # a label value (padding) ignored by the label loss, the distillation term and metrics
    # Tokens per chunk of the loss (label CE + distillation term, in float32 one chunk at a time, same loss and
    # gradients): null = 1024 when the output has >= 8192 classes, else unchunked; 0 = unchunked
    chunk_tokens: Optional[int] = None
    # The output layer fused into the chunked loss (forwards stop at the hidden states; full logits never exist):
    # null = not fused; auto = a Hugging Face model's get_output_embeddings(); else a module path (e.g. lm_head).
    # Must be a plain nn.Linear whose output is the model's output; otherwise a logged line and no fusion.
    output_layer: Optional[str] = None


@dataclass
class OuterOptimConfig:
    """The outer optimizer of distill.mode=diloco: SGD on the outer parameters, the pseudo-gradient as gradient."""

    lr: float = 0.7  # outer learning rate (DiLoCo: 0.7); lr 1 without momentum is distill.mode=average
    momentum: float = 0.9  # outer momentum, in [0, 1) (DiLoCo: 0.9)
    nesterov: bool = True  # Nesterov momentum (needs momentum > 0)


@dataclass
class DistillConfig:
    """Which distillation the engine runs. `mode` picks the recipe; the rest are its knobs."""

    # none | codistill | dml | kd | average (post-local SGD baseline: no distillation) | diloco (DiLoCo baseline: an
    # outer optimizer steps on the groups' mean parameter change)
    mode: str = "codistill"
    # label loss only for the first steps (Alg. 1, first loop); None = 10% of trainer.max_steps, so a short run
    # distills too. An explicit value must be < trainer.max_steps.
    burn_in_steps: Optional[int] = None
    exchange_every: int = 50  # K: refresh teacher copies every K steps
    # collective: replica r fetches the r-th 1/R shard of each peer's state across groups, then the group
    # all-gathers the shards (cross-group bytes / R)
    shard_exchange: bool = False
    # float32 | bfloat16: the dtype teacher copies are stored, exchanged and run in (bf16: half the memory and bytes)
    teacher_dtype: str = "float32"
    alpha: float = 1.0  # weight of the distillation term
    temperature: float = 1.0  # T; the KL term is multiplied by T^2 so its gradient scale does not depend on T
    aggregate: str = "mean_probs"  # mean_probs (Anil et al.) | mean_kl (DML)
    psi: str = "kl"  # kl | logit_mse
    exchange: str = "collective"  # collective (in-job all-gather) | filesystem (shared directory, see below)
    # filesystem: where groups publish snapshots; None = <run dir>/exchange. Groups run as separate jobs
    # (topology.group_id) must all name one shared directory here.
    exchange_dir: Optional[str] = None
    exchange_keep: int = 3  # filesystem: snapshots each group keeps on disk (older ones are pruned)
    # none | bf16 | int8 | fp8: how snapshots (and diloco's pseudo-gradients) travel; int8 and fp8 (e4m3) carry one
    # float32 scale per row (output channel), ~1/4 of float32's bytes; receivers dequantise into teacher_dtype
    snapshot_codec: str = "none"
    # tau: an exchange launched before step s is loaded before step s + tau (the transfer overlaps tau steps of
    # training); 0 = loaded at once. Must be < exchange_every. diloco/average: Streaming DiLoCo's overlapped
    # outer step (docs/modes.md)
    exchange_delay: int = 0
    # F: the state travels in F slices cut between modules (balanced by bytes); slice i before the steps s with
    # s mod K = i K / F, so peak bytes per exchange fall by F. F must divide exchange_every. diloco/average: one
    # outer step per fragment (Streaming DiLoCo)
    fragments: int = 1
    # kd: a frozen teacher loaded once from a final.pt this trainer wrote (model + config), or from any state_dict
    # of the conf/model preset named by teacher_model (which, when set, also overrides the checkpoint's config)
    teacher_checkpoint: Optional[str] = None
    teacher_model: Optional[str] = None
    # diloco: SGD of the outer parameters every exchange_every steps (average: fixed to lr 1, momentum 0)
    outer_optim: OuterOptimConfig = field(default_factory=OuterOptimConfig)
    # diloco, average: float32 | bfloat16, the dtype the pseudo-gradients travel in (bf16: half the bytes)
    outer_dtype: str = "float32"


@dataclass
class TopologyConfig:
    mode: str = "auto"  # auto (torchrun when launched by torchrun) | simulated (one process) | torchrun
    groups: int = 2  # G: number of models trained
    replicas: Optional[int] = None  # R: data-parallel ranks per group; None = 1 simulated, WORLD_SIZE / G torchrun
    device: str = "auto"  # auto | cpu | cuda
    timeout_s: float = 60.0  # process-group timeout: a dead rank ends the job within this bound
    # the slowest rate (MB/s) assumed for rank-local reading, writing and hashing (checkpoints, snapshots) that other
    # ranks wait for before a collective: such work on B bytes may take timeout_s + B / this before the job gives up
    io_bandwidth_mb_s: float = 50.0
    vectorize: bool = False  # simulated mode: step same-architecture groups as one stacked model (torch.func)
    # Run only group g in this job (world = R), as one of G separate jobs sharing distill.exchange_dir;
    # None = this job runs all G groups. Needs distill.exchange=filesystem.
    group_id: Optional[int] = None
    # ddp: every replica holds the whole model (DistributedDataParallel) | fsdp: each replica holds 1/R of the
    # student, of its optimizer state and of every teacher copy (FSDP2 fully_shard over the group's replicas)
    strategy: str = "ddp"
    # fsdp: import paths of the module classes sharded one by one (each instance all-gathered just in time);
    # None = the classes that repeat inside an nn.ModuleList / nn.Sequential (transformer blocks, layers)
    fsdp_blocks: Optional[list[str]] = None
    # fsdp: free a block's gathered parameters after its forward (less memory) and gather them again for backward
    reshard_after_forward: bool = True


@dataclass
class OptimConfig:
    name: str = "sgd"  # sgd | adam | adamw
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 0.0  # L2 penalty (Sodhani et al. 2020: codistillation wants less of it)
    nesterov: bool = False
    warmup_steps: int = 0  # linear learning-rate warm-up steps
    grad_clip: Optional[float] = None  # max global norm of each group's averaged gradient; its pre-clip norm is logged
    schedule: str = "constant"  # constant | cosine


@dataclass
class TrainerConfig:
    max_steps: int = 2000  # optimizer steps of every group
    batch_size: int = 128  # global batch of ONE group; each replica gets batch_size / R
    eval_every: int = 500  # 0 = only at the end
    log_every: int = 100  # steps between records in metrics.jsonl (and console lines)
    deterministic: bool = True  # torch.use_deterministic_algorithms; needed for bit-exact resume
    checkpoint_every: int = 0  # full training checkpoint every N steps (and always at the end); 0 = end only
    checkpoint_keep: int = 2  # newest checkpoints kept in <run dir>/checkpoints (older ones are pruned)
    resume: str = "auto"  # auto: newest complete checkpoint of the run dir, if any | never | <checkpoint path>
    # keys a resume may change although they fix the trajectory (seed, trainer.batch_size, distill.burn_in_steps, ...;
    # codistill/io/trajectory.py): a resume that changes any other is refused with one line
    resume_allow_changes: list[str] = field(default_factory=list)
    # fp32 (exact reference) | bf16 (autocast; this CPU's AMX, GPUs' tensor cores) | fp16 (autocast + GradScaler, CUDA)
    precision: str = "fp32"
    # Micro-batches per replica per optimizer step: each replica's share of trainer.batch_size is split in N (DDP
    # syncs on the last only), so the step's gradient is the same, with 1/N of the activation memory.
    grad_accum: int = 1
    compile: bool = False  # torch.compile the students and the teacher copies' forwards
    # Signals that stop the run after the current step with a full checkpoint and exit code 3 (preemption); [] = none
    preempt_signals: list[str] = field(default_factory=lambda: ["SIGTERM", "SIGUSR1"])
    # Steps between the ranks' checks for a preemption signal (a one-element all-reduce; free at log steps, where
    # it rides on the report's). A signal stops the run within this many steps.
    stop_check_every: int = 10


@dataclass
class LoggerConfig:
    name: str = "none"  # none | wandb
    project: str = "codistill"  # wandb project
    entity: Optional[str] = None  # wandb entity (user or team); None = wandb's default
    mode: Optional[str] = None  # online | offline | disabled; None = WANDB_MODE or wandb's default
    tags: list[str] = field(default_factory=list)  # wandb tags of every group's run
    job_type: str = "train"  # wandb job_type of each group's run
    group: Optional[str] = None  # wandb group joining the groups' runs; None = the run id (its directory's name)
    plots: bool = True  # write PNG plots from metrics.jsonl at the end of a run (global rank 0)


@dataclass
class Config:
    # {_target_: import path of a callable returning an nn.Module, **its arguments}; see conf/model/*.yaml
    model: Any = None
    # Heterogeneous cohorts: group g trains model_per_group[g], a conf/model preset name or a model mapping with
    # _target_; empty = every group trains `model`. See codistill/components/cohort.py.
    model_per_group: list[Any] = field(default_factory=list)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    topology: TopologyConfig = field(default_factory=TopologyConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    seed: int = 0  # seeds each group's init and data order and each replica's dropout
    run_name: str = "codistill"  # names the run directory (outputs/<run_name>/<run id>) and the wandb runs


MODES = ("none", "codistill", "dml", "kd", "average", "diloco")
SNAPSHOT_CODECS = ("none", "bf16", "int8", "fp8")  # codistill/distributed/exchange/codecs.py
OUTER_MODES = ("average", "diloco")  # the groups' states are replaced by an outer step (codistill/engine/outer.py)
AGGREGATES = ("mean_probs", "mean_kl")
PSIS = ("kl", "logit_mse")
EXCHANGES = ("collective", "filesystem")
PARTITIONS = ("shared", "disjoint")
OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "cosine")
TOPOLOGY_MODES = ("auto", "simulated", "torchrun")
STRATEGIES = ("ddp", "fsdp")


def register_configs() -> None:
    """Make the dataclasses the schema that every YAML file in conf/ is checked against."""
    ConfigStore.instance().store(name="base_config", node=Config)


def installed(module: str) -> bool:
    """Whether `module` (an optional extra) can be imported, without importing it."""
    if module in sys.modules:
        return True
    try:
        return importlib.util.find_spec(module) is not None
    except (ModuleNotFoundError, ValueError):  # a parent package is missing
        return False


def _choice(value: str, allowed: tuple[str, ...], key: str) -> None:
    if value not in allowed:
        raise ConfigError(f"{key}={value!r} is not one of {', '.join(allowed)}")


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _validate_exchange(dist: Any) -> None:
    """The snapshot codec, delay and fragments (codistill/distributed/exchange/); the exchange URL is checked when the
    run claims it (filesystem.prepare, before any process group)."""
    _choice(dist.snapshot_codec, SNAPSHOT_CODECS, "distill.snapshot_codec")
    _check(0 <= dist.exchange_delay < dist.exchange_every,
           f"distill.exchange_delay={dist.exchange_delay} must be in [0, distill.exchange_every={dist.exchange_every}): "
           "an exchange must land before the next one is launched")
    _check(dist.fragments >= 1 and dist.exchange_every % dist.fragments == 0,
           f"distill.fragments={dist.fragments} must be >= 1 and divide distill.exchange_every={dist.exchange_every}")
    _check(dist.fragments == 1 or dist.exchange == "collective",
           f"distill.fragments={dist.fragments} needs distill.exchange=collective (the filesystem exchange moves "
           "whole snapshots)")


def parse_signals(names: Sequence[str]) -> list[signal.Signals]:
    """trainer.preempt_signals as signals; a name that is not a catchable signal is a one-line ConfigError."""
    out = []
    for name in names:
        sig = getattr(signal.Signals, str(name).upper(), None)
        if sig is None or sig in (signal.SIGKILL, signal.SIGSTOP):
            raise ConfigError(f"trainer.preempt_signals: {name!r} is not a signal a process can catch "
                              "(use names such as SIGTERM, SIGUSR1)")
        out.append(sig)
    return out


def validate(cfg: Any, replicas: int) -> None:
    """Check every value a type cannot; raise ConfigError naming the key and the fix.

    `replicas` is R as the topology resolved it (from topology.replicas or WORLD_SIZE / G).
    """
    d, dist, top, opt, tr = cfg.data, cfg.distill, cfg.topology, cfg.optim, cfg.trainer
    _choice(d.partition, PARTITIONS, "data.partition")
    _choice(dist.mode, MODES, "distill.mode")
    _choice(dist.aggregate, AGGREGATES, "distill.aggregate")
    _choice(dist.psi, PSIS, "distill.psi")
    _choice(dist.exchange, EXCHANGES, "distill.exchange")
    _choice(top.mode, TOPOLOGY_MODES, "topology.mode")
    _choice(top.device, ("auto", "cpu", "cuda"), "topology.device")
    _choice(top.strategy, STRATEGIES, "topology.strategy")
    _check(
        top.strategy != "fsdp" or not dist.shard_exchange,
        "topology.strategy=fsdp already exchanges 1/R of every state per replica: drop distill.shard_exchange",
    )
    _check(
        top.strategy != "fsdp" or not cfg.trainer.compile,
        "topology.strategy=fsdp does not support trainer.compile yet: drop trainer.compile or use topology.strategy=ddp",
    )
    _choice(cfg.logger.name, ("none", "wandb"), "logger.name")
    _check(
        cfg.logger.name != "wandb" or installed("wandb"),
        "logger=wandb needs the wandb package: pip install 'codistill[wandb]' (or use logger=none)",
    )
    _check(
        cfg.logger.mode in (None, "online", "offline", "disabled"),
        f"logger.mode={cfg.logger.mode!r} is not one of online, offline, disabled",
    )
    _choice(opt.name, OPTIMIZERS, "optim.name")
    _choice(opt.schedule, SCHEDULES, "optim.schedule")
    _check(top.groups >= 1, f"topology.groups={top.groups} must be >= 1")
    _check(top.replicas is None or top.replicas >= 1, f"topology.replicas={top.replicas} must be >= 1")
    _check(top.timeout_s > 0, f"topology.timeout_s={top.timeout_s} must be > 0")
    _check(top.io_bandwidth_mb_s > 0, f"topology.io_bandwidth_mb_s={top.io_bandwidth_mb_s} must be > 0")
    _check(dist.temperature > 0, f"distill.temperature={dist.temperature} must be > 0")
    _check(dist.alpha >= 0, f"distill.alpha={dist.alpha} must be >= 0")
    _check(
        not dist.shard_exchange or dist.exchange == "collective",
        f"distill.shard_exchange=true needs distill.exchange=collective (got {dist.exchange})",
    )
    _check(dist.exchange_every >= 1, f"distill.exchange_every={dist.exchange_every} must be >= 1")
    _check(cfg.loss.chunk_tokens is None or cfg.loss.chunk_tokens >= 0,
           f"loss.chunk_tokens={cfg.loss.chunk_tokens} must be >= 0 (0 = unchunked, null = automatic)")
    _check(
        dist.burn_in_steps is None or dist.burn_in_steps >= 0,
        f"distill.burn_in_steps={dist.burn_in_steps} must be >= 0 (or null: 10% of trainer.max_steps)",
    )
    _check(dist.exchange_keep >= 1, f"distill.exchange_keep={dist.exchange_keep} must be >= 1")
    _validate_exchange(dist)
    _check(
        top.group_id is None or 0 <= top.group_id < top.groups,
        f"topology.group_id={top.group_id} must be in [0, topology.groups={top.groups})",
    )
    if dist.mode in OUTER_MODES:
        _check(
            dist.exchange == "collective",
            f"distill.mode={dist.mode} needs every group at every outer step: use distill.exchange=collective (the "
            "filesystem exchange is for groups that never wait for each other)",
        )
        _check(not cfg.model_per_group,
               f"distill.mode={dist.mode} averages the groups' states: give every group one architecture "
               "(model_per_group empty)")
        _check(dist.teacher_dtype == "float32",
               f"distill.mode={dist.mode} keeps no teacher copies: leave distill.teacher_dtype=float32 (the "
               "pseudo-gradients' dtype is distill.outer_dtype)")
    o = dist.outer_optim
    _check(o.lr > 0, f"distill.outer_optim.lr={o.lr} must be > 0")
    _check(0 <= o.momentum < 1, f"distill.outer_optim.momentum={o.momentum} must be in [0, 1)")
    _check(not o.nesterov or o.momentum > 0,
           "distill.outer_optim.nesterov=true needs distill.outer_optim.momentum > 0 (or set nesterov=false)")
    _choice(dist.outer_dtype, ("float32", "bfloat16"), "distill.outer_dtype")
    _check(
        top.group_id is None or dist.mode == "none" or dist.exchange == "filesystem",
        f"topology.group_id={top.group_id} runs one group per job, and only distill.exchange=filesystem reaches "
        "groups in other jobs: add distill.exchange=filesystem distill.exchange_dir=<shared dir>",
    )
    _check(
        top.group_id is None or dist.mode == "none" or dist.exchange_dir is not None,
        "topology.group_id is set: name the directory every group's job shares with distill.exchange_dir=<dir>",
    )
    if dist.mode == "kd":
        _check(bool(dist.teacher_checkpoint),
               "distill.mode=kd needs distill.teacher_checkpoint=<path to a final.pt or a state_dict>")
        _check(Path(dist.teacher_checkpoint).is_file(), f"distill.teacher_checkpoint={dist.teacher_checkpoint} does not exist")
    _check(tr.checkpoint_every >= 0, f"trainer.checkpoint_every={tr.checkpoint_every} must be >= 0")
    _check(tr.stop_check_every >= 1, f"trainer.stop_check_every={tr.stop_check_every} must be >= 1")
    parse_signals(tr.preempt_signals)
    _check(tr.checkpoint_keep >= 1, f"trainer.checkpoint_keep={tr.checkpoint_keep} must be >= 1")
    _check(
        dist.mode in ("none", *OUTER_MODES) or dist.burn_in_steps is None or dist.burn_in_steps < tr.max_steps
        or top.groups == 1,
        f"distill.burn_in_steps={dist.burn_in_steps} >= trainer.max_steps={tr.max_steps}: the run would never "
        "distill; lower burn_in_steps or set distill.mode=none",
    )
    _check(tr.max_steps >= 1, f"trainer.max_steps={tr.max_steps} must be >= 1")
    _check(tr.batch_size >= 1, f"trainer.batch_size={tr.batch_size} must be >= 1")
    _check(
        tr.batch_size % replicas == 0,
        f"trainer.batch_size={tr.batch_size} is not divisible by the {replicas} replicas of a group: "
        "each replica takes an equal share of the group's batch",
    )
    _choice(tr.precision, ("fp32", "bf16", "fp16"), "trainer.precision")
    _check(
        tr.precision != "fp16" or top.device == "cuda" or (top.device == "auto" and torch.cuda.is_available()),
        "trainer.precision=fp16 needs a CUDA device (its GradScaler is CUDA-only): use trainer.precision=bf16 on a CPU",
    )
    _choice(dist.teacher_dtype, ("float32", "bfloat16"), "distill.teacher_dtype")
    _check(tr.grad_accum >= 1, f"trainer.grad_accum={tr.grad_accum} must be >= 1")
    _check(
        tr.batch_size % (replicas * tr.grad_accum) == 0,
        f"trainer.batch_size={tr.batch_size} is not divisible by {replicas} replicas x trainer.grad_accum="
        f"{tr.grad_accum} micro-batches",
    )
    _check(opt.grad_clip is None or opt.grad_clip > 0, f"optim.grad_clip={opt.grad_clip} must be > 0 (or null: no clipping)")
    _check(tr.log_every >= 1, f"trainer.log_every={tr.log_every} must be >= 1")
    _check(tr.eval_every >= 0, f"trainer.eval_every={tr.eval_every} must be >= 0")
    _check(opt.lr > 0, f"optim.lr={opt.lr} must be > 0")
    _check(opt.weight_decay >= 0, f"optim.weight_decay={opt.weight_decay} must be >= 0")
    _check(d.eval_batch_size >= 1, f"data.eval_batch_size={d.eval_batch_size} must be >= 1")
    _check(d.train_examples >= 0, f"data.train_examples={d.train_examples} must be >= 0 (0 = the whole training set)")
    _check(0 <= d.label_noise < 1, f"data.label_noise={d.label_noise} must be in [0, 1)")
    _check(d.jitter >= 0, f"data.jitter={d.jitter} must be >= 0 (pixels)")
    _check(d.validation_examples >= 0, f"data.validation_examples={d.validation_examples} must be >= 0")
    _choice(d.eval_split, ("test", "validation"), "data.eval_split")
    _check(d.eval_split == "test" or d.validation_examples > 0,
           "data.eval_split=validation needs data.validation_examples > 0 (how many training examples to keep out)")
    for c in d.exclude_classes:
        _check(c >= 0 and (d.num_classes is None or c < d.num_classes),
               f"data.exclude_classes has class {c}: class ids are in [0, {d.num_classes or 'C'})")
    _check(d.num_workers >= 0, f"data.num_workers={d.num_workers} must be >= 0")
    _check(d.prefetch_factor >= 1, f"data.prefetch_factor={d.prefetch_factor} must be >= 1")
