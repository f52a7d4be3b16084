"""Streaming fragments (distill.fragments=F): a flattened state cut into F slices exchanged on staggered steps.

Cuts fall between modules (a Linear's weight and bias stay together), chosen so the fragments' bytes are as even as
the modules allow. After the first exchange (at the end of burn-in, every fragment at once) fragment i travels before
the steps s with s mod K = i K / F, so every K steps each fragment moves once: peak bytes per exchange fall by about
F, and every layer of a teacher copy is at most K steps stale (plus distill.exchange_delay).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from codistill.distributed.exchange.codecs import RowLayout

Entries = Sequence[tuple[str, torch.Size, int]]


class FragmentError(ValueError):
    """The model cannot be cut into that many fragments (fewer modules than fragments)."""


@dataclass(frozen=True)
class Fragment:
    """Entries [first, last) of a flattener: the flat slice [start, stop) and its rows."""

    first: int
    last: int
    start: int
    stop: int
    layout: RowLayout


def _module(name: str) -> str:
    return name.rsplit(".", 1)[0] if "." in name else ""


def split(entries: Entries, fragments: int) -> list[Fragment]:
    """Cut `entries` (StateFlattener.entries) into `fragments` contiguous runs of whole modules, balanced by numel."""
    units: list[tuple[int, int]] = []  # (first entry, numel) per run of one module's entries
    for i, (name, _, n) in enumerate(entries):
        if units and _module(entries[i - 1][0]) == _module(name):
            units[-1] = (units[-1][0], units[-1][1] + n)
        else:
            units.append((i, n))
    if len(units) < fragments:
        raise FragmentError(f"distill.fragments={fragments}: the model has only {len(units)} modules to cut between")
    prefix = [0]
    for _, n in units:
        prefix.append(prefix[-1] + n)
    total, cuts = prefix[-1], [0]
    for k in range(1, fragments):
        lo, hi = cuts[-1] + 1, len(units) - (fragments - k)  # leave at least one unit for each later fragment
        cuts.append(min(range(lo, hi + 1), key=lambda u: abs(prefix[u] - k * total / fragments)))
    cuts.append(len(units))
    out = []
    for a, b in zip(cuts, cuts[1:]):
        first, last = units[a][0], units[b][0] if b < len(units) else len(entries)
        out.append(Fragment(first, last, prefix[a], prefix[b], RowLayout.of(entries[first:last])))
    return out


def due(step: int, burn_in: int, every: int, fragments: int) -> list[int]:
    """The fragments launched before `step` of a run that exchanges (distilling) from `burn_in` on."""
    if step == burn_in:
        return list(range(fragments))
    if step < burn_in:
        return []
    return [i for i in range(fragments) if step % every == i * every // fragments]
