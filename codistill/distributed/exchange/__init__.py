"""Transports that move group snapshots between groups (see base.Exchange)."""

from codistill.distributed.exchange.base import Exchange, Snapshot
from codistill.distributed.exchange.collective import CollectiveExchange
from codistill.distributed.exchange.filesystem import ExchangeWriteError, FilesystemExchange
from codistill.distributed.exchange.local import LocalExchange

__all__ = ["CollectiveExchange", "Exchange", "ExchangeWriteError", "FilesystemExchange", "LocalExchange", "Snapshot"]
