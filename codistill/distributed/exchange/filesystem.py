"""The paper's shared-storage exchange: groups publish snapshots to a directory and read each other's newest.

The directory is a local path or any fsspec URL (s3://, gs://, az://, file://; memory:// in tests): see store.py for
how a version is published without rename (data first, manifest last) and where credentials come from.

Layout of the exchange directory:

    run.json                          the run that owns the directory (its run id); a second run is refused
    group{g}/step{s:09d}.pt           group g's flattened parameters + buffers after s steps
    group{g}/step{s:09d}.json         its manifest (step, run id, architecture signature, sha256, time): written
                                      last, so a snapshot without a manifest is incomplete and never read
    group{g}/step{s:09d}.shard{r}of{R}.pt / .json
                                      topology.strategy=fsdp: replica r's local shard and its own manifest; a
                                      version is complete only when all R shard manifests of this run's R exist

Replica 0 of each group publishes at the group's exchange steps through a background writer thread, so the
training step never waits for the upload, and prunes all but the newest `keep` snapshots (manifest first). Groups in
separate jobs read through a background prefetcher: it lists the peers' folders (at every exchange and every
POLL_S seconds), downloads the newest complete version of each peer and checks it (checksum, run id, architecture,
payload size); an exchange step takes what has fully arrived and never waits on a download. Replica 0 broadcasts
its choice inside its group, so the group's replicas load the same copy. A peer without a snapshot is left out; a
rejected snapshot (torn: a manifest whose data is missing or fails its checksum; foreign: another run, architecture
or codec) is logged once with its reason and the previous teacher copy stays.

Sharded groups (topology.strategy=fsdp) never gather a whole state: every replica publishes its own shard, replica
0 picks the version and broadcasts its step within the group, replica r reads and checks shard r, and an all-reduce
within the group makes a shard that fails on any replica keep the whole group's previous copy. A version written
with another R (or whole, by DDP groups) is rejected with a logged reason. Shards are read at the exchange step
(the replicas must agree on one version), not prefetched.

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
from typing import Any, Optional, Union

import torch
import torch.distributed as dist

from codistill.distributed.exchange.base import Entries, Snapshot, StateLayout
from codistill.distributed.exchange.store import Store, StoreError, bounded, check_url
from codistill.errors import ConfigError, ExchangeWriteError

log = logging.getLogger(__name__)

_MANIFEST = re.compile(r"step(\d{9})((?:\.shard\d+of\d+)?)\.json$")
POLL_S = 1.0  # separate jobs: the prefetcher lists the peers' folders at least this often
_READ_ERRORS = (OSError, ValueError, RuntimeError, KeyError, TypeError, EOFError)


class _Missing(Exception):
    """A listed version vanished before it was read (pruned by its writer): not an error, retried later."""


def exchange_root(exchange_dir: Optional[str], run_dir: Path) -> str:
    """distill.exchange_dir (a directory or an fsspec URL), or <run dir>/exchange when it is not set."""
    return str(exchange_dir) if exchange_dir else str(run_dir / "exchange")


def architecture_signature(entries: Entries, codec: str = "none") -> str:
    """Names and shapes of a flattened state (StateLayout.entries) and its codec: differs with architecture, class
    count or snapshot codec."""
    text = repr([(n, tuple(s)) for n, s, _ in entries]) + ("" if codec == "none" else f"|{codec}")
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _as_store(root: Union[Store, str, Path]) -> Store:
    return root if isinstance(root, Store) else Store(root)


def claim(root: Union[Store, str, Path], run_id: str, timeout_s: float = 60.0) -> None:
    """Make `root` usable by this run, before any process group starts; raise a one-line ConfigError if not: a URL
    with credentials or whose filesystem package is missing, a store that does not answer, another run's store.

    The first job to arrive writes run.json, later jobs of the same run find their own id there, another run's jobs
    are refused. On a local disk the create is exclusive (a hard link); an object store has no exclusive create, so
    two different runs starting within the same second on one URL could both proceed (jobs of one run write the
    same id, so they never conflict). An unreachable endpoint fails after `timeout_s`.
    """
    try:
        check_url(str(root))
        store = _as_store(root)
        found = bounded(lambda: _claim(store, run_id), timeout_s, "the exchange store")
    except StoreError as e:
        raise ConfigError(str(e)) from None
    except (OSError, ValueError, ImportError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else (str(e).splitlines() or [type(e).__name__])[0]
        raise ConfigError(f"distill.exchange_dir={root} is not usable: {reason}") from None
    if found != run_id:
        raise ConfigError(
            f"distill.exchange_dir={root} belongs to run {found!r}, not this run {run_id!r}: give each run its own "
            "exchange directory (every group of one run needs the same run_name and shared settings)"
        )


def _claim(store: Store, run_id: str) -> Optional[str]:
    store.makedirs()
    if store.local:
        owner = Path(store.path("run.json"))
        if not owner.exists():
            fd, tmp = tempfile.mkstemp(prefix=".run.", suffix=".tmp", dir=owner.parent)
            with os.fdopen(fd, "w") as f:
                json.dump({"run_id": run_id}, f)
            try:
                os.link(tmp, owner)
            except FileExistsError:
                pass
            finally:
                os.unlink(tmp)
    elif not store.exists("run.json"):
        store.put("run.json", json.dumps({"run_id": run_id}).encode())
    return json.loads(store.get("run.json")).get("run_id")


class _Writer:
    """A daemon thread that writes the newest pending snapshot of each local group; the step never waits on it."""

    def __init__(self, store: Store, run_id: str, keep: int, tag: str = "") -> None:
        """`tag`: this rank's layout suffix, "" for whole snapshots or ".shard{r}of{R}" (see `layout_tag`)."""
        self.store, self.run_id, self.keep, self.tag = store, run_id, keep, tag
        self.pending: dict[int, tuple[int, torch.Tensor, str]] = {}
        self.busy = False
        self.error: Optional[BaseException] = None
        self.cv = threading.Condition()
        self.closed = False
        self.thread = threading.Thread(target=self._loop, name="codistill-exchange-writer", daemon=True)
        self.thread.start()

    def submit(self, group: int, step: int, flat: torch.Tensor, signature: str) -> None:
        """Queue a snapshot; an older one still pending for the group is replaced (a slow link only adds staleness)."""
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
            raise ExchangeWriteError(f"a snapshot was not written to distill.exchange_dir={self.store} within "
                                     f"{timeout_s:.0f} s: the disk is stuck or slower than topology.io_bandwidth_mb_s")

    def close(self, timeout_s: float) -> None:
        """Finish the pending writes, at most `timeout_s`; a write still running then is abandoned with an error."""
        with self.cv:
            self.closed = True
            self.cv.notify_all()
        self.thread.join(timeout_s)
        self.raise_error()
        if self.thread.is_alive():
            raise ExchangeWriteError(f"the last snapshot was not written to distill.exchange_dir={self.store} within "
                                     f"{timeout_s:.0f} s; peers keep its previous version")

    def raise_error(self) -> None:
        if self.error is not None:
            e = self.error
            reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            raise ExchangeWriteError(f"could not publish a snapshot to distill.exchange_dir={self.store}: {reason}")

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
        folder = f"group{group}"
        self.store.makedirs(folder)
        buf = io.BytesIO()
        torch.save({"group": group, "step": step, "flat": flat}, buf)
        data = buf.getvalue()
        name = f"{folder}/step{step:09d}{self.tag}"
        self.store.put(f"{name}.pt", data)  # the data first ...
        manifest = {
            "group": group, "step": step, "run_id": self.run_id, "signature": signature,
            "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data), "time": time.time(),
        }
        self.store.put(f"{name}.json", json.dumps(manifest).encode())  # ... the manifest last: now it is visible
        for old in own_steps(self.store, folder, self.tag)[self.keep :]:
            remove_snapshot(self.store, folder, old, self.tag)


def layout_tag(shard: int, shards: Optional[int]) -> str:
    """The file-name suffix of a layout: "" for a whole snapshot (shards None), ".shard{r}of{R}" for shard r of R."""
    return "" if shards is None else f".shard{shard}of{shards}"


def versions(store: Union[Store, str, Path], folder: str = "") -> dict[int, set[str]]:
    """Every step with a manifest, and the layout tags its manifests have (one per written file)."""
    found: dict[int, set[str]] = {}
    for name in _as_store(store).list(folder):
        if m := _MANIFEST.match(name):
            found.setdefault(int(m.group(1)), set()).add(m.group(2))
    return found


def complete_tags(shards: Optional[int]) -> set[str]:
    return {layout_tag(r, shards) for r in range(shards or 1)}


def own_steps(store: Store, folder: str, tag: str) -> list[int]:
    """Steps with a manifest of one layout tag (what one writer published), newest first."""
    return sorted((s for s, tags in versions(store, folder).items() if tag in tags), reverse=True)


def remove_snapshot(store: Store, folder: str, step: int, tag: str = "") -> None:
    """Manifest first, so a reader never finds a manifest whose data file is gone on purpose."""
    store.remove(f"{folder}/step{step:09d}{tag}.json")
    store.remove(f"{folder}/step{step:09d}{tag}.pt")


def describe(tags: set[str]) -> str:
    """A layout for a log line: "whole" or "R=3 shards" (several, if the directory mixes them)."""
    kinds = sorted({"whole" if not t else f"R={t.rsplit('of', 1)[1]} shards" for t in tags})
    return " and ".join(kinds)


class _Reader:
    """Picks, fetches and checks peers' versions; with `background`, a daemon thread does it ahead of the steps.

    In the background the thread lists every wanted peer's folder when kicked (at each exchange) and every POLL_S
    seconds, and keeps the newest verified snapshot of each peer until an exchange takes it: an exchange step never
    waits on a download. Without it (groups of one job) `fetch` reads synchronously, exactly the requested step.
    """

    def __init__(self, store: Store, run_id: str, signatures: dict[int, str], sizes: dict[int, int],
                 need: set[str], wanted: list[int], background: bool) -> None:
        self.store, self.run_id, self.signatures, self.sizes, self.need = store, run_id, signatures, sizes, need
        self.wanted = wanted
        self.rejected: set[tuple[int, int]] = set()
        self.fetched: dict[int, int] = {}  # peer -> newest step fetched (and checked) so far
        self.missing_logged: set[int] = set()
        self.ready: dict[int, tuple[Snapshot, float]] = {}
        self.lock = threading.Lock()
        self.kick = threading.Event()
        self.rounds = 0  # completed background rounds (tests wait on it)
        self.cv = threading.Condition(self.lock)
        self.closed = False
        self.thread: Optional[threading.Thread] = None
        if background:
            self.thread = threading.Thread(target=self._loop, name="codistill-exchange-reader", daemon=True)
            self.thread.start()

    # --- background ---------------------------------------------------------------------------------------------
    def take(self) -> dict[int, tuple[Snapshot, float]]:
        """What has fully arrived (and was checked) since the last take; kicks a new round."""
        with self.lock:
            out, self.ready = self.ready, {}
        self.kick.set()
        return out

    def refresh(self, timeout_s: float = 30.0) -> None:
        """Wait for a complete round that started after this call (tests: make the arrival deterministic)."""
        with self.cv:
            target = self.rounds + 2
        self.kick.set()
        with self.cv:
            self.cv.wait_for(lambda: self.rounds >= target or self.closed, timeout_s)

    def close(self) -> None:
        self.closed = True
        self.kick.set()
        if self.thread is not None:
            self.thread.join(timeout=10)

    def _loop(self) -> None:
        while not self.closed:
            self.kick.wait(POLL_S)
            self.kick.clear()
            if self.closed:
                return
            for peer in self.wanted:
                try:
                    got = self.fetch(peer, None)
                except _READ_ERRORS as e:  # the store is unreachable for now: the copy only gets staler
                    log.warning("exchange: could not list or read group %d's snapshots: %s", peer, e)
                    got = None
                if got is not None:
                    with self.lock:
                        self.ready[peer] = got
            with self.cv:
                self.rounds += 1
                self.cv.notify_all()

    # --- one peer -----------------------------------------------------------------------------------------------
    def pick(self, peer: int, exact: Optional[int]) -> Optional[int]:
        """The newest complete version of `peer` (`exact`: that step only), unless rejected or already fetched."""
        folder = f"group{peer}"
        found = versions(self.store, folder)
        if not found:
            if peer not in self.missing_logged:
                log.info("exchange: no snapshot of group %d yet; it is left out of the aggregate until one arrives",
                         peer)
                self.missing_logged.add(peer)
            return None
        complete = [s for s, tags in found.items() if self.need <= tags and (exact is None or s == exact)]
        newest = max(complete, default=None)
        for s, tags in found.items():  # newer versions in another layout: a peer launched with another R
            foreign = tags - self.need
            if foreign and (newest is None or s > newest) and (peer, s) not in self.rejected:
                self.rejected.add((peer, s))
                log.warning("exchange: rejected snapshot %s/%s/step%09d of group %d: written with %s, this run reads "
                            "%s; keeping the previous copy", self.store, folder, s, peer, describe(foreign),
                            describe(self.need))
        if newest is None or (peer, newest) in self.rejected or self.fetched.get(peer) == newest:
            return None  # rejected before, or already fetched: keep the copy
        return newest

    def fetch(self, peer: int, exact: Optional[int]) -> Optional[tuple[Snapshot, float]]:
        """Pick and read `peer`'s newest version; None if there is none new, or it was rejected (logged once)."""
        newest = self.pick(peer, exact)
        if newest is None:
            return None
        try:
            got = self.read(peer, newest)
        except _Missing:
            return None
        except _READ_ERRORS as e:
            self.rejected.add((peer, newest))
            log.warning("exchange: rejected snapshot %s/group%d/step%09d of group %d: %s; keeping the previous copy",
                        self.store, peer, newest, peer, e)
            return None
        self.fetched[peer] = newest
        return got

    def read(self, peer: int, step: int, tag: str = "") -> tuple[Snapshot, float]:
        name = f"group{peer}/step{step:09d}{tag}"
        try:
            manifest = json.loads(self.store.get(f"{name}.json"))
        except FileNotFoundError:
            raise _Missing() from None
        if manifest.get("run_id") != self.run_id:
            raise ValueError(f"written by run {manifest.get('run_id')!r}, this run is {self.run_id!r}")
        if manifest.get("signature") != self.signatures[peer]:
            raise ValueError("another architecture, class count or snapshot codec than this run's for that group")
        try:
            data = self.store.get(f"{name}.pt")
        except FileNotFoundError:
            if not self.store.exists(f"{name}.json"):
                raise _Missing() from None  # pruned between the two reads
            raise ValueError("torn: its manifest is there but its data is not") from None
        if hashlib.sha256(data).hexdigest() != manifest["sha256"]:
            raise ValueError(f"checksum mismatch ({len(data)} of {manifest['bytes']} bytes): torn or corrupted")
        payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        flat = payload["flat"]
        if not isinstance(flat, torch.Tensor) or flat.numel() != self.sizes[peer] or payload["step"] != step:
            raise ValueError("its contents do not match its manifest")
        return Snapshot(peer, step, flat), float(manifest["time"])


class _Collect:
    """A filesystem exchange in flight: its snapshots are collected when waited for (see FilesystemExchange)."""

    def __init__(self, owner: "FilesystemExchange", step: int) -> None:
        self.owner, self.step = owner, step
        self.result: Optional[dict[int, Snapshot]] = None

    def wait(self) -> dict[int, Snapshot]:
        if self.result is None:
            self.result = self.owner.collect(self.step)
        return self.result


class FilesystemExchange:
    def __init__(
        self,
        root: Union[Store, str, Path],
        run_id: str,
        topo: Any,
        signatures: dict[int, str],
        sizes: dict[int, int],
        keep: int,
        start_step: int,
        dtype: torch.dtype = torch.float32,
        sharded: bool = False,
    ) -> None:
        """`signatures[g]` / `sizes[g]`: architecture and payload length of every group this process publishes or
        reads (with `sharded`, of this replica's local shard: topology.strategy=fsdp); `dtype`: the payloads'.

        `start_step` is where this job starts (0, or the step it resumed from): the local groups' snapshots of later
        steps, left by an earlier incarnation, are removed so no peer reads a state this run will not reach again.
        """
        self.store, self.run_id, self.topo = _as_store(root), run_id, topo
        self.signatures, self.sizes, self.dtype = signatures, sizes, dtype
        self.shards = topo.replicas if sharded else None  # None: whole snapshots, written by replica 0
        self.tag = layout_tag(topo.layout.replica, self.shards)
        self.same_job = len(topo.job_groups) == topo.groups  # every group steps in this job: read exact steps
        self.leads = [g for g in topo.local_groups if topo.is_group_leader(g)]
        self.writes = list(topo.local_groups) if sharded else self.leads  # sharded: every replica writes its shard
        local = set(topo.local_groups)
        self.wanted = [p for p in range(topo.groups) if not (len(local) == 1 and p in local)]
        background = not self.same_job and sharded is False and bool(self.leads)
        self.reader = _Reader(self.store, run_id, signatures, sizes, complete_tags(self.shards), self.wanted,
                              background)
        self.loaded: dict[int, int] = {}  # peer -> step of the snapshot last handed out
        self.traffic = (0, 0)  # snapshot bytes this rank wrote and read at the last exchange
        for g in self.writes:
            for s in own_steps(self.store, f"group{g}", self.tag):
                if s > start_step:
                    remove_snapshot(self.store, f"group{g}", s, self.tag)
        self.writer = _Writer(self.store, run_id, keep, self.tag)

    @classmethod
    def for_run(cls, root: Store, run_id: str, keep: int, topo: Any, states: StateLayout, start_step: int,
                codec: str = "none") -> "FilesystemExchange":
        """The exchange of a run whose store `claim` gave it, for the groups `states` describes (their payloads:
        `codec`'s bytes)."""
        signatures = {g: architecture_signature(e, codec) for g, e in states.entries.items()}
        return cls(root, run_id, topo, signatures, dict(enumerate(states.sizes)), keep, start_step, states.dtype,
                   states.sharded)

    def launch(self, step: int, local: dict[int, torch.Tensor], sizes: Optional[list[int]] = None) -> _Collect:
        """Hand the local payloads to the background writer; the peers' are collected when waited for."""
        written = 0
        for g in self.writes:
            flat = local[g].detach().to("cpu", copy=True)
            self.writer.submit(g, step, flat, self.signatures[g])
            written += flat.numel() * flat.element_size()
        self.traffic = (written, 0)
        return _Collect(self, step)

    def exchange(self, step: int, local: dict[int, torch.Tensor]) -> dict[int, Snapshot]:
        return self.launch(step, local).wait()

    def collect(self, step: int) -> dict[int, Snapshot]:
        """The peers' snapshots for an exchange launched at `step` (groups of one job: exactly that step's)."""
        if self.same_job:  # every rank's snapshot is written before any is read; waited for within a budget
            written = sum(self.sizes[g] for g in self.writes) * self.dtype.itemsize
            with self.topo.local_work(f"writing the snapshots of step {step}", written):
                self.writer.flush(self.topo.io_budget(written))
        else:
            self.writer.raise_error()
        if self.shards is not None:
            out = self._read_shards(step)
        else:
            wanted = sum(self.sizes[p] for p in self.wanted) * self.dtype.itemsize if self.leads else 0
            with self.topo.local_work(f"reading the snapshots of step {step}", wanted):  # replica 0 reads, the rest wait
                chosen = self._choose(step) if self.leads else {}
            out = self._share(chosen)
        read = sum(s.flat.numel() * s.flat.element_size() for s in out.values())
        self.traffic = (self.traffic[0], read if self.shards is not None or self.leads else 0)
        return out

    def close(self) -> None:
        """Write what is pending (a peer may still read this group's last snapshot); a failure is only logged."""
        self.reader.close()
        pending = sum(self.sizes[g] for g in self.writes) * self.dtype.itemsize
        try:
            self.writer.close(self.topo.io_budget(pending))
        except ExchangeWriteError as e:
            log.error("%s", e)

    # --- reading (replica 0 of each group picks the version) ----------------------------------------------------
    def _choose(self, step: int) -> dict[int, Snapshot]:
        if self.reader.thread is not None:
            arrived = self.reader.take()
        else:
            arrived = {}
            for p in self.wanted:
                got = self.reader.fetch(p, step if self.same_job else None)
                if got is not None:
                    arrived[p] = got
        out = {}
        for p, (snap, written) in arrived.items():
            self._log_staleness(step, p, snap.step, written)
            self.loaded[p] = snap.step
            out[p] = snap
        return out

    def _log_staleness(self, step: int, peer: int, taken: int, written: float) -> None:
        # In one job every exchange reads the step's own snapshots (0 steps stale): not worth a line each time.
        log.log(logging.DEBUG if self.same_job else logging.INFO,
                "exchange at step %d: group %d snapshot of step %d, %d steps and %.1f s stale",
                step, peer, taken, step - taken, time.time() - written)

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
        exact = step if self.same_job else None
        picks = ({p: s for p in self.wanted if (s := self.reader.pick(p, exact)) is not None}
                 if self.leads else {})
        header = self._agree_on_steps(picks).cpu()
        status = torch.zeros(self.topo.groups, dtype=torch.long, device=self.topo.device)  # 0 ok, 1 gone, 2 bad
        read: dict[int, tuple[Snapshot, float]] = {}
        for p in self.wanted:
            if header[p] < 0:
                continue
            try:
                read[p] = self.reader.read(p, int(header[p]), self.tag)
            except _Missing:
                status[p] = 1
            except _READ_ERRORS as e:
                status[p] = 2
                log.warning("exchange: rejected snapshot %s/group%d/step%09d%s of group %d: %s; the group keeps its "
                            "previous copy", self.store, p, int(header[p]), self.tag, p, e)
        dist.all_reduce(status, op=dist.ReduceOp.MAX, group=self.topo.replica_pg)
        out = {}
        for p in self.wanted:
            if header[p] < 0:
                continue
            s = int(header[p])
            if status[p] == 2:
                self.reader.rejected.add((p, s))
                if p in read:
                    log.warning("exchange: snapshot %s/group%d/step%09d of group %d has a bad shard on another "
                                "replica; the group keeps its previous copy", self.store, p, s, p)
            elif status[p] == 0:
                snap, written = read[p]
                out[p] = Snapshot(p, s, snap.flat.to(self.topo.device))
                self.loaded[p] = s
                self.reader.fetched[p] = s
                if self.leads:
                    self._log_staleness(step, p, s, written)
        return out
