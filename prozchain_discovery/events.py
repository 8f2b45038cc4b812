"""Typed events between components, and the two small primitives they travel on.

Components never call into each other's internals: the composition root (``service.py``)
hands each one an :class:`EventBus`, and a component that learns something publishes an event;
the components that care subscribe a *synchronous* callback. Callbacks only update in-memory
state or wake a trio task (:class:`Wakeup`) — they never block and never queue, so a burst of
events costs a burst of cheap calls, not an unbounded backlog (go-libp2p's event bus delivers on
buffered channels and drops nothing by blocking the emitter; ours runs the subscriber inline,
which is the same guarantee without the channel).

The events follow go-libp2p's names where one exists: ``EvtPeerConnectednessChanged`` →
:class:`PeerConnected` / :class:`PeerDisconnected`, ``EvtLocalAddressesUpdated`` →
:class:`LocalAddressesChanged`, ``EvtLocalReachabilityChanged`` → :class:`NatStatusChanged`
(its ``reachability``, published by the NAT component, nat/service.py).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import trio

from .nat.status import NatStatus, Reachability

if TYPE_CHECKING:  # annotations only: ``nat`` (via nat/portmap.py's Wakeup) runs without libp2p
    from libp2p.peer.id import ID
    from multiaddr import Multiaddr

__all__ = [
    "EventBus",
    "Wakeup",
    "PeerConnected",
    "PeerDisconnected",
    "ConnectivityRestored",
    "PeersNeeded",
    "RecordsLearned",
    "ObservedAddress",
    "ListenAddressesChanged",
    "LocalAddressesChanged",
    "NatStatusChanged",
    "ReachabilityConfirmed",
    "RelayAddressesChanged",
    "WrongNetwork",
    "Misbehaved",
    "DuplicateConnection",
]

E = TypeVar("E")


@dataclass(frozen=True, slots=True)
class PeerConnected:
    """The first connection to ``peer_id`` opened (``addr``: its remote transport address)."""

    peer_id: ID
    outbound: bool
    source: str  # a PeerSource value
    addr: Multiaddr | None


@dataclass(frozen=True, slots=True)
class PeerDisconnected:
    """The last connection to ``peer_id`` closed; ``remaining`` peers are still connected."""

    peer_id: ID
    remaining: int


@dataclass(frozen=True, slots=True)
class DuplicateConnection:
    """A second connection of the same kind (direct, or relayed) to an already connected
    ``peer_id`` opened (both sides dialed at once): one of the two must go, the same one on both
    sides."""

    peer_id: ID


@dataclass(frozen=True, slots=True)
class ConnectivityRestored:
    """The connected count went from 0 to at least 1: given-up dial targets deserve a retry."""


@dataclass(frozen=True, slots=True)
class PeersNeeded:
    """Below the minimum (a peer left, or new addresses arrived): the dialing loops should look."""


@dataclass(frozen=True, slots=True)
class RecordsLearned:
    """``count`` new or newer records entered the peer book from ``via``."""

    count: int
    via: str


@dataclass(frozen=True, slots=True)
class ObservedAddress:
    """``reporter`` told us it sees us at ``addr`` (bootstrap's observed_addr, identify)."""

    addr: Multiaddr
    reporter: ID


@dataclass(frozen=True, slots=True)
class ListenAddressesChanged:
    """The host started or stopped listening somewhere (the swarm's listen notifications)."""


@dataclass(frozen=True, slots=True)
class LocalAddressesChanged:
    """The addresses we advertise changed; our signed record now carries ``addrs``."""

    addrs: tuple[Multiaddr, ...]


@dataclass(frozen=True, slots=True)
class NatStatusChanged:
    """The NAT component's view changed (classification, port mappings, reachability)."""

    status: NatStatus


@dataclass(frozen=True, slots=True)
class RelayAddressesChanged:
    """The relay client's ``/p2p-circuit`` addresses (empty: none, e.g. we became Public).

    go-libp2p's autorelay swaps the host's addresses the same way; here the local-addresses
    component advertises them beside the direct ones and re-signs our record.
    """

    addrs: tuple[Multiaddr, ...]


@dataclass(frozen=True, slots=True)
class ReachabilityConfirmed:
    """AutoNAT v2 dial-backs (nat/autonat.py) changed what we know; the NAT component merges it
    into :class:`NatStatusChanged` (a dial-back verdict wins over STUN and port-mapping guesses).

    ``reachability`` is UNKNOWN until some address is confirmed; ``evidence`` says which
    servers dialed which address, and when; ``reachable`` lists the confirmed addresses.
    """

    reachability: Reachability
    evidence: tuple[str, ...]
    reachable: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class WrongNetwork:
    """``peer_id`` answered for another network id: never dial or serve it again this run."""

    peer_id: ID
    network_id: str


@dataclass(frozen=True, slots=True)
class Misbehaved:
    """``peer_id`` broke a rule (``reason``); ``severity`` scales the penalty, ban at >= 3."""

    peer_id: ID
    reason: str
    severity: int = 1


class EventBus:
    """Synchronous publish/subscribe by event type. Subscribers must be quick and non-blocking."""

    def __init__(self) -> None:
        self._subscribers: dict[type, list[Callable[[Any], object]]] = defaultdict(list)
        self.published: dict[str, int] = defaultdict(int)

    def subscribe(self, kind: type[E], callback: Callable[[E], object]) -> None:
        self._subscribers[kind].append(callback)

    def publish(self, event: object) -> None:
        self.published[type(event).__name__] += 1
        for callback in self._subscribers.get(type(event), ()):
            callback(event)


class Wakeup:
    """A level-triggered wake-up for one waiting task.

    ``set()`` during the task's work is not lost: the next :meth:`wait` returns at once. (A
    ``trio.Event`` replaced *after* the work would drop a signal that arrived during it, and the
    task would sleep until its next poll.)
    """

    __slots__ = ("_event", "_pending")

    def __init__(self) -> None:
        self._event = trio.Event()
        self._pending = False

    def set(self) -> None:
        self._pending = True
        self._event.set()

    async def wait(self, timeout: float = math.inf) -> bool:
        """Sleep until set or ``timeout`` seconds; True if woken by :meth:`set`."""
        return await self.wait_until(trio.current_time() + max(0.0, timeout))

    async def wait_until(self, deadline: float | None) -> bool:
        """As :meth:`wait`, to an absolute trio time (None: no deadline). The deadline goes to
        trio as it is: turned into a timeout and back it could round to a moment early, and a
        core asked at that moment would not yet be due."""
        if not self._pending:
            with trio.move_on_at(math.inf if deadline is None else deadline):
                await self._event.wait()
        woke = self._pending
        self._pending = False
        self._event = trio.Event()
        return woke
