"""Build a run's parts from its config: each part from its own section, then the Trainer from the parts.

Like a torchtune recipe's setup, this is the one place (with config.validate) that reads the whole config; every
part below it receives its own section or a small frozen dataclass made from it:

    students       <- model (components), seed, topology.strategy/fsdp_*, trainer.precision
    GroupWorker    <- its student, a GroupBatches (data, trainer.batch_size, seed), a LossSpec (distill, loss), a
                      Precision (trainer.precision), an OptimizerFactory (optim, trainer.max_steps)
    ExchangeRunner <- distill (codec, delay, fragments), the workers; its transport <- distill.exchange*
    Evaluator      <- data.eval_examples / eval_batch_size, loss.ignore_index
    Checkpointer   <- trainer.checkpoint_every / checkpoint_keep / resume
    sinks          <- logger
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional

import torch
from omegaconf import OmegaConf

from codistill.components.data import GroupStream
from codistill.components.data.labels import is_causal_lm
from codistill.components.data.pipeline import GroupBatches, Labels
from codistill.components import cohort
from codistill.components.cohort import Cohort
from codistill.components.registry import Components, data_from_config
from codistill.components.rng import ReplicaRNG
from codistill.config import DataConfig
from codistill.distributed import sharding
from codistill.distributed.exchange import CollectiveExchange, Exchange, FilesystemExchange, LocalExchange
from codistill.distributed.exchange.base import StateLayout
from codistill.distributed.exchange.filesystem import claim, exchange_root
from codistill.distributed.preemption import StopFlag
from codistill.distributed.sharding import ShardingPlan
from codistill.distributed.topology import Topology
from codistill.engine import fused_head, vectorized
from codistill.engine.algorithm import LossSpec, Schedule
from codistill.engine.checkpointing import Checkpointer
from codistill.engine.evaluation import Evaluator
from codistill.engine.exchanging import ExchangeRunner, cut
from codistill.engine.kd import load_teacher
from codistill.engine.optim import OptimizerFactory
from codistill.engine.outer import OuterStep
from codistill.engine.precision import PRECISIONS, TEACHER_DTYPES, Precision, bf16_cpu_warning
from codistill.engine.students import build_student, check_classes
from codistill.engine.teachers import TeacherCopies, TeacherPool
from codistill.engine.trainer import LoopSettings, Trainer
from codistill.engine.worker import GroupWorker
from codistill.errors import ConfigError, DataFormatError
from codistill.io.loggers import open_sinks

log = logging.getLogger("codistill")


def run_identity(cfg: Any) -> str:
    """The id every job of one run agrees on: run_name plus a digest of the settings its groups must share.

    Groups launched as separate jobs have different job ids and run directories, so the id comes from the config:
    two runs that differ in name, seed, data, models or distillation cannot share an exchange directory.
    """
    c = OmegaConf.to_container(cfg, resolve=True)
    shared = {
        "seed": c["seed"],
        "groups": c["topology"]["groups"],
        "model": c["model"],
        "model_per_group": c.get("model_per_group"),
        "data": {k: c["data"][k] for k in ("train", "partition", "train_examples", "label_noise", "exclude_classes",
                                           "validation_examples", "jitter")},
        "distill": {k: v for k, v in c["distill"].items() if k not in ("exchange_dir", "exchange_keep")},
        "optim": c["optim"],
        "batch_size": c["trainer"]["batch_size"],
    }
    text = json.dumps(shared, sort_keys=True)
    return f"{cfg.run_name}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"


def cohort_of(cfg: Any) -> Cohort:
    """Which model each group trains (`model`, `model_per_group`, `topology.groups`; `data` sizes presets)."""
    return Cohort(cfg.model, tuple(cfg.get("model_per_group") or ()), cfg.topology.groups, cfg.data)


def validate_components(cfg: Any) -> None:
    """Before any process group: every model's import path resolves and accepts its arguments (a kd teacher's too)."""
    cohort.validate(cohort_of(cfg), cfg.distill.teacher_model if cfg.distill.mode == "kd" else None)


def components_from_config(cfg: Any) -> Components:
    """The run's models and data, built by import path (before any process group: every error here is one line)."""
    return Components(cohort.factories(cohort_of(cfg)), data_from_config(cfg.data, cfg.seed))


def exchange_directory(cfg: Any, run_dir: Path) -> tuple[Path, str]:
    """distill.exchange=filesystem: the run's exchange directory and the run id that owns it."""
    return exchange_root(cfg.distill.exchange_dir, run_dir), run_identity(cfg)


def sharding_plan(topology: Any, topo: Topology) -> Optional[ShardingPlan]:
    """How this process shards its groups (topology.strategy=fsdp under torchrun), or None."""
    if not sharding.enabled(topology.strategy, topo):
        return None
    return ShardingPlan(topo.mesh["replica"], sharding.block_classes(topology.fsdp_blocks),
                        topology.reshard_after_forward)


def build_exchange(cfg: Any, topo: Topology, run_dir: Path, states: StateLayout, start_step: int) -> Exchange:
    """The transport distill.exchange names: in-process, an all-gather along the mesh, or a shared directory or
    object store. `states`: the payloads it moves (codistill/engine/exchanging.py)."""
    d = cfg.distill
    if d.exchange == "filesystem":
        root, run_id = exchange_directory(cfg, run_dir)
        claim(root, run_id, cfg.topology.timeout_s)  # checked before any process group by train.py; here for runs
        return FilesystemExchange.for_run(root, run_id, d.exchange_keep, topo, states, start_step,  # built directly
                                          d.snapshot_codec)
    if topo.simulated:
        return LocalExchange()
    shard_pg = topo.replica_pg if d.shard_exchange else None  # exchange 1/R per replica across groups
    return CollectiveExchange(topo.cross_group_pg, list(states.sizes), shard_pg)


def shift_labels(data: DataConfig, x: Any, students: dict[int, torch.nn.Module]) -> bool:
    """data.shift_labels; unset: Hugging Face's causal-LM convention (labels = input_ids, scored one position later)
    applies to its `*ForCausalLM` models fed dict batches (codistill/components/data/labels.py)."""
    if data.shift_labels is not None:
        return data.shift_labels
    return isinstance(x, Mapping) and any(is_causal_lm(m) for m in students.values())


def build_trainer(cfg: Any, topo: Topology, run_dir: Path, components: Components,
                  stop_flag: Optional[StopFlag] = None) -> Trainer:
    """Every part of a run, built in an order every rank follows (some steps are collectives), then the Trainer."""
    run_dir.mkdir(parents=True, exist_ok=True)
    tr, d = cfg.trainer, cfg.distill
    if tr.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    record = OmegaConf.to_container(cfg, resolve=True)  # stored in checkpoints and wandb runs
    schedule = Schedule.from_config(d, topo.groups, tr.max_steps)
    record["distill"]["burn_in_steps"] = schedule.burn_in_steps  # recorded resolved: a resume keeps it
    slow = bf16_cpu_warning(tr.precision == "bf16" or d.teacher_dtype == "bfloat16", topo.device)
    if slow and topo.is_main:
        log.warning(slow)

    def build(group: int) -> torch.nn.Module:
        return components.models[group]()

    plan = sharding_plan(cfg.topology, topo)  # fsdp: replica r exchanges shard r of every group's state
    teacher = load_teacher(d.teacher_checkpoint, d.teacher_model, cfg.data, topo.device) if d.mode == "kd" else None
    pool = TeacherPool(build, topo.device, TEACHER_DTYPES[d.teacher_dtype], tr.compile,
                       shard=plan.teacher if plan is not None else None)
    students = {g: build_student(build, g, cfg.seed, topo.device, plan, PRECISIONS[tr.precision])
                for g in topo.local_groups}

    # The models fix what a label may be: the data is complete (labelled) before any loader exists.
    x, y = components.data.probe()
    models = {f"group {g}'s model": m for g, m in students.items()}
    if teacher is not None:
        models["the distill.teacher_checkpoint model"] = teacher.model
    num_classes = check_classes(models, x, y, topo)
    labels = Labels(num_classes, cfg.loss.ignore_index, shift_labels(cfg.data, x, students))
    data = components.data.with_labels(labels)
    try:
        if cfg.data.shift_labels is None:  # the engine chose the convention: refuse labels that contradict it
            data.labels.check_alignment(x, y, "data.train")
        data.check_labels(data.labels.align(x, y))
        size = len(data.eval_dataset)
        data.check_held_out(min(cfg.data.eval_examples or size, size), topo.replicas)
    except DataFormatError as e:
        raise ConfigError(str(e)) from None

    loss, optimizer = LossSpec.from_config(d, cfg.loss), OptimizerFactory(cfg.optim, tr.max_steps)
    workers = {}
    for g in topo.local_groups:
        # the output layer fused into the chunked loss (loss.output_layer); one line per process says if not
        head = fused_head.resolve(students[g], cfg.loss.output_layer, report=g == min(topo.local_groups))
        peers = [p for p in range(topo.groups) if p != g] if schedule.enabled else []
        stream = GroupStream(data.num_examples, g, topo.groups, topo.replicas, tr.batch_size, cfg.seed,
                             cfg.data.partition)
        copies = teacher if teacher is not None else TeacherCopies(peers, pool)
        workers[g] = GroupWorker(
            g, students[g], topo, GroupBatches(data, stream, g, tr.max_steps, topo.device), schedule,
            copies, loss, Precision(tr.precision, topo.device), optimizer,
            ReplicaRNG(cfg.seed, g, topo.local_replicas, topo.device, students[g]),
            grad_accum=tr.grad_accum, compile=tr.compile,
            state_dtype=pool.dtype if schedule.enabled else torch.float32, sharded=plan is not None, head=head,
        )
    log.info("teacher copies in this process: %d", len(pool.models))
    for g, model in pool.models.items():
        here, total = sharding.numel(model)
        log.info("teacher copy of group %d: %d of its %d parameter values on this rank", g, here, total)
    stacked = None
    if cfg.topology.vectorize:  # None: the groups step one by one
        options = vectorized.StepOptions(tr.precision, tr.compile, d.mode, d.exchange, isinstance(x, Mapping))
        stacked = vectorized.build(topo, workers, options)
    # average, diloco: the outer parameters and their optimizer (codistill/engine/outer.py)
    first = next(iter(workers.values()))
    outer = None
    if schedule.averaging:
        bounds = [(f.start, f.stop) for f in cut(first.flattener.entries, d.fragments)]
        outer = OuterStep(d, first.flattener, topo.device, bounds)
    checkpoints = Checkpointer(run_dir, topo, workers, record, tr.checkpoint_every, tr.checkpoint_keep, outer)
    start_step = checkpoints.resume(tr.resume)
    exchange = ExchangeRunner(d, topo, schedule, workers, outer, plan is not None,
                              lambda states: build_exchange(cfg, topo, run_dir, states, start_step))
    in_flight = checkpoints.extra_state("exchange")  # exchanges in flight at the checkpoint resumed from
    if in_flight is not None:
        exchange.load_state_dict(in_flight)
    sinks = open_sinks(cfg.logger, cfg.run_name, tr.max_steps, topo, run_dir, record)  # metrics.jsonl, bar, wandb
    evaluator = Evaluator(workers, data, topo, cfg.data.eval_examples, cfg.data.eval_batch_size, cfg.loss.ignore_index,
                          sharded=plan is not None, chunk_tokens=cfg.loss.chunk_tokens)
    positions = y[0].numel() if y.dim() >= 2 else 0  # labelled positions per example of a sequence model
    return Trainer(LoopSettings.from_config(tr, d, cfg.optim, positions), topo, run_dir, workers, schedule, exchange, evaluator,
                   checkpoints, sinks, data=data, num_classes=num_classes, start_step=start_step, vectorized=stacked,
                   outer=outer, stop_flag=stop_flag)
