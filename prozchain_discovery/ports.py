"""The interfaces the composition root hands to components.

A component names what it needs from another one by one of these :class:`typing.Protocol`
types and receives the object in its constructor; it never imports the other component's
module. ``import-linter`` (see ``.importlinter``) holds this: components are siblings that
depend only on this module, :mod:`.events` and the sans-IO cores below them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol

import multiaddr
from libp2p.peer.id import ID

from .peerdb import PeerDatabase, PeerSource
from .records import RecordBatch, VerifiedRecord, VerifiedRecordCache

__all__ = ["ConnectedPeer", "DialTarget", "Connections", "Dialing", "PeerBookView", "DialTransport"]

DialTarget = tuple[ID, list[multiaddr.Multiaddr], PeerSource]


@dataclass
class ConnectedPeer:
    peer_id: ID
    source: PeerSource
    outbound: bool
    since: float
    addr: str


class Connections(Protocol):
    """Who we are connected to, and how we came to be."""

    def __contains__(self, peer_id: object) -> bool: ...
    def __len__(self) -> int: ...
    def get(self, peer_id: ID) -> ConnectedPeer | None: ...
    def peers(self) -> list[ConnectedPeer]: ...
    def outbound_count(self) -> int: ...
    def addr_of(self, peer_id: ID) -> multiaddr.Multiaddr | None: ...
    def note_dialed(self, peer_id: ID, source: PeerSource, addr: str) -> None: ...
    def note_intent(self, peer_id: ID, source: PeerSource) -> None: ...
    async def wait_changed(self, timeout: float) -> None: ...


class Dialing(Protocol):
    """Outbound connections, with backoff and hedging (dialer/dialer.py)."""

    async def dial(
        self, peer_id: ID, addrs: Iterable[multiaddr.Multiaddr], source: PeerSource,
        *, timeout: float | None = None,
    ) -> bool: ...
    async def dial_many(self, targets: Iterable[DialTarget], until: int | None = None) -> int: ...
    async def disconnect(self, peer_id: ID) -> None: ...
    def in_backoff(self, peer_id: ID) -> bool: ...
    def retry_in(self, peer_id: ID) -> float: ...
    def keep_trying(self, peer_id: ID) -> None: ...
    def may_contact(self, addrs: list[multiaddr.Multiaddr], what: str) -> bool: ...
    async def identify_bare(self, addrs: list[multiaddr.Multiaddr]) -> dict[ID, list[multiaddr.Multiaddr]]: ...


class PeerBookView(Protocol):
    """The peer database with its store and verified-record cache (peerbook.py)."""

    db: PeerDatabase
    record_cache: VerifiedRecordCache

    def accept_records(self, records: list[VerifiedRecord], source: PeerSource, from_peer: ID) -> int: ...
    def settle_batch(
        self, batch: RecordBatch, source: PeerSource, from_peer: ID, via: str
    ) -> list[VerifiedRecord]: ...
    def batch_targets(self, batch: RecordBatch, source: PeerSource, from_peer: ID) -> Iterator[DialTarget]: ...
    def pick_for_dial(
        self, n: int, exclude: set[ID], groups: set[str] | None, skip: Callable[[ID], bool]
    ) -> list[DialTarget]: ...
    def outbound_groups(self) -> set[str]: ...
    def is_wrong_network(self, peer_id: ID) -> bool: ...


class DialTransport(Protocol):
    """A way to reach a peer that ``host.connect`` does not have (e.g. ``/p2p-circuit``)."""

    def handles(self, addr: multiaddr.Multiaddr) -> bool: ...
    async def connect(self, peer_id: ID, addrs: list[multiaddr.Multiaddr]) -> None: ...
