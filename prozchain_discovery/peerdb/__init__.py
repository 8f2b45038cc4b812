"""The peer database: an addrman-style new/tried table (``core``) and its sqlite store (``store``)."""

from .core import PeerDatabase, PeerDbInvariantError, PeerEntry, PeerSource, PeerTableParams
from .store import (
    AsyncPeerStore,
    FlushSchedule,
    PeerStore,
    PeerStoreCorrupt,
    StoreWriteError,
    open_or_reset,
)

__all__ = [
    "PeerDatabase",
    "PeerTableParams",
    "PeerDbInvariantError",
    "PeerEntry",
    "PeerSource",
    "AsyncPeerStore",
    "PeerStore",
    "PeerStoreCorrupt",
    "open_or_reset",
    "FlushSchedule",
    "StoreWriteError",
]
