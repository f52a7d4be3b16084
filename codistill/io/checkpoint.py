"""Checkpoint files: written atomically (temp file, fsync, rename), read with weights_only=True.

Two kinds. `final.pt` (per group, `model_checkpoint`) holds a trained model to evaluate or distill from. A training
checkpoint (`save_training` / `restore_training`) holds everything an exact resume needs, one directory per step:

    <run dir>/checkpoints/step{s:09d}/group{g}.pt       model, optimizer, LR schedule, teacher copies + their steps
                                      group{g}/          topology.strategy=fsdp: the group's shards of model,
                                                         optimizer and teacher copies (torch.distributed.checkpoint,
                                                         one per group; group{g}.pt then holds the rest)
                                      rng-rank{k}.pt     process k's torch/numpy/python generators + replica streams
                                      outer-rank{k}.pt   distill.mode=diloco/average: process k's outer parameters,
                                                         averaged buffers and outer optimizer state
                                      manifest.json      step, topology, sha256 of every file: written last, so a
                                                         directory without it is incomplete and never resumed from

The data stream is a pure function of the step (codistill/components/data/streams.py), so the step is its position.
Everything stored is tensors and plain containers, so every file loads with weights_only=True.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import random
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch.distributed.checkpoint.api import CheckpointException

from codistill.config import OUTER_MODES
from codistill.errors import ConfigError, StorageError  # noqa: F401  (StorageError re-exported)
from codistill.io import trajectory

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"


def atomic_save(obj: Any, path: Path) -> None:
    """Write `obj` so that a reader sees either the old file or the complete new one, never a torn one."""
    _atomic(path, lambda f: torch.save(obj, f))


def atomic_write(path: Path, data: bytes) -> None:
    """`atomic_save` for bytes already serialised (e.g. to checksum them first)."""
    _atomic(path, lambda f: f.write(data))


def _atomic(path: Path, write: Any) -> None:
    """Temp file in the same directory, fsync, rename; on any failure the temp file is removed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, RuntimeError) and isinstance(e.__context__, OSError):
            # torch.save's zip writer, closing after a failed write, replaces ENOSPC/EIO by "unexpected pos ..."
            raise e.__context__ from None
        raise


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    """A file's sha256, read in 1 MiB chunks: a multi-GB checkpoint is never held in memory whole."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def model_checkpoint(state: dict[str, torch.Tensor], step: int, group: int, config: dict, extra: dict | None = None
                     ) -> dict:
    """What a final checkpoint holds: enough to rebuild, evaluate or distill from the model without this run.

    `state`: the whole model's state_dict, copied to the CPU (GroupWorker.full_state: a view, e.g. a slice of
    topology.vectorize's stacked tensors, would save its whole storage; a sharded model is gathered first).
    """
    return {"model": state, "step": step, "group": group, "config": config, **(extra or {})}


# --- training checkpoints ---------------------------------------------------------------------------------------------
def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return run_dir / "checkpoints" / f"step{step:09d}"


def complete_checkpoints(root: Path) -> list[Path]:
    """Checkpoint directories under `root` that have a manifest, newest first."""
    if not root.is_dir():
        return []
    return sorted((p for p in root.glob("step*") if (p / MANIFEST).is_file()), key=lambda p: p.name, reverse=True)


def check_writable(directory: Path, what: str) -> None:
    """Create `directory` and a probe file in it, or raise a one-line ConfigError naming the option."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".probe.", dir=directory)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ConfigError(f"{what}={directory} is not writable: {e.strerror or e}") from None


def _layout_topology(layout: Any) -> dict:
    return {"groups": layout.groups, "replicas": layout.replicas, "job_groups": list(layout.job_groups)}


def find_resume(resume: str, run_dir: Path) -> Optional[Path]:
    """The checkpoint directory trainer.resume names: auto = this run's newest complete one (None if none)."""
    if resume == "never":
        return None
    if resume == "auto":
        found = complete_checkpoints(run_dir / "checkpoints")
        return found[0] if found else None
    path = Path(resume)
    if (path / MANIFEST).is_file():
        return path
    for root in (path, path / "checkpoints"):
        found = complete_checkpoints(root)
        if found:
            return found[0]
    raise ConfigError(
        f"trainer.resume={resume}: no complete checkpoint there (a checkpoints/step*/ directory with {MANIFEST}); "
        "use auto, never, or such a path"
    )


def preflight(run_dir: Path, layout: Any, resume: str, strategy: str = "ddp", mode: str = "codistill"
              ) -> Optional[Path]:
    """Before any process group: the output directory is writable and the checkpoint to resume from fits this run.

    `resume`, `strategy`, `mode`: trainer.resume, topology.strategy and distill.mode. Checks the topology it was
    written by and the checksums of the files this process will load; returns its path.
    """
    check_writable(run_dir, "output directory (hydra.run.dir)")
    path = find_resume(resume, run_dir)
    if path is None:
        return None
    try:
        manifest = json.loads((path / MANIFEST).read_text())
        wrote, files = manifest["topology"], manifest["files"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"resume checkpoint {path} is corrupt: unreadable {MANIFEST} ({e})") from None
    wrote_strategy = manifest.get("strategy", "ddp")
    if wrote_strategy != strategy:
        raise ConfigError(f"resume checkpoint {path} was written with topology.strategy={wrote_strategy}, this run uses "
                          f"{strategy}: resume with the same strategy or trainer.resume=never")
    resharding = strategy == "fsdp" and {**wrote, "replicas": layout.replicas} == _layout_topology(layout)
    if wrote != _layout_topology(layout) and not resharding:
        raise ConfigError(
            f"resume checkpoint {path} was written by {wrote['groups']} groups x {wrote['replicas']} replicas "
            f"(groups in that job: {wrote['job_groups']}); this run is {layout.groups} x {layout.replicas} "
            f"(groups in this job: {list(layout.job_groups)}): resume with the same topology or trainer.resume=never"
        )
    local_groups = layout.job_groups if layout.mode == "simulated" else [layout.group]
    same_ranks = wrote["replicas"] == layout.replicas  # else (fsdp, another R) the generators start afresh
    outer = f"outer-rank{layout.rank}.pt"
    if mode in OUTER_MODES and not same_ranks:
        raise ConfigError(f"resume checkpoint {path} holds the outer state of {wrote['replicas']} replicas per group: "
                          f"distill.mode={mode} resumes with the same topology.replicas")
    per_rank = [f"rng-rank{layout.rank}.pt", *([outer] if outer in files else [])] if same_ranks else []
    for name in [*(f"group{g}.pt" for g in local_groups), *per_rank]:
        try:
            ok = file_sha256(path / name) == files[name]
        except (OSError, KeyError) as e:
            raise ConfigError(f"resume checkpoint {path} is incomplete: {name} is missing ({e})") from None
        if not ok:
            raise ConfigError(f"resume checkpoint {path} is corrupt: {name} does not match its checksum")
    return path


def rng_state(workers: dict[int, Any]) -> dict:
    """This process's generators: the global torch/CUDA/numpy/python ones and each local replica's stream."""
    _, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": pos, "has_gauss": has_gauss, "gauss": gauss},
        "python": {"version": version, "state": torch.tensor(internal, dtype=torch.int64), "gauss": gauss_next},
        "streams": {g: {r: list(s) for r, s in w.rng.states.items()} for g, w in workers.items()},
    }


def set_rng_state(state: dict, workers: dict[int, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"]:
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"].tolist()), p["gauss"]))
    for g, w in workers.items():
        for r, s in state["streams"][g].items():
            w.rng.states[r] = tuple(s)


def agree_written(topo: Any, path: Path, error: Optional[OSError]) -> None:
    """Every rank learns whether any rank failed to write its part of `path` (an all-reduce where a barrier was):
    all ranks then stop at the same point with one line, instead of the others waiting out topology.timeout_s."""
    failed = topo.all_reduce_sum(torch.tensor([float(error is not None)], dtype=torch.float64)).item() > 0
    if error is not None:
        raise StorageError(f"could not write {path}: {error.strerror or error}")
    if failed:
        raise StorageError(f"could not write {path}: another rank failed to write its part (its log names the cause)")


def save_training(run_dir: Path, step: int, workers: dict[int, Any], topo: Any, config: dict, keep: int,
                  outer: Optional[Any] = None, extra: Optional[dict[str, dict]] = None) -> Path:
    """Write this process's part of the step's checkpoint; global rank 0 seals it with the manifest and prunes.

    Every rank must call it (buffers are synchronised inside each group and the ranks meet twice). If any write
    fails (disk full, I/O error, read-only), no manifest is written, the step's directory is removed, the previous
    checkpoints stay as they were (pruning happens only after a seal), and every rank raises StorageError.
    `extra`: more per-rank state, each saved as <name>-rank<rank>.pt (exchanges in flight).
    """
    folder = checkpoint_dir(run_dir, step)
    for g, w in workers.items():
        w.sync_buffers()
    error: Optional[OSError] = None
    # a budget for the writes (topology.io_bandwidth_mb_s): the model, up to twice its size of optimizer state and
    # the G - 1 teacher copies, per group this process writes
    nbytes = sum(w.model_bytes() for g, w in workers.items() if topo.is_group_leader(g))
    with topo.local_work(f"writing checkpoint {folder}", nbytes * (2 + topo.groups)):
        try:
            for g, w in workers.items():
                if w.sharded:
                    w.save_sharded(folder / f"group{g}")
                if topo.is_group_leader(g):
                    state = w.sharded_record() if w.sharded else w.state_dict()
                    atomic_save({**state, "step": step, "config": config}, folder / f"group{g}.pt")
            atomic_save(rng_state(workers), folder / f"rng-rank{topo.layout.rank}.pt")
            if outer is not None:
                atomic_save(outer.state_dict(), folder / f"outer-rank{topo.layout.rank}.pt")
            for name, state in (extra or {}).items():
                atomic_save(state, folder / f"{name}-rank{topo.layout.rank}.pt")
        except OSError as e:
            error = e
    try:
        agree_written(topo, folder, error)
        files = sorted(folder.glob("*.pt")) if topo.is_main else []
        with topo.local_work(f"hashing checkpoint {folder}", sum(p.stat().st_size for p in files)):
            if topo.is_main:
                try:
                    manifest = {"step": step, "topology": _layout_topology(topo.layout),
                                "files": {p.name: file_sha256(p) for p in files}, "time": time.time(),
                                "strategy": config["topology"]["strategy"], "trajectory": trajectory.record(config)}
                    atomic_write(folder / MANIFEST, json.dumps(manifest, indent=1).encode())
                except OSError as e:
                    error = e
        agree_written(topo, folder / MANIFEST, error)
    except StorageError:
        if topo.is_main:  # every rank is past its writes: nothing of this step is left to be mistaken for a checkpoint
            shutil.rmtree(folder, ignore_errors=True)
        raise
    if topo.is_main:
        for old in complete_checkpoints(folder.parent)[keep:]:
            try:
                (old / MANIFEST).unlink()  # first: an unsealed directory is never resumed from
            except OSError as e:
                log.warning("could not prune checkpoint %s: %s", old, e.strerror or e)
            shutil.rmtree(old, ignore_errors=True)
    return folder


def restore_training(path: Path, workers: dict[int, Any], topo: Any, outer: Optional[Any] = None) -> int:
    """Load this process's part of checkpoint `path` (checked by `preflight`); return the step it was taken at."""
    try:
        if outer is not None:
            name = f"outer-rank{topo.layout.rank}.pt"
            if not (path / name).is_file():
                raise ValueError(f"it has no {name} (an outer state): it was written by another distill.mode; resume "
                                 "with the mode that wrote it or trainer.resume=never")
            outer.load_state_dict(load(path / name))
        step = None
        for g, w in workers.items():
            state = load(path / f"group{g}.pt")
            if w.sharded:
                w.load_sharded(path / f"group{g}", state)
            else:
                w.load_state_dict(state)
            step = state["step"]
        if json.loads((path / MANIFEST).read_text())["topology"]["replicas"] == topo.replicas:
            set_rng_state(load(path / f"rng-rank{topo.layout.rank}.pt"), workers)
        else:
            log.info("resumed %s with %d replicas per group (written with another R): generators start afresh", path,
                     topo.replicas)
    except (RuntimeError, KeyError, ValueError, OSError, pickle.UnpicklingError, CheckpointException) as e:
        raise ConfigError(f"resume checkpoint {path} does not fit this run: {(str(e).splitlines() or [type(e).__name__])[0]}") from None
    return int(step)
