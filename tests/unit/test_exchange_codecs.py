"""Snapshot codecs, fragments and the delayed exchange in simulated mode (codistill/distributed/exchange/,
codistill/engine/exchanging.py)."""

import json
from pathlib import Path

import pytest
import torch

from codistill.distributed.exchange.codecs import Codec, RowLayout
from codistill.distributed.exchange.fragments import FragmentError, due, split
from tests.helpers import make_trainer, train_for

ENTRIES = [("conv.weight", torch.Size([8, 4, 3, 3]), 288), ("conv.bias", torch.Size([8]), 8),
           ("fc.weight", torch.Size([64, 32]), 2048), ("fc.bias", torch.Size([64]), 64),
           ("norm.running_mean", torch.Size([64]), 64), ("norm.num_batches_tracked", torch.Size([]), 1)]


def rows_of(flat: torch.Tensor, layout: RowLayout) -> torch.Tensor:
    """Each element's row maximum |x| (the scale the codec derives)."""
    out = torch.empty_like(flat)
    for offset, rows, cols in layout.blocks:
        x = flat[offset : offset + rows * cols].view(rows, cols)
        out[offset : offset + rows * cols] = x.abs().amax(1, keepdim=True).expand(rows, cols).reshape(-1)
    return out


@pytest.mark.parametrize("name", ["none", "bf16", "int8", "fp8"])
def test_codecs_round_trip_within_the_format_bound(name: str) -> None:
    torch.manual_seed(0)
    layout = RowLayout.of(ENTRIES)
    # rows of very different magnitudes: a shared scale would crush the small ones
    flat = torch.randn(layout.numel) * torch.logspace(-4, 3, layout.numel)[torch.randperm(layout.numel)]
    flat[-1] = 1234.0  # a counter, alone in its row
    codec = Codec(name)
    payload = codec.encode(flat, layout)
    assert payload.dtype == torch.uint8 and payload.numel() == codec.payload_bytes(layout, torch.float32)
    back = codec.decode(payload, layout, torch.float32, torch.float32)
    err, amax = (back - flat).abs(), rows_of(flat, layout)
    if name == "none":
        assert torch.equal(back, flat)
    elif name == "bf16":
        assert torch.equal(back, flat.to(torch.bfloat16).float())
    elif name == "int8":
        assert (err <= amax / 254 * (1 + 1e-5)).all()
        assert payload.numel() == layout.numel + 4 * layout.rows
    else:  # e4m3: 3 mantissa bits (relative 2^-4), subnormal spacing 2^-9 of the scale below 2^-6
        assert (err <= torch.maximum(flat.abs() / 16, amax / 448 * 2**-10) * (1 + 1e-5)).all()
    assert back[-1] == pytest.approx(1234.0, rel=1e-6 if name in ("none", "int8") else 2**-4)
    # decoded into bfloat16 teacher copies: the same values, rounded once
    assert torch.equal(codec.decode(payload, layout, torch.float32, torch.bfloat16), back.to(torch.bfloat16))


def test_int8_moves_at_most_027_of_float32_bytes_scales_included() -> None:
    entries = [(f"l{i}.weight", torch.Size([1024, 1024]), 1024 * 1024) for i in range(4)]
    entries += [(f"l{i}.bias", torch.Size([1024]), 1024) for i in range(4)]
    layout = RowLayout.of(entries)
    full = Codec("none").payload_bytes(layout, torch.float32)
    for name in ("int8", "fp8"):
        assert Codec(name).payload_bytes(layout, torch.float32) <= 0.27 * full
    assert Codec("bf16").payload_bytes(layout, torch.float32) == full // 2


def test_fragments_cut_between_modules_balanced_by_bytes() -> None:
    entries = [(f"blocks.{i}.{p}", torch.Size([100 if p == "weight" else 10]), 100 if p == "weight" else 10)
               for i in range(8) for p in ("weight", "bias")]
    frags = split(entries, 4)
    assert [f.first for f in frags] == [0, 4, 8, 12] and frags[-1].last == len(entries)  # two whole blocks each
    assert [f.stop - f.start for f in frags] == [220] * 4 and frags[-1].stop == 880
    with pytest.raises(FragmentError, match="only 8 modules"):
        split(entries, 9)


def test_fragment_schedule_staggers_slices_over_k() -> None:
    launched = {s: due(s, burn_in=3, every=8, fragments=4) for s in range(20)}
    assert launched[3] == [0, 1, 2, 3]  # the first exchange moves every fragment
    assert {s: f for s, f in launched.items() if f and s != 3} == {4: [2], 6: [3], 8: [0], 10: [1], 12: [2], 14: [3],
                                                                   16: [0], 18: [1]}
    assert due(16, burn_in=3, every=8, fragments=1) == [0] and due(12, burn_in=3, every=8, fragments=1) == []


SHORT = ["distill.burn_in_steps=2", "distill.exchange_every=4", "trainer.max_steps=12", "trainer.log_every=4",
         "logger.plots=false", "model.hidden=[32,32]"]


def records(run_dir: Path) -> list[dict]:
    return [r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if r.get("group") == 0]


@pytest.mark.parametrize("codec", ["none", "bf16", "int8", "fp8"])
def test_a_run_with_each_codec_trains_and_logs_its_bytes(tmp_path: Path, codec: str) -> None:
    trainer = make_trainer([*SHORT, f"distill.snapshot_codec={codec}", "topology.replicas=2"], tmp_path)
    trainer.fit()
    trainer.close()
    rec = records(tmp_path)
    assert rec[-1]["train/distill"] > 0 and all(r["train/loss"] == r["train/loss"] for r in rec)
    numel = trainer.workers[0].flattener.numel
    rows = RowLayout.of(trainer.workers[0].flattener.entries).rows
    payload = {"none": 4 * numel, "bf16": 2 * numel, "int8": numel + 4 * rows, "fp8": numel + 4 * rows}[codec]
    # steps 0-3: the exchange before step 2 (burn-in); 4-7: before step 4; 8-11: before step 8. Under torchrun each
    # of the group's 2 replicas all-gathers the payload with its (G - 1) = 1 peer.
    assert [r["exchange/bytes_sent"] for r in rec] == [2 * payload] * 3
    assert [r["exchange/bytes_received"] for r in rec] == [2 * payload] * 3


def test_delayed_fragments_land_tau_steps_later_and_report_their_staleness(tmp_path: Path) -> None:
    trainer = make_trainer([*SHORT, "distill.exchange_delay=3", "distill.fragments=2", "trainer.max_steps=13"],
                           tmp_path)
    taken, landed = {}, []
    launch, land = trainer.exchange.launch, trainer.exchange._land

    def recording_launch(step: int, fragment: int, lands: int) -> None:
        taken[(step, fragment)] = trainer.workers[1].flattener.flatten(trainer.workers[1].model).clone()
        launch(step, fragment, lands)

    def recording_land(flight) -> None:
        landed.append((flight.launched, flight.fragment, flight.lands))
        land(flight)

    trainer.exchange.launch, trainer.exchange._land = recording_launch, recording_land
    trainer.fit()
    trainer.close()
    # burn-in at 2 (both fragments), then fragment 0 at steps = 0 mod 4, fragment 1 at 2 mod 4, each 3 steps later
    assert landed == [(2, 0, 5), (2, 1, 5), (4, 0, 7), (6, 1, 9), (8, 0, 11)]
    copies = trainer.workers[0].teachers
    assert copies.fragment_steps[1] == [8, 6] and copies.source_step[1] == 6
    held = copies.flattener[1].flatten(copies.models[1])
    f0, f1 = trainer.exchange.fragments[1]
    assert torch.equal(held[f0.start : f0.stop], taken[(8, 0)][f0.start : f0.stop])  # each slice from its own step
    assert torch.equal(held[f1.start : f1.stop], taken[(6, 1)][f1.start : f1.stop])
    # after steps 4, 8, 12, 13: nothing landed yet (-1), then the age of the oldest slice (taken at 2, 6, 6)
    assert [r["staleness"] for r in records(tmp_path)] == [-1, 6, 6, 7]


def test_resume_with_a_snapshot_in_flight_is_bit_identical(tmp_path: Path) -> None:
    """The checkpoint at step 10 holds the exchange launched before step 8 (fragment 0, lands before step 11)."""
    args = [*SHORT, "distill.exchange_delay=3", "distill.fragments=2", "distill.snapshot_codec=int8",
            "trainer.checkpoint_every=10", "topology.replicas=2", "model.dropout=0.1"]

    straight = train_for(tmp_path / "straight", 16, args)
    first = train_for(tmp_path / "resumed", 10, args)
    assert [f.launched for f in first.exchange.flights] == [8]
    assert (tmp_path / "resumed" / "checkpoints" / "step000000010" / "exchange-rank0.pt").is_file()
    resumed = train_for(tmp_path / "resumed", 16, args)
    assert resumed.start_step == 10
    for g in (0, 1):
        a, b = straight.workers[g], resumed.workers[g]
        assert all(torch.equal(x, y) for x, y in zip(a.model.state_dict().values(), b.model.state_dict().values()))
        assert a.teachers.state_dict()[1 - g]["fragment_steps"] == b.teachers.state_dict()[1 - g]["fragment_steps"]
        assert torch.equal(a.teachers.state_dict()[1 - g]["flat"], b.teachers.state_dict()[1 - g]["flat"])


def test_diloco_pseudo_gradients_travel_in_the_codec(tmp_path: Path) -> None:
    """The first outer exchange (group 0's initial state) travels unencoded; every later pseudo-gradient in int8."""
    trainer = make_trainer([*SHORT, "distill=diloco", "distill.burn_in_steps=0", "distill.snapshot_codec=int8"],
                           tmp_path)
    trainer.fit()
    trainer.close()
    w = trainer.workers[0]
    numel, rows = w.flattener.numel, RowLayout.of(w.flattener.entries).rows
    rec = records(tmp_path)
    assert all(r["train/loss"] == r["train/loss"] for r in rec)
    # outer steps before steps 0 (float32 state), 4, 8: records at 4 (0 only), 8 (4), 12 (8)
    assert [r["exchange/bytes_sent"] for r in rec] == [4 * numel, numel + 4 * rows, numel + 4 * rows]
    assert trainer.outer.started == [True] and torch.isfinite(trainer.outer.params[0]).all()
