"""The peer database: an addrman-style new/tried table (``core``) and its sqlite store (``store``)."""

from .core import PeerDatabase, PeerDbInvariantError, PeerEntry, PeerSource, PeerTableParams
from .store import (
    AsyncPeerStore,
    FlushSchedule,
    LoadResult,
    PeerStore,
    PeerStoreCorrupt,
    PeerStoreError,
    PeerStoreUnavailable,
    StoreWriteError,
    open_or_reset,
    pending_changes,
)

__all__ = [
    "PeerDatabase",
    "PeerTableParams",
    "PeerDbInvariantError",
    "PeerEntry",
    "PeerSource",
    "AsyncPeerStore",
    "PeerStore",
    "PeerStoreError",
    "PeerStoreCorrupt",
    "PeerStoreUnavailable",
    "open_or_reset",
    "FlushSchedule",
    "LoadResult",
    "StoreWriteError",
    "pending_changes",
]
