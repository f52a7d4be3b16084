"""Simulated mode: every group lives in this process, so an exchange is a copy."""

from __future__ import annotations

import torch

from codistill.exchange.base import Snapshot


class LocalExchange:
    def exchange(self, step: int, local: dict[int, torch.Tensor]) -> dict[int, Snapshot]:
        return {g: Snapshot(g, step, flat.clone()) for g, flat in local.items()}
