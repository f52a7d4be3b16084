"""The training loop shared by simulated mode and torchrun: setup, train, save.

    for step in range(max_steps):
        if schedule.exchange_before(step): exchange()      # refresh every group's teacher copies
        for worker in local groups: worker.train_step(step)
        log / evaluate at their intervals
    save each group's final checkpoint

The two modes differ only inside Topology (which groups/replicas are local), GroupWorker (DDP vs 1/R-scaled
micro-batches) and the Exchange transport.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Optional

import torch
import torch.distributed as dist
from omegaconf import OmegaConf

from codistill.components.data.pipeline import Labels, to_device
from codistill.components.registry import Components
from codistill.distributed import sharding
from codistill.distributed.exchange import CollectiveExchange, Exchange, FilesystemExchange, LocalExchange, Snapshot
from codistill.distributed.exchange import filesystem
from codistill.distributed.exchange.base import StateLayout
from codistill.distributed.preemption import StopFlag
from codistill.distributed.topology import Topology
from codistill.engine import teachers, vectorized
from codistill.engine.algorithm import Schedule
from codistill.engine.kd import FixedTeacher, load_teacher
from codistill.engine.logits import as_logits
from codistill.engine.outer import OuterStep
from codistill.engine.precision import TEACHER_DTYPES, bf16_cpu_warning
from codistill.engine.teachers import TeacherPool
from codistill.engine.worker import GroupWorker, shard_teacher
from codistill.errors import ConfigError, DataFormatError, ModelOutputError, NonFiniteLossError, Preempted
from codistill.io import checkpoint, metrics
from codistill.io.loggers import open_sinks
from codistill.io.reporting import format_progress

log = logging.getLogger("codistill")


@torch.no_grad()
def probe_classes(model: torch.nn.Module, x: Any, y: torch.Tensor, device: torch.device, name: str) -> int:
    """C of `model`'s logits on inputs `x`, checked against labels `y`: logits must be [*y.shape, C]."""
    was_training = model.training
    model.eval()
    try:
        output = model(to_device(x, device))
    except Exception as e:  # a model may raise anything on inputs it cannot take
        raise ConfigError(f"{name} fails on a batch of the training set: {type(e).__name__}: "
                          f"{str(e).splitlines()[0] if str(e) else ''}") from None
    finally:
        model.train(was_training)
    try:
        logits = as_logits(output)
    except ModelOutputError as e:
        raise ConfigError(f"{name}: {e}") from None
    if logits.dim() < 1 or tuple(logits.shape[:-1]) != tuple(y.shape):
        raise ConfigError(
            f"{name} returned logits of shape {tuple(logits.shape)} for labels of shape {tuple(y.shape)}: logits must "
            f"have the labels' shape plus one dimension of classes, {tuple(y.shape)} + (C,)"
        )
    return int(logits.shape[-1])


class Trainer:
    def __init__(self, cfg: Any, topo: Topology, run_dir: Path, components: Components,
                 stop_flag: Optional[StopFlag] = None) -> None:
        self.cfg, self.topo, self.run_dir = cfg, topo, run_dir
        self.stop_flag = stop_flag or StopFlag([])
        self.preempted: Optional[Preempted] = None  # set when fit() stopped early for a signal
        run_dir.mkdir(parents=True, exist_ok=True)
        if cfg.trainer.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        self.data = components.data
        self.config_dict = OmegaConf.to_container(cfg, resolve=True)
        d = cfg.distill
        kd = d.mode == "kd"
        slow = bf16_cpu_warning(cfg.trainer.precision == "bf16" or d.teacher_dtype == "bfloat16", topo.device)
        if slow and topo.is_main:
            log.warning(slow)
        self.schedule = Schedule.from_config(d, topo.groups, cfg.trainer.max_steps)
        self.config_dict["distill"]["burn_in_steps"] = self.schedule.burn_in_steps  # saved resolved (a resume keeps it)

        def build(group: int) -> torch.nn.Module:
            return components.models[group]()

        self.sharded = sharding.enabled(cfg, topo)
        if self.sharded:  # replica r exchanges shard r of every group's state (codistill/distributed/sharding.py)
            with torch.device("meta"):
                state_sizes = [sharding.local_state_size(build(g), topo.replicas, topo.layout.replica)
                               for g in range(topo.groups)]
        else:
            state_sizes = teachers.state_sizes(build, topo.groups)
        teacher = load_teacher(cfg, topo.device) if kd else None  # loaded once, never exchanged
        pool = TeacherPool(build, topo.device, TEACHER_DTYPES[d.teacher_dtype], cfg.trainer.compile,
                           shard=(lambda m, g: shard_teacher(m, cfg, topo, g)) if self.sharded else None)
        self.workers = {
            g: GroupWorker(g, cfg, topo, self.data, build, self.schedule, pool, teachers=teacher)
            for g in topo.local_groups
        }
        self.num_classes = self._check_models(teacher)
        log.info("teacher copies in this process: %d", len(pool.models))
        for g, model in pool.models.items():
            here, total = sharding.numel(model)
            log.info("teacher copy of group %d: %d of its %d parameter values on this rank", g, here, total)
        for w in self.workers.values():
            w.rng.activate()
        self.vectorized = vectorized.build(cfg, topo, self.workers)  # None: the groups step one by one
        # average, diloco: the outer parameters and their optimizer (codistill/engine/outer.py)
        first = next(iter(self.workers.values()))
        self.outer = OuterStep(d, first.model, first.flattener, topo.device) if self.schedule.averaging else None
        self.start_step, self.last_checkpoint = 0, checkpoint.find_resume(cfg.trainer.resume, run_dir)
        # every rank resumes from the same checkpoint (ranks with different views of the disk would diverge)
        topo.check_agree(str(self.last_checkpoint), "checkpoint to resume from")
        if self.last_checkpoint is not None:
            self.start_step = checkpoint.restore_training(self.last_checkpoint, self.workers, topo, self.outer)
            log.info("resumed from checkpoint %s at step %d", self.last_checkpoint, self.start_step)
        shard_pg = topo.replica_pg if d.shard_exchange else None  # exchange 1/R per replica across groups
        self.exchange: Exchange
        if d.exchange == "filesystem":
            root, run_id = filesystem.prepare(cfg, run_dir)
            self.exchange = FilesystemExchange.for_run(root, run_id, d.exchange_keep, topo,
                                                       self._state_layout(state_sizes), self.start_step)
        else:
            self.exchange = LocalExchange() if topo.simulated else CollectiveExchange(topo.group_pg, state_sizes, shard_pg)
        self.metrics = open_sinks(cfg, topo, run_dir, self.config_dict)  # metrics.jsonl, progress bar, wandb
        self._train_sums = torch.zeros(topo.groups, 4, device=topo.device)
        self._window = 0
        self._clock = (time.perf_counter(), self.start_step)
        self.final_eval: Optional[tuple[list[dict], dict]] = None
        self._eval_batches: Optional[torch.utils.data.DataLoader] = None

    def _state_layout(self, sizes: list[int]) -> StateLayout:
        """What the transport needs of the local groups' states and their teacher copies (not the workers)."""
        entries = {}
        for g, w in self.workers.items():
            entries[g] = w.flattener.entries
            entries.update(w.teachers.layouts())
        first = next(iter(self.workers.values()))
        return StateLayout(entries, tuple(sizes), first.flattener.dtype, self.sharded)

    def _check_models(self, teacher: Optional[FixedTeacher]) -> int:
        """Run every local student (and a KD teacher) on two training examples: each must return logits
        [*label shape, C] with one C for all (the ranks agree on it, so every group is checked on some rank; teacher
        copies are built like the students). Sets the labels' valid range."""
        x, y = self.data.probe()
        models = {f"group {g}'s model": w.model for g, w in self.workers.items()}
        if teacher is not None:
            models["the distill.teacher_checkpoint model"] = teacher.model
        classes = {}
        for name, model in models.items():
            classes[name] = probe_classes(model, x, y, self.topo.device, name)
        if len(set(classes.values())) > 1:
            raise ConfigError(f"the models predict different numbers of classes ({classes}): every group of a cohort "
                              "must predict the same classes")
        num_classes = next(iter(classes.values()))
        self.topo.check_agree(str(num_classes), "number of classes the models predict")
        self.data.labels = Labels(num_classes, self.cfg.loss.ignore_index)
        targets = getattr(self.data.dataset, "targets", None)
        try:
            self.data.labels.check(y, "data.train")
            if isinstance(targets, torch.Tensor):  # labels known up front (in-memory datasets): check them all now
                self.data.labels.check(targets if self.data.subset is None else targets[self.data.subset], "data.train")
            self.data.check_held_out(self._eval_examples(), self.topo.replicas)
        except DataFormatError as e:
            raise ConfigError(str(e)) from None
        return num_classes

    # --- train ------------------------------------------------------------------------------------------------
    def fit(self) -> None:
        tr = self.cfg.trainer
        log.info(
            "codistill: %d groups x %d replicas (%s, %s), %d steps, distill.mode=%s (burn-in %d steps), run dir %s",
            self.topo.groups, self.topo.replicas, self.topo.layout.mode, self.topo.device, tr.max_steps,
            self.cfg.distill.mode, self.schedule.burn_in_steps, self.run_dir,
        )
        for step in range(self.start_step, tr.max_steps):
            if self.schedule.exchange_before(step):
                self._exchange(step)
            if self.vectorized is not None:
                self._train_sums += self.vectorized.train_step(step)
            else:
                for g, w in self.workers.items():
                    self._train_sums[g] += w.train_step(step)
            self._window += 1
            done = step + 1
            last = done == tr.max_steps
            evaluate = last or (tr.eval_every > 0 and done % tr.eval_every == 0)
            save = last or (tr.checkpoint_every > 0 and done % tr.checkpoint_every == 0)
            stop = False
            if last or done % tr.log_every == 0 or evaluate or save:  # a report checks the loss is finite
                stop = self._report(done, evaluate)  # and the stop flags, on the same all-reduce
            elif self.topo.simulated or done % tr.stop_check_every == 0:
                stop = self._stop_agreed()
            if save or (stop and not last):
                self._checkpoint(done)
            if stop and not last:  # the filesystem exchange's pending snapshot is written by close()
                name = self.stop_flag.received.name if self.stop_flag.received else "a signal to another rank"
                self.preempted = Preempted(done, self.last_checkpoint, name)
                log.warning("preempted: %s", self.preempted)
                return
        self._save_final(tr.max_steps)

    def _loss_parts(self, window: torch.Tensor, step: int) -> str:
        """What to lower after a non-finite loss: the learning rate, and alpha when the distillation term was on."""
        if not self.schedule.distilling(step - 1):
            return ": lower optim.lr"
        return (f" (label loss {window[1].item():.4g}, distillation term {window[2].item():.4g}): lower optim.lr or "
                f"distill.alpha (at a high distill.temperature the term regresses the teacher's logits and its "
                f"curvature can outgrow the learning rate)")

    def _stop_agreed(self) -> bool:
        """Whether any rank has received a preemption signal: a one-element all-reduce (none in simulated mode)."""
        flag = torch.tensor([float(self.stop_flag.received is not None)], dtype=torch.float64)
        return bool(self.topo.all_reduce_sum(flag).item() > 0)

    def _exchange(self, step: int) -> None:
        local = {g: w.flat_state() for g, w in self.workers.items()}
        if self.outer is not None:
            local = self.outer.payload(local)  # the pseudo-gradients (before step 0: the states themselves)
        snapshots = self.exchange.exchange(step, local)
        if isinstance(self.exchange, CollectiveExchange):
            sent, received = self.exchange.traffic
            log.info("exchange at step %d: sent %d bytes to each of %d peer group(s), received %d bytes", step, sent,
                     self.topo.groups - 1, received)
        elif isinstance(self.exchange, FilesystemExchange):
            written, read = self.exchange.traffic
            log.info("exchange at step %d: wrote %d snapshot bytes to the exchange directory, read %d", step, written,
                     read)
        if self.outer is not None:
            self._outer_step(step, snapshots)
            return
        for g, w in self.workers.items():
            for peer in w.teachers.models:
                if peer in snapshots:  # else: no (newer) snapshot of that peer; its copy stays as it is
                    w.teachers.load(peer, snapshots[peer].flat, snapshots[peer].step)
        log.debug("exchange at step %d", step)

    def _outer_step(self, step: int, snapshots: dict[int, Snapshot]) -> None:
        """diloco, average: every group continues from the new outer state (its inner optimizer state stays its own,
        as in DiLoCo and PeriodicModelAverager); before step 0 from group 0's, as DDP starts from rank 0's."""
        assert self.outer is not None
        state = self.outer.update([snapshots[g].flat for g in sorted(snapshots)])
        for w in self.workers.values():
            w.flattener.load(w.model, state)
        log.debug("outer step before step %d", step)

    # --- log and evaluate ---------------------------------------------------------------------------------------
    def _report(self, step: int, evaluate: bool) -> bool:
        """Log the window's losses (and evaluate); return whether any rank has received a preemption signal."""
        G = self.topo.groups
        stats = torch.zeros(G, 7, dtype=torch.float64)  # column 6: stop flags, summed over the ranks
        stats[0, 6] = float(self.stop_flag.received is not None)
        stats[:, :4] = self._train_sums.double().cpu() / self._window
        for g, w in self.workers.items():
            if self.topo.is_group_leader(g):
                stats[g, 4] = w.staleness(step)
                stats[g, 5] = w.lr_schedule.get_last_lr()[0]
        self.topo.all_reduce_sum(stats)
        self._train_sums.zero_()
        self._window = 0
        records = [
            {
                "step": step, "group": g, "train/loss": stats[g, 0].item(), "train/ce": stats[g, 1].item(),
                "train/distill": stats[g, 2].item(), "staleness": int(stats[g, 4].item()),
                "lr": stats[g, 5].item(),
                **({"train/grad_norm": stats[g, 3].item()} if self.cfg.optim.grad_clip is not None else {}),
            }
            for g in self.topo.job_groups
        ]
        bad = [g for g in self.topo.job_groups if not torch.isfinite(stats[g, 0])]
        if bad:
            raise NonFiniteLossError(f"training loss of group(s) {bad} is not finite at step {step}"
                                     f"{self._loss_parts(stats[bad[0]], step)}; {self._kept()}")
        run_record = None
        if evaluate:
            per_group, run_record = metrics.summarise(self._eval_sums())
            for rec, ev in zip(records, per_group):
                rec.update(ev)
            run_record = {"step": step, "group": None, **run_record}
            self.final_eval = (per_group, run_record)
        for rec in records:
            self.metrics.write(rec)
        if run_record is not None:
            self.metrics.write(run_record)
        now = time.perf_counter()
        rate = (step - self._clock[1]) / max(now - self._clock[0], 1e-9)
        self._clock = (now, step)
        line = format_progress(step, self.cfg.trainer.max_steps, records, rate)
        if run_record is not None:
            line += f" | ensemble acc {run_record['ensemble/acc']:.4f}"
        log.info(line)
        return bool(stats[0, 6] > 0)

    def _eval_examples(self) -> int:
        """Held-out examples scored: data.eval_examples (0 = all), at most the held-out set."""
        size = len(self.data.eval_dataset)
        return min(self.cfg.data.eval_examples or size, size)

    def _eval_loader(self) -> torch.utils.data.DataLoader:
        """The held-out batches this process scores (under torchrun replica r scores every R-th example)."""
        if self._eval_batches is None:
            indices = list(range(self._eval_examples()))
            if not self.topo.simulated:
                indices = indices[self.topo.layout.replica :: self.topo.replicas]
            self._eval_batches = self.data.eval_loader(indices, self.cfg.data.eval_batch_size)
        return self._eval_batches

    def _eval_batches_per_replica(self) -> int:
        """Held-out batches of the replica with the most examples (replica 0's share, rounded up)."""
        n = self._eval_examples()
        return -(-(-(-n // self.topo.replicas)) // self.cfg.data.eval_batch_size)

    def _eval_sums(self) -> torch.Tensor:
        """Per-group, ensemble and churn sums on the held-out set; under torchrun replica r scores shard r."""
        for w in self.workers.values():
            w.sync_buffers()
        outputs: dict[int, list[torch.Tensor]] = {g: [] for g in self.workers}
        labels = []
        try:
            batches = 0
            for x, y in self._eval_loader():
                labels.append(y)
                batches += 1
                for g, w in self.workers.items():
                    outputs[g].append(w.predict_probs(x))
            if self.sharded:  # a sharded forward is a collective: run as many as the group's busiest replica
                for _ in range(batches, self._eval_batches_per_replica()):
                    for w in self.workers.values():
                        w.predict_probs(x)
        except DataFormatError as e:
            raise ConfigError(str(e)) from None
        local = {g: torch.cat(o) for g, o in outputs.items()}
        y = torch.cat(labels)
        ignore = self.cfg.loss.ignore_index
        if self.topo.simulated:
            probs = torch.stack([local[g] for g in self.topo.job_groups])
            return metrics.eval_sums(probs, y, ignore)
        ((g, mine),) = local.items()
        gathered = [torch.empty_like(mine, device=self.topo.device) for _ in self.topo.job_groups]
        dist.all_gather(gathered, mine.to(self.topo.device), group=self.topo.group_pg)
        sums = metrics.eval_sums(torch.stack([t.cpu() for t in gathered]), y, ignore).to(self.topo.device)
        dist.all_reduce(sums, group=self.topo.replica_pg)
        return sums.cpu()

    # --- save ---------------------------------------------------------------------------------------------------
    def _save_final(self, step: int) -> None:
        error, path = None, self.run_dir / "checkpoints"
        for g, w in self.workers.items():
            w.sync_buffers()
            state = w.full_state()  # sharded: gathered within the group (final.pt stays a whole state_dict)
            log.info("group %d replica(s) %s: parameter fingerprint %s", g, w.replicas, w.fingerprint(state))
            if self.topo.is_group_leader(g):
                path = self.run_dir / "checkpoints" / f"group{g}" / "final.pt"
                try:
                    checkpoint.atomic_save(checkpoint.model_checkpoint(state, step, g, self.config_dict), path)
                    log.info("group %d: final checkpoint %s", g, path)
                except OSError as e:
                    error = e
        checkpoint.agree_written(self.topo, path, error)

    def _checkpoint(self, step: int) -> None:
        """Save a training checkpoint, unless a group's parameters are no longer finite (keep the last good one)."""
        bad = torch.zeros(self.topo.groups, dtype=torch.float64)
        for g, w in self.workers.items():
            bad[g] = float(not all(torch.isfinite(p).all() for p in w.model.parameters()))
        self.topo.all_reduce_sum(bad)
        if bad.any():
            groups = [g for g in range(self.topo.groups) if bad[g]]
            raise NonFiniteLossError(f"parameters of group(s) {groups} are not finite at step {step}: lower optim.lr; "
                                     f"{self._kept()}")
        tr = self.cfg.trainer
        self.last_checkpoint = checkpoint.save_training(
            self.run_dir, step, self.workers, self.topo, self.config_dict, tr.checkpoint_keep, self.outer
        )
        log.info("checkpoint %s", self.last_checkpoint)

    def _kept(self) -> str:
        if self.last_checkpoint is None:
            return "no checkpoint was written before it"
        return f"the last good checkpoint is {self.last_checkpoint} (resume with trainer.resume=auto)"

    def close(self) -> None:
        if isinstance(self.exchange, FilesystemExchange):
            self.exchange.close()  # finish the pending snapshot write: peers may still read it
        self.metrics.close()
        self._eval_batches = None  # stops its persistent workers
        for w in self.workers.values():
            w.release()
