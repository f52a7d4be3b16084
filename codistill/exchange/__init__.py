"""Transports that move group snapshots between groups (see base.Exchange)."""

from codistill.exchange.base import Exchange, Snapshot
from codistill.exchange.collective import CollectiveExchange
from codistill.exchange.filesystem import ExchangeWriteError, FilesystemExchange
from codistill.exchange.local import LocalExchange

__all__ = ["CollectiveExchange", "Exchange", "ExchangeWriteError", "FilesystemExchange", "LocalExchange", "Snapshot"]
