"""The G x R layout: which groups and replicas this process runs, its device and its process groups.

One object owns the layout (as torchtitan's ParallelDims does). Ranks are laid out contiguously per group,
rank = g * R + r, in a 2-D DeviceMesh ("group", "replica"): `mesh["replica"]` is a group's DDP process group and
`mesh["group"]` joins the ranks holding the same replica index in every group, which is the exchange path (replicas
of a group are identical, so replica r can fetch peers' parameters from replica r of every other group).

In simulated mode the same layout lives in one process: every group and every replica is local, and there are no
process groups at all. Everything is validated from the environment before any process group is created.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import secrets
import sys
import time
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any, ContextManager, Mapping, Optional

import torch
import torch.distributed as dist

from codistill.distributed.failure import FailureBoard, board
from codistill.distributed.local_work import local_work
from codistill.errors import ConfigError, StartupError  # noqa: F401  (StartupError re-exported)
from codistill.runtime import PARENT_PID_AT_START, print_error

if TYPE_CHECKING:
    from codistill.config import TopologyConfig

log = logging.getLogger(__name__)


_TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
HINTS = {"run directory": "pass the same hydra.run.dir to every node, or the same torchrun --rdzv-id"}


def die_with_launcher(launcher: int = PARENT_PID_AT_START) -> None:
    """Ask the kernel to SIGKILL this worker when its torchrun agent dies (Linux only).

    torchrun starts each worker in a session of its own, so killing the agent (a scheduler's SIGKILL, an OOM kill)
    would otherwise leave the workers running as orphans: a "dead" group would keep training and publishing
    snapshots. PR_SET_PDEATHSIG ties the worker's life to the agent's. An agent that died before the request took
    effect shows as a parent other than the one seen at start (the worker was re-parented to init or a
    subreaper), not as a parent of PID 1: in a container or a Kubernetes pod torchrun itself is PID 1.
    """
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    PR_SET_PDEATHSIG = 1
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL) != 0:
        log.warning("could not tie this worker to its launcher (prctl errno %d)", ctypes.get_errno())
    elif os.getppid() != launcher or not _alive(launcher):  # the agent died before the request took effect
        print_error(f"the launcher of this worker (pid {launcher}) died before it started")
        os._exit(1)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def native_threads() -> int | str:
    """Threads of this process as the OS sees them (gloo's and the store's included); '?' off Linux."""
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return "?"


def launched_by_torchrun(env: Mapping[str, str] = os.environ) -> bool:
    return all(k in env for k in _TORCHRUN_ENV)


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:300]


def start_store(layout: "Layout", timeout: timedelta) -> Optional[dist.Store]:
    """A key-value store of this start alone, under a torchelastic agent; None otherwise.

    torchrun's workers share the agent's TCPStore (MASTER_ADDR:MASTER_PORT) and it survives `--max-restarts`
    restarts: workers of the new round get the same MASTER_PORT and no per-round key prefix. Gloo finds its peers
    through store keys, so a restarted rank that reaches init_process_group before a peer does reads the address
    that peer's dead predecessor published, and fails to connect ("Connection refused", or a connect timeout
    across nodes). TORCHELASTIC_RESTART_COUNT cannot name the round: agents count their own restarts, and a node
    restarted for another node's failure does not count it. So global rank 0 opens a fresh store of its own and
    publishes its port and a nonce in the agent's store; the other ranks take that entry only once they can
    connect to it and read the nonce back, which a dead predecessor's entry never allows.
    """
    env = os.environ
    if env.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    host, world = env["MASTER_ADDR"], layout.world_size
    agent = dist.TCPStore(host, int(env["MASTER_PORT"]), world, is_master=False, timeout=timeout)
    key = "codistill/store"
    if layout.rank == 0:
        own = dist.TCPStore(host, 0, world, is_master=True, timeout=timeout, wait_for_workers=False)
        nonce = secrets.token_hex(8)
        own.set(key, nonce)
        agent.set(key, f"{own.port} {nonce}")
        return own
    deadline = time.monotonic() + timeout.total_seconds()
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise StartupError(f"rank 0 did not publish its store within topology.timeout_s={timeout.total_seconds():g}")
        agent.set_timeout(timedelta(seconds=left))
        port, nonce = agent.get(key).decode().split()  # waits for rank 0 when no round published one yet
        try:
            own = dist.TCPStore(host, int(port), world, is_master=False, timeout=timedelta(seconds=min(left, 2)))
            if own.get(key).decode() == nonce:
                own.set_timeout(timeout)
                return own
        except (RuntimeError, dist.DistError):  # a dead round's store: rank 0 of this round has not published yet
            pass
        time.sleep(0.1)


@dataclass(frozen=True)
class Layout:
    """What the config and the environment say about the world, checked before anything starts."""

    mode: str  # simulated | torchrun
    groups: int
    replicas: int
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    group_id: Optional[int] = None  # this job runs only this group (groups as separate jobs)

    @property
    def job_groups(self) -> list[int]:
        """The groups this job runs: all G, or the one named by topology.group_id."""
        return list(range(self.groups)) if self.group_id is None else [self.group_id]

    @property
    def group(self) -> int:
        return self.job_groups[self.rank // self.replicas]

    @property
    def replica(self) -> int:
        return self.rank % self.replicas


def resolve_layout(topology: TopologyConfig, env: Mapping[str, str] = os.environ) -> Layout:
    """Turn the topology config section + torchrun's environment into a Layout, or raise a one-line ConfigError."""
    groups = topology.groups
    if groups < 1:
        raise ConfigError(f"topology.groups={groups} must be >= 1")
    under_torchrun = launched_by_torchrun(env)
    mode = topology.mode if topology.mode != "auto" else ("torchrun" if under_torchrun else "simulated")
    if mode == "simulated":
        if under_torchrun and int(env["WORLD_SIZE"]) > 1:
            raise ConfigError(
                "topology.mode=simulated runs in one process, but torchrun started "
                f"{env['WORLD_SIZE']} processes: launch with plain python or drop topology.mode"
            )
        replicas = topology.replicas if topology.replicas is not None else 1
        if replicas < 1:
            raise ConfigError(f"topology.replicas={replicas} must be >= 1")
        return Layout("simulated", groups, replicas, group_id=topology.group_id)
    if not under_torchrun:
        raise ConfigError("topology.mode=torchrun needs RANK/WORLD_SIZE/LOCAL_RANK: launch with torchrun")
    world = int(env["WORLD_SIZE"])
    job_groups = groups if topology.group_id is None else 1
    if world % job_groups != 0:
        raise ConfigError(
            f"world size {world} is not divisible by topology.groups={groups}: "
            f"launch G x R processes (e.g. {groups * max(1, world // groups)}) or change topology.groups"
        )
    replicas = world // job_groups
    if topology.replicas is not None and topology.replicas != replicas:
        raise ConfigError(
            f"topology.replicas={topology.replicas} but world size {world} / {job_groups} group(s) in this job = "
            f"{replicas}: drop topology.replicas under torchrun or launch groups x replicas processes"
        )
    return Layout("torchrun", groups, replicas, int(env["RANK"]), world, int(env["LOCAL_RANK"]), topology.group_id)


def pick_device(requested: str, local_rank: int) -> torch.device:
    if requested == "cuda" or (requested == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ConfigError("topology.device=cuda but no CUDA device is visible: use topology.device=cpu")
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


@dataclass
class Topology:
    """The running layout: local groups/replicas, device, and (under torchrun) the mesh's process groups."""

    layout: Layout
    device: torch.device
    mesh: Optional[Any] = None
    _owns_process_group: bool = field(default=False, repr=False)
    failures: Optional[FailureBoard] = field(default=None, repr=False)  # None in simulated mode
    timeout_s: float = 60.0  # topology.timeout_s: the bound of every collective
    io_bandwidth_mb_s: float = 50.0  # topology.io_bandwidth_mb_s: rank-local work may take timeout_s + bytes / this
    _work_seq: int = field(default=0, repr=False)

    @classmethod
    def start(cls, layout: Layout, device: str = "auto", timeout_s: float = 60.0, io_bandwidth_mb_s: float = 50.0
              ) -> "Topology":
        dev = pick_device(device, layout.local_rank)
        if layout.mode == "simulated":
            return cls(layout, dev, timeout_s=timeout_s, io_bandwidth_mb_s=io_bandwidth_mb_s)
        die_with_launcher()
        backend = "nccl" if dev.type == "cuda" else "gloo"
        # torch.distributed.nn.functional binds `group=group.WORLD` as default arguments when first imported
        # (DDP imports it via torch.distributed._shard). Imported after init, those defaults keep the world
        # process group alive past destroy_process_group, so its gloo threads are only torn down during
        # interpreter finalisation, racing other static destructors ("terminate called without an active
        # exception", SIGABRT). Imported now, the defaults are None and destroy really frees the group.
        import torch.distributed.nn.functional  # noqa: F401
        from torch.distributed.device_mesh import init_device_mesh

        timeout = timedelta(seconds=timeout_s)
        try:
            store = start_store(layout, timeout)
            if store is None:  # not under a torchelastic agent: env:// makes a store of this launch alone
                dist.init_process_group(backend, timeout=timeout)
            else:
                dist.init_process_group(backend, store=store, rank=layout.rank, world_size=layout.world_size,
                                        timeout=timeout)
            # init_device_mesh gives its sub-groups torch's default timeout (30 min for gloo) unless told
            options = (dist.ProcessGroupNCCL.Options() if backend == "nccl" else dist.ProcessGroupGloo._Options())
            options._timeout = timeout
            shape = (len(layout.job_groups), layout.replicas)  # (1, R) when this job runs one group of a separate-jobs run
            mesh = init_device_mesh(dev.type, shape, mesh_dim_names=("group", "replica"),
                                    backend_override={"group": (backend, options), "replica": (backend, options)})
            store = store or dist.distributed_c10d._get_default_store()  # outlives the process groups
        except (RuntimeError, dist.DistError) as e:  # DistStoreError, gloo's connect errors, a timed-out wait
            if dist.is_initialized():
                dist.destroy_process_group()
            raise StartupError(f"the {layout.world_size} ranks did not all start within topology.timeout_s={timeout_s:g} "
                               f"(rank {layout.rank}: {_first_line(e)}): a rank failed or never arrived") from None
        return cls(layout, dev, mesh, _owns_process_group=True, failures=board(store, layout, timeout_s),
                   timeout_s=timeout_s, io_bandwidth_mb_s=io_bandwidth_mb_s)

    # --- what this process runs -------------------------------------------------------------------------------
    @property
    def simulated(self) -> bool:
        return self.layout.mode == "simulated"

    @property
    def groups(self) -> int:
        return self.layout.groups

    @property
    def replicas(self) -> int:
        return self.layout.replicas

    @property
    def job_groups(self) -> list[int]:
        """The groups this job runs (all G unless topology.group_id names one); the others are remote."""
        return self.layout.job_groups

    @property
    def local_groups(self) -> list[int]:
        return self.job_groups if self.simulated else [self.layout.group]

    @property
    def local_replicas(self) -> list[int]:
        return list(range(self.replicas)) if self.simulated else [self.layout.replica]

    @property
    def is_main(self) -> bool:
        """Global rank 0: writes metrics.jsonl, the console and the run-level outputs."""
        return self.layout.rank == 0

    def is_group_leader(self, group: int) -> bool:
        """Replica 0 of `group` (in this process): writes that group's checkpoints."""
        return group in self.local_groups and 0 in self.local_replicas

    # --- process groups (None in simulated mode) --------------------------------------------------------------
    @property
    def replica_pg(self) -> Optional[dist.ProcessGroup]:
        """mesh["replica"]: the R ranks of this rank's group (its DDP / FSDP process group)."""
        return None if self.mesh is None else self.mesh["replica"].get_group()

    @property
    def cross_group_pg(self) -> Optional[dist.ProcessGroup]:
        """mesh["group"]: this rank and the ranks of the same replica index in every other group (the exchange path)."""
        return None if self.mesh is None else self.mesh["group"].get_group()

    def group_leader_rank(self) -> int:
        """Global rank of replica 0 of this process's group."""
        return self.layout.rank - self.layout.replica

    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        """Sum a tensor over every rank of the world (identity in simulated mode, where every row is local).

        The reduction runs on this rank's device (NCCL reduces CUDA tensors only); the result lands in `t`.
        """
        if self.mesh is not None:
            on_device = t.to(self.device)
            dist.all_reduce(on_device)
            t.copy_(on_device)
        return t

    def check_agree(self, value: str, what: str) -> None:
        """Raise ConfigError on every rank if the ranks disagree on `value` (e.g. the run directory).

        A rank that never gets here makes the others wait topology.timeout_s, then raise StartupError.
        """
        if self.mesh is None:
            return
        values: list[Optional[str]] = [None] * self.layout.world_size
        try:
            dist.all_gather_object(values, value)
        except (RuntimeError, dist.DistError) as e:
            raise StartupError(f"the ranks did not agree on the {what} within topology.timeout_s: {_first_line(e)}"
                               ) from None
        if len(set(values)) > 1:
            raise ConfigError(f"ranks disagree on the {what} ({', '.join(sorted(set(map(str, values))))}): {HINTS.get(what, '')}")

    def barrier(self) -> None:
        if self.mesh is not None:
            dist.barrier()

    def io_budget(self, nbytes: int) -> float:
        """Seconds rank-local work on `nbytes` may take: topology.timeout_s + nbytes / topology.io_bandwidth_mb_s."""
        return self.timeout_s + nbytes / (self.io_bandwidth_mb_s * 1e6)

    def local_work(self, what: str, nbytes: int) -> ContextManager[None]:
        """Wrap this rank's part of rank-local work that every rank of the job reaches before a collective: the
        ranks then wait for each other through the store, within io_budget of the bytes all of them announced
        (codistill/distributed/local_work.py), not inside the collective. Nothing to wait for in simulated mode."""
        if self.failures is None:
            return contextlib.nullcontext()
        self._work_seq += 1
        return local_work(self.failures.store, f"codistill/work/{self._work_seq}", self.layout.world_size, nbytes,
                          self.timeout_s, self.io_bandwidth_mb_s, what)

    def fail(self, line: str, error: BaseException) -> str:
        """This rank failed: record it (unless a peer failed first), print the job's first failure (naming its
        rank) and tear the process groups down at once, so peers waiting for this rank fail now rather than after
        topology.timeout_s. Returns that line (under torchrun already printed)."""
        if self.failures is None:
            return line
        first = self.failures.first_failure(line, error)
        # printed before anything else can go wrong (tearing the groups down, the agent's SIGTERM once a peer has
        # exited): every rank gets its line out; the store's host (rank 0) then waits for every rank's line
        print_error(first)
        self.failures.acknowledge()
        self.shutdown(clean=False)
        return first

    def linger(self) -> None:
        """After a failure, global rank 0 (the store's host) waits until every rank has read the record."""
        if self.failures is not None and self.is_main:
            self.failures.wait_for_readers()

    def shutdown(self, clean: bool = True) -> None:
        """Tear the process groups down in an order that cannot abort the process.

        DDP's reducer and pending gloo work hold references into the process group; freeing them before the
        process group is destroyed (gc.collect) and agreeing that every rank got here (barrier) leaves no
        background work that could outlive `destroy_process_group`. After a failure the barrier is skipped: the
        other ranks may be gone, and waiting for them would only delay the exit until the timeout.
        """
        gc.collect()
        if self._owns_process_group and dist.is_initialized():
            if clean:
                dist.barrier()
            self.mesh = None
            if clean:  # no failure to report: the store (and its threads) can go with the process groups
                self.failures = None
            dist.destroy_process_group()
            self._owns_process_group = False
            gc.collect()  # join the backend's threads now, not during interpreter shutdown
            log.info("process groups destroyed; %s native threads left in this process", native_threads())
