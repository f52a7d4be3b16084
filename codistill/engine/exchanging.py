"""The exchange schedule of one process: what is launched before which step, and when it lands.

    before step s:  land every exchange due at s   (launched at s - tau: its peers' payloads are decoded and loaded)
                    launch the fragments due at s  (flatten, encode, hand to the transport: an all-gather in flight,
                                                    a background upload, or in simulated mode the payloads themselves)
                    with tau = 0, land them at once (the exchange of Algorithm 1)

The same schedule runs in simulated mode and under torchrun, and the codec runs in both, so both load the same
bytes into the same teacher copies at the same step. Exchanges still in flight at a checkpoint are waited for and
saved with it, so a resumed run lands them at the same step with the same bytes.

Bytes: every launch and landing adds to this process's per-group counters, read (and reset) at each record of
metrics.jsonl as exchange/bytes_sent and exchange/bytes_received. Collective: what a ring all-gather across the G
groups passes through each rank, (G - 1) x the largest payload (padded; / R with distill.shard_exchange), summed over
the group's R ranks; simulated mode counts what that torchrun run would move. Filesystem: the bytes the group
uploaded and downloaded.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Optional

import torch

from codistill.distributed.exchange import CollectiveExchange, Exchange, FilesystemExchange, Snapshot
from codistill.distributed.exchange.base import Done, InFlight, StateLayout
from codistill.distributed.exchange.codecs import Codec, RowLayout
from codistill.distributed.exchange.collective import rank_traffic
from codistill.distributed.exchange.fragments import Entries, Fragment, FragmentError, due, split
from codistill.errors import ConfigError

if TYPE_CHECKING:
    from codistill.config import DistillConfig

log = logging.getLogger("codistill")


def known_layouts(workers: dict[int, Any], groups: int) -> dict[int, list]:
    """The flattener entries of every group: the local students' and their teacher copies' (every peer's); groups
    known by neither (averaging modes: one architecture for all) take a local student's."""
    out: dict[int, list] = {}
    for g, w in workers.items():
        out[g] = list(w.flattener.entries)
        out.update({p: list(e) for p, e in w.teachers.layouts().items()})
    first = next(iter(out.values()))
    return {g: out.get(g, first) for g in range(groups)}


def cut(entries: Entries, count: int) -> list[Fragment]:
    """distill.fragments=`count` slices of a state with these flattener entries; too few modules is a ConfigError."""
    try:
        return split(entries, count)
    except FragmentError as e:
        raise ConfigError(str(e)) from None


@dataclass
class Flight:
    launched: int
    lands: int
    fragment: int
    handle: InFlight
    sizes: list[int]  # every group's payload bytes


class ExchangeRunner:
    def __init__(self, d: DistillConfig, topo: Any, schedule: Any, workers: dict[int, Any], outer: Optional[Any],
                 sharded: bool, connect: Callable[[StateLayout], Exchange]) -> None:
        """`d`: the distill section. `connect(states)`: the transport distill.exchange names (codistill/build.py),
        for the payloads `states` describes (every group's layout and payload bytes)."""
        self.topo, self.schedule, self.workers, self.outer = topo, schedule, workers, outer
        self.codec, self.raw = Codec(d.snapshot_codec), Codec("none")
        self.delay, self.every, self.count = d.exchange_delay, d.exchange_every, d.fragments
        self.wire = next(iter(workers.values())).flattener.dtype  # the dtype states are flattened in
        layouts = known_layouts(workers, topo.groups)
        self.fragments = {g: cut(e, self.count) for g, e in layouts.items()}
        self.sizes = [[self.codec.payload_bytes(self.fragments[g][i].layout, self.wire) for g in range(topo.groups)]
                      for i in range(self.count)]
        self.filesystem = d.exchange == "filesystem"
        self.shards = topo.replicas if d.shard_exchange else 1
        self.transport = connect(StateLayout(layouts, tuple(self.sizes[0]), torch.uint8, sharded))
        self.flights: list[Flight] = []
        self.traffic = {g: [0, 0] for g in workers}  # bytes sent, received since the last record

    # --- the schedule ---------------------------------------------------------------------------------------------
    def due(self, step: int) -> list[int]:
        """Fragments launched before `step`."""
        burn_in = self.schedule.burn_in_steps
        if self.schedule.averaging:  # outer steps: every fragment before each step through burn-in, then staggered
            return list(range(self.count)) if step <= burn_in else due(step, burn_in, self.every, self.count)
        if not (self.schedule.exchanging and self.schedule.distilling(step)):
            return []
        return due(step, burn_in, self.every, self.count)

    def lands(self, step: int) -> int:
        """When an exchange launched before `step` lands: tau steps later, except the outer modes' start and
        every-step warm-up (the groups must start from one state and average synchronously)."""
        return step if self.schedule.averaging and step <= self.schedule.burn_in_steps else step + self.delay

    def before_step(self, step: int) -> None:
        self._land_due(step)
        for i in self.due(step):
            self.launch(step, i, self.lands(step))
            log.debug("exchange at step %d", step)
        self._land_due(step)

    def exchange_now(self, step: int) -> None:
        """Every fragment launched and landed before `step`, whatever the schedule (tools, tests, benchmarks)."""
        for i in range(self.count):
            self.launch(step, i, step)
        self._land_due(step)

    def _land_due(self, step: int) -> None:
        while self.flights and self.flights[0].lands <= step:
            self._land(self.flights.pop(0))

    # --- launch -----------------------------------------------------------------------------------------------------
    def launch(self, step: int, fragment: int, lands: int) -> None:
        local = {}
        for g, w in self.workers.items():
            f = self.fragments[g][fragment]
            w.sync_buffers()
            local[g] = w.flattener.flatten(w.model, f.first, f.last)
        codec = self.codec
        if self.outer is not None:
            # the first outer exchange of a fragment: group 0's exact state
            codec = self.codec if self.outer.started[fragment] else self.raw
            local = self.outer.payload(fragment, local)
        payloads = {g: codec.encode(flat, self.fragments[g][fragment].layout) for g, flat in local.items()}
        sizes = [codec.payload_bytes(self.fragments[g][fragment].layout, next(iter(local.values())).dtype)
                 for g in range(self.topo.groups)]
        handle = self.transport.launch(step, payloads, sizes)
        self.flights.append(Flight(step, lands, fragment, handle, sizes))
        self._count_launch(payloads, sizes)
        self.flights.sort(key=lambda f: f.lands)

    # --- land -------------------------------------------------------------------------------------------------------
    def _land(self, flight: Flight) -> None:
        snapshots = flight.handle.wait()
        self._count_landing(snapshots, flight.fragment)
        self._log(flight)
        if self.outer is not None:
            self._outer_step(flight, snapshots)
            return
        decoded: dict[int, torch.Tensor] = {}  # once per peer: local students share the pool's copies
        for g, w in self.workers.items():
            for peer in w.teachers.models:
                if peer not in snapshots:  # no (newer) snapshot of that peer: its copy stays as it is
                    continue
                f = self.fragments[peer][flight.fragment]
                if peer not in decoded:
                    decoded[peer] = self._decode(snapshots[peer], f.layout, w.teachers.pool.dtype)
                part = (flight.fragment, self.count, f.first, f.last) if self.count > 1 else None
                w.teachers.load(peer, decoded[peer], snapshots[peer].step, part)

    def _decode(self, snap: Snapshot, layout: RowLayout, dtype: torch.dtype, codec: Optional[Codec] = None,
                wire: Optional[torch.dtype] = None) -> torch.Tensor:
        return (codec or self.codec).decode(snap.flat, layout, wire or self.wire, dtype)

    def _outer_step(self, flight: Flight, snapshots: dict[int, Snapshot]) -> None:
        """diloco, average: every group continues from the new outer state (its inner optimizer state stays its own,
        as in DiLoCo and PeriodicModelAverager); before step 0 from group 0's, as DDP starts from rank 0's."""
        assert self.outer is not None
        i = flight.fragment
        codec, wire = (self.codec, self.outer.dtype) if self.outer.started[i] else (self.raw, torch.float32)
        layout = self.fragments[0][i].layout
        state = self.outer.update(i, [self._decode(snapshots[g], layout, torch.float32, codec, wire)
                                      for g in sorted(snapshots)])
        for g, w in self.workers.items():
            f = self.fragments[g][i]
            w.flattener.load(w.model, state, f.first, f.last)

    # --- bytes ------------------------------------------------------------------------------------------------------
    def _count_launch(self, payloads: dict[int, torch.Tensor], sizes: list[int]) -> None:
        if self.filesystem:
            for g in self.workers:
                if g in self.transport.writes:
                    self.traffic[g][0] += payloads[g].numel()
            return
        per_rank = rank_traffic(sizes, self.shards)
        ranks = self.topo.replicas if self.topo.simulated else 1  # simulated: every rank of the group
        for g in self.workers:
            self.traffic[g][0] += per_rank * ranks

    def _count_landing(self, snapshots: dict[int, Snapshot], fragment: int) -> None:
        for g, w in self.workers.items():
            if self.filesystem:
                reads = self.transport.shards is not None or self.topo.is_group_leader(g)
                got = sum(s.flat.numel() for p, s in snapshots.items() if p != g) if reads else 0
            else:
                sizes = self.sizes[fragment] if self.outer is None else [s.flat.numel() for s in snapshots.values()]
                got = rank_traffic(sizes, self.shards) * (self.topo.replicas if self.topo.simulated else 1)
            self.traffic[g][1] += got

    def _log(self, flight: Flight) -> None:
        """This rank's bytes of one exchange (per peer for the collective: the all-gather's piece)."""
        where = ""
        if self.count > 1 or flight.lands != flight.launched:
            where = f" (fragment {flight.fragment} of {self.count}, landed before step {flight.lands})"
        if isinstance(self.transport, CollectiveExchange):
            piece = rank_traffic(flight.sizes, self.shards) // max(self.topo.groups - 1, 1)
            log.info("exchange at step %d: sent %d bytes to each of %d peer group(s), received %d bytes%s",
                     flight.launched, piece, self.topo.groups - 1, piece * (self.topo.groups - 1), where)
        elif isinstance(self.transport, FilesystemExchange):
            written, read = self.transport.traffic
            log.info("exchange at step %d: wrote %d snapshot bytes to the exchange directory, read %d%s",
                     flight.launched, written, read, where)

    def take_traffic(self) -> dict[int, tuple[int, int]]:
        """Bytes sent and received per local group since the last call."""
        out = {g: (s, r) for g, (s, r) in self.traffic.items()}
        self.traffic = {g: [0, 0] for g in self.workers}
        return out

    # --- checkpoints ------------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """The exchanges still in flight, waited for: a resumed run lands the same bytes at the same step."""
        return {"flights": [
            {"launched": f.launched, "lands": f.lands, "fragment": f.fragment, "sizes": f.sizes,
             "snapshots": {g: {"step": s.step, "flat": s.flat.cpu()} for g, s in f.handle.wait().items()}}
            for f in self.flights]}

    def load_state_dict(self, state: dict) -> None:
        device = self.topo.device
        self.flights = [Flight(f["launched"], f["lands"], f["fragment"],
                               Done({int(g): Snapshot(int(g), s["step"], s["flat"].to(device))
                                     for g, s in f["snapshots"].items()}), list(f["sizes"]))
                        for f in state["flights"]]

    def close(self) -> None:
        self.transport.close()  # the filesystem exchange finishes its pending snapshot write: peers may still read it
