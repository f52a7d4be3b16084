"""The paper's shared-storage exchange: groups publish snapshots to a directory and read each other's newest.

Layout of the exchange directory:

    run.json                          the run that owns the directory (its run id); a second run is refused
    group{g}/step{s:09d}.pt           group g's flattened parameters + buffers after s steps
    group{g}/step{s:09d}.json         its manifest (step, run id, architecture signature, sha256, time): written
                                      last, so a snapshot without a manifest is incomplete and never read
    group{g}/step{s:09d}.shard{r}of{R}.pt / .json
                                      topology.strategy=fsdp: replica r's local shard and its own manifest; a
                                      version is complete only when all R shard manifests of this run's R exist

Replica 0 of each group publishes at the group's exchange steps through a background writer thread (temp file,
fsync, rename), so the training step never waits for the disk, and prunes all but the newest `keep` snapshots. At
exchange steps the same replica picks the newest complete snapshot of every peer, checks it (checksum, run id,
architecture) and broadcasts it inside its group, so the group's replicas load the same copy. A peer without a
snapshot is left out; a rejected snapshot is logged once and the previous teacher copy stays.

Sharded groups (topology.strategy=fsdp) never gather a whole state: every replica publishes its own shard, replica
0 picks the version and broadcasts its step within the group, replica r reads and checks shard r, and an all-reduce
within the group makes a shard that fails on any replica keep the whole group's previous copy. A version written
with another R (or whole, by DDP groups) is rejected with a logged reason.

Groups in separate jobs never wait for each other: a slow or dead peer only makes its copy staler. Groups of one
job (simulated mode, or one torchrun job running every group) already step together, so there each exchange waits
for the job's own writes and reads exactly the step's snapshots: the run is deterministic (resumable bit for bit)
and gives the same numbers as the collective exchange.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Optional

import torch
import torch.distributed as dist

from codistill.errors import ConfigError, ExchangeWriteError
from codistill.io.checkpoint import atomic_write
from codistill.distributed.exchange.base import Entries, Snapshot, StateLayout

log = logging.getLogger(__name__)

_MANIFEST = re.compile(r"step(\d{9})((?:\.shard\d+of\d+)?)\.json$")


def exchange_root(exchange_dir: Optional[str], run_dir: Path) -> Path:
    """distill.exchange_dir, or <run dir>/exchange when it is not set."""
    return Path(exchange_dir) if exchange_dir else run_dir / "exchange"


def architecture_signature(entries: Entries) -> str:
    """Names and shapes of a flattened state (StateLayout.entries): differs with architecture or class count."""
    return hashlib.sha256(repr([(n, tuple(s)) for n, s, _ in entries]).encode()).hexdigest()[:16]


def claim(root: Path, run_id: str) -> None:
    """Make `root` usable by this run, before any process group starts; raise a one-line ConfigError if not.

    The first job to arrive writes run.json (exclusive create via a hard link, so concurrent jobs cannot both win);
    later jobs of the same run find their own id there, another run's jobs are refused.
    """
    owner = root / "run.json"
    try:
        root.mkdir(parents=True, exist_ok=True)
        if not owner.exists():
            fd, tmp = tempfile.mkstemp(prefix=".run.", suffix=".tmp", dir=root)
            with os.fdopen(fd, "w") as f:
                json.dump({"run_id": run_id}, f)
            try:
                os.link(tmp, owner)
            except FileExistsError:
                pass
            finally:
                os.unlink(tmp)
        found = json.loads(owner.read_text()).get("run_id")
    except (OSError, ValueError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise ConfigError(f"distill.exchange_dir={root} is not usable: {reason}") from None
    if found != run_id:
        raise ConfigError(
            f"distill.exchange_dir={root} belongs to run {found!r}, not this run {run_id!r}: give each run its own "
            "exchange directory (every group of one run needs the same run_name and shared settings)"
        )


class _Writer:
    """A daemon thread that writes the newest pending snapshot of each local group; the step never waits on it."""

    def __init__(self, root: Path, run_id: str, keep: int, tag: str = "") -> None:
        """`tag`: this rank's layout suffix, "" for whole snapshots or ".shard{r}of{R}" (see `layout_tag`)."""
        self.root, self.run_id, self.keep, self.tag = root, run_id, keep, tag
        self.pending: dict[int, tuple[int, torch.Tensor, str]] = {}
        self.busy = False
        self.error: Optional[BaseException] = None
        self.cv = threading.Condition()
        self.closed = False
        self.thread = threading.Thread(target=self._loop, name="codistill-exchange-writer", daemon=True)
        self.thread.start()

    def submit(self, group: int, step: int, flat: torch.Tensor, signature: str) -> None:
        """Queue a snapshot; an older one still pending for the group is replaced (a slow disk only adds staleness)."""
        self.raise_error()
        with self.cv:
            self.pending[group] = (step, flat, signature)
            self.cv.notify_all()

    def flush(self, timeout_s: float) -> None:
        """Wait until every queued snapshot is written, at most `timeout_s` (a budget for its bytes)."""
        with self.cv:
            done = self.cv.wait_for(lambda: (not self.pending and not self.busy) or self.error is not None, timeout_s)
        self.raise_error()
        if not done:
            raise ExchangeWriteError(f"a snapshot was not written to distill.exchange_dir={self.root} within "
                                     f"{timeout_s:.0f} s: the disk is stuck or slower than topology.io_bandwidth_mb_s")

    def close(self, timeout_s: float) -> None:
        """Finish the pending writes, at most `timeout_s`; a write still running then is abandoned with an error."""
        with self.cv:
            self.closed = True
            self.cv.notify_all()
        self.thread.join(timeout_s)
        self.raise_error()
        if self.thread.is_alive():
            raise ExchangeWriteError(f"the last snapshot was not written to distill.exchange_dir={self.root} within "
                                     f"{timeout_s:.0f} s; peers keep its previous version")

    def raise_error(self) -> None:
        if self.error is not None:
            e = self.error
            reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            raise ExchangeWriteError(f"could not publish a snapshot to distill.exchange_dir={self.root}: {reason}")

    def _loop(self) -> None:
        while True:
            with self.cv:
                self.cv.wait_for(lambda: self.pending or self.closed)
                if not self.pending:
                    return
                group, (step, flat, signature) = self.pending.popitem()
                self.busy = True
            try:
                self._write(group, step, flat, signature)
            except BaseException as e:  # reported on the training thread at its next publish or exchange
                with self.cv:
                    self.error = e
            finally:
                with self.cv:
                    self.busy = False
                    self.cv.notify_all()
            if self.error is not None:
                return

    def _write(self, group: int, step: int, flat: torch.Tensor, signature: str) -> None:
        folder = self.root / f"group{group}"
        folder.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        torch.save({"group": group, "step": step, "flat": flat}, buf)
        data = buf.getvalue()
        name = f"step{step:09d}{self.tag}"
        atomic_write(folder / f"{name}.pt", data)
        manifest = {
            "group": group, "step": step, "run_id": self.run_id, "signature": signature,
            "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data), "time": time.time(),
        }
        atomic_write(folder / f"{name}.json", json.dumps(manifest).encode())
        for old in own_steps(folder, self.tag)[self.keep :]:
            remove_snapshot(folder, old, self.tag)


def layout_tag(shard: int, shards: Optional[int]) -> str:
    """The file-name suffix of a layout: "" for a whole snapshot (shards None), ".shard{r}of{R}" for shard r of R."""
    return "" if shards is None else f".shard{shard}of{shards}"


def versions(folder: Path) -> dict[int, set[str]]:
    """Every step with a manifest, and the layout tags its manifests have (one per written file)."""
    found: dict[int, set[str]] = {}
    if folder.is_dir():
        for p in folder.iterdir():
            if m := _MANIFEST.match(p.name):
                found.setdefault(int(m.group(1)), set()).add(m.group(2))
    return found


def complete_tags(shards: Optional[int]) -> set[str]:
    return {layout_tag(r, shards) for r in range(shards or 1)}


def own_steps(folder: Path, tag: str) -> list[int]:
    """Steps with a manifest of one layout tag (what one writer published), newest first."""
    return sorted((s for s, tags in versions(folder).items() if tag in tags), reverse=True)


def remove_snapshot(folder: Path, step: int, tag: str = "") -> None:
    """Manifest first, so a reader never finds a manifest whose data file is gone on purpose."""
    (folder / f"step{step:09d}{tag}.json").unlink(missing_ok=True)
    (folder / f"step{step:09d}{tag}.pt").unlink(missing_ok=True)


def describe(tags: set[str]) -> str:
    """A layout for a log line: "whole" or "R=3 shards" (several, if the directory mixes them)."""
    kinds = sorted({"whole" if not t else f"R={t.rsplit('of', 1)[1]} shards" for t in tags})
    return " and ".join(kinds)


class FilesystemExchange:
    def __init__(
        self,
        root: Path,
        run_id: str,
        topo: Any,
        signatures: dict[int, str],
        sizes: dict[int, int],
        keep: int,
        start_step: int,
        dtype: torch.dtype = torch.float32,
        sharded: bool = False,
    ) -> None:
        """`signatures[g]` / `sizes[g]`: architecture and flat length of every group this process publishes or reads
        (with `sharded`, of this replica's local shard: topology.strategy=fsdp).

        `start_step` is where this job starts (0, or the step it resumed from): the local groups' snapshots of later
        steps, left by an earlier incarnation, are removed so no peer reads a state this run will not reach again.
        """
        self.root, self.run_id, self.topo = root, run_id, topo
        self.signatures, self.sizes, self.dtype = signatures, sizes, dtype  # dtype: distill.teacher_dtype
        self.shards = topo.replicas if sharded else None  # None: whole snapshots, written by replica 0
        self.tag = layout_tag(topo.layout.replica, self.shards)
        self.same_job = len(topo.job_groups) == topo.groups  # every group steps in this job: read exact steps
        self.leads = [g for g in topo.local_groups if topo.is_group_leader(g)]
        self.writes = list(topo.local_groups) if sharded else self.leads  # sharded: every replica writes its shard
        local = set(topo.local_groups)
        self.wanted = [p for p in range(topo.groups) if not (len(local) == 1 and p in local)]
        self.rejected: set[tuple[int, int]] = set()
        self.loaded: dict[int, int] = {}  # peer -> step of the snapshot last handed out
        self.missing_logged: set[int] = set()
        self.traffic = (0, 0)  # snapshot bytes this rank wrote and read at the last exchange
        for g in self.writes:
            for s in own_steps(root / f"group{g}", self.tag):
                if s > start_step:
                    remove_snapshot(root / f"group{g}", s, self.tag)
        self.writer = _Writer(root, run_id, keep, self.tag)

    @classmethod
    def for_run(cls, root: Path, run_id: str, keep: int, topo: Any, states: StateLayout, start_step: int
                ) -> "FilesystemExchange":
        """The exchange of a run whose directory `claim` gave it, for the groups `states` describes."""
        signatures = {g: architecture_signature(e) for g, e in states.entries.items()}
        return cls(root, run_id, topo, signatures, dict(enumerate(states.sizes)), keep, start_step, states.dtype,
                   states.sharded)

    def exchange(self, step: int, local: dict[int, torch.Tensor]) -> dict[int, Snapshot]:
        written = 0
        for g in self.writes:
            flat = local[g].detach().to("cpu", copy=True)
            self.writer.submit(g, step, flat, self.signatures[g])
            written += flat.numel() * flat.element_size()
        if self.same_job:  # every rank's snapshot is written before any is read; waited for within a budget
            with self.topo.local_work(f"writing the snapshots of step {step}", written):
                self.writer.flush(self.topo.io_budget(written))
        if self.shards is not None:
            out = self._read_shards(step)
        else:
            wanted = sum(self.sizes[p] for p in self.wanted) * self.dtype.itemsize if self.leads else 0
            with self.topo.local_work(f"reading the snapshots of step {step}", wanted):  # replica 0 reads, the rest wait
                chosen = self._choose(step) if self.leads else {}
            out = self._share(chosen)
        read = sum(s.flat.numel() * s.flat.element_size() for s in out.values())
        self.traffic = (written, read if self.shards is not None or self.leads else 0)
        return out

    def traffic_line(self, step: int) -> Optional[str]:
        written, read = self.traffic
        return f"exchange at step {step}: wrote {written} snapshot bytes to the exchange directory, read {read}"

    def close(self) -> None:
        """Write what is pending (a peer may still read this group's last snapshot); a failure is only logged."""
        pending = sum(self.sizes[g] for g in self.writes) * self.dtype.itemsize
        try:
            self.writer.close(self.topo.io_budget(pending))
        except ExchangeWriteError as e:
            log.error("%s", e)

    # --- reading (replica 0 of each group picks the version) ----------------------------------------------------
    def _choose(self, step: int) -> dict[int, Snapshot]:
        out = {}
        for p in self.wanted:
            snap = self._newest(p, step)
            if snap is not None:
                out[p] = snap
        return out

    def _pick(self, peer: int, step: int) -> Optional[int]:
        """The newest complete version of `peer` in this run's layout, unless rejected before or already loaded."""
        folder = self.root / f"group{peer}"
        found = versions(folder)
        if not found:
            if peer not in self.missing_logged:
                log.info("exchange at step %d: no snapshot of group %d yet; it is left out of the aggregate", step, peer)
                self.missing_logged.add(peer)
            return None
        need = complete_tags(self.shards)
        complete = [s for s, tags in found.items() if need <= tags]
        newest = max(complete, default=None)
        for s, tags in found.items():  # newer versions in another layout: a peer launched with another R
            foreign = tags - need
            if foreign and (newest is None or s > newest) and (peer, s) not in self.rejected:
                self.rejected.add((peer, s))
                log.warning("exchange: rejected snapshot %s/step%09d of group %d: written with %s, this run reads %s; "
                            "keeping the previous copy", folder, s, peer, describe(foreign), describe(need))
        if newest is None or (peer, newest) in self.rejected or self.loaded.get(peer) == newest:
            return None  # rejected before, or already the teacher copy: keep it
        return newest

    def _newest(self, peer: int, step: int) -> Optional[Snapshot]:
        newest = self._pick(peer, step)
        if newest is None:
            return None
        folder = self.root / f"group{peer}"
        try:
            snap, written = self._read(folder, peer, newest)
        except FileNotFoundError:
            return None  # pruned by its writer between listing and reading: the next exchange picks a newer one
        except (OSError, ValueError, RuntimeError, KeyError, TypeError, EOFError) as e:
            self.rejected.add((peer, newest))
            log.warning("exchange: rejected snapshot %s/step%09d of group %d: %s; keeping the previous copy",
                        folder, newest, peer, e)
            return None
        self._log_staleness(step, peer, snap.step, written)
        self.loaded[peer] = newest
        return snap

    def _log_staleness(self, step: int, peer: int, taken: int, written: float) -> None:
        # In one job every exchange reads the step's own snapshots (0 steps stale): not worth a line each time.
        log.log(logging.DEBUG if self.same_job else logging.INFO,
                "exchange at step %d: group %d snapshot of step %d, %d steps and %.1f s stale",
                step, peer, taken, step - taken, time.time() - written)

    def _read(self, folder: Path, peer: int, step: int, tag: str = "") -> tuple[Snapshot, float]:
        manifest = json.loads((folder / f"step{step:09d}{tag}.json").read_text())
        if manifest.get("run_id") != self.run_id:
            raise ValueError(f"written by run {manifest.get('run_id')!r}, this run is {self.run_id!r}")
        if manifest.get("signature") != self.signatures[peer]:
            raise ValueError("another architecture or class count than this run's model of that group")
        data = (folder / f"step{step:09d}{tag}.pt").read_bytes()
        if hashlib.sha256(data).hexdigest() != manifest["sha256"]:
            raise ValueError(f"checksum mismatch ({len(data)} of {manifest['bytes']} bytes): torn or corrupted")
        payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        flat = payload["flat"]
        if not isinstance(flat, torch.Tensor) or flat.numel() != self.sizes[peer] or payload["step"] != step:
            raise ValueError("its contents do not match its manifest")
        return Snapshot(peer, step, flat), float(manifest["time"])

    # --- one choice per group -----------------------------------------------------------------------------------
    def _share(self, chosen: dict[int, Snapshot]) -> dict[int, Snapshot]:
        """Replica 0's snapshots, broadcast to the group's other replicas so every replica loads the same copy."""
        pg = self.topo.replica_pg
        if self.topo.simulated or self.topo.replicas == 1 or pg is None:
            return chosen
        header = self._agree_on_steps({p: s.step for p, s in chosen.items()})
        out = {}
        for p in self.wanted:
            if header[p] < 0:
                continue
            device = self.topo.device
            flat = chosen[p].flat.to(device) if p in chosen else torch.empty(self.sizes[p], dtype=self.dtype, device=device)
            dist.broadcast(flat, src=self.topo.group_leader_rank(), group=pg)
            out[p] = Snapshot(p, int(header[p]), flat)
        return out

    def _agree_on_steps(self, steps: dict[int, int]) -> torch.Tensor:
        """Replica 0's step per peer (-1: none), broadcast within the group."""
        header = torch.full((self.topo.groups,), -1, dtype=torch.long, device=self.topo.device)
        for p, s in steps.items():
            header[p] = s
        dist.broadcast(header, src=self.topo.group_leader_rank(), group=self.topo.replica_pg)
        return header

    def _read_shards(self, step: int) -> dict[int, Snapshot]:
        """topology.strategy=fsdp: replica 0 picks each peer's version, replica r reads and checks shard r of it.

        A shard that fails on any replica (missing: retried at the next exchange; torn, corrupt or foreign: rejected
        for good) leaves that peer out for the whole group, so the group's replicas keep one consistent copy.
        """
        picks = {p: s for p in self.wanted if (s := self._pick(p, step)) is not None} if self.leads else {}
        header = self._agree_on_steps(picks).cpu()
        status = torch.zeros(self.topo.groups, dtype=torch.long, device=self.topo.device)  # 0 ok, 1 gone, 2 bad
        read: dict[int, tuple[Snapshot, float]] = {}
        for p in self.wanted:
            if header[p] < 0:
                continue
            try:
                read[p] = self._read(self.root / f"group{p}", p, int(header[p]), self.tag)
            except FileNotFoundError:
                status[p] = 1
            except (OSError, ValueError, RuntimeError, KeyError, TypeError, EOFError) as e:
                status[p] = 2
                log.warning("exchange: rejected snapshot %s/step%09d%s of group %d: %s; the group keeps its previous "
                            "copy", self.root / f"group{p}", int(header[p]), self.tag, p, e)
        dist.all_reduce(status, op=dist.ReduceOp.MAX, group=self.topo.replica_pg)
        out = {}
        for p in self.wanted:
            if header[p] < 0:
                continue
            s = int(header[p])
            if status[p] == 2:
                self.rejected.add((p, s))
                if p in read:
                    log.warning("exchange: snapshot %s/step%09d of group %d has a bad shard on another replica; "
                                "the group keeps its previous copy", self.root / f"group{p}", s, p)
            elif status[p] == 0:
                snap, written = read[p]
                out[p] = Snapshot(p, s, snap.flat.to(self.topo.device))
                self.loaded[p] = s
                if self.leads:
                    self._log_staleness(step, p, s, written)
        return out
