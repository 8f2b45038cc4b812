"""Simultaneous connect: when two peers dial each other at once, both keep the same connection.

py-libp2p 0.8.1 keeps both connections of a simultaneous dial (two handshakes, two Yamux
sessions, identify twice) until a later connection makes its per-peer trim close one — a
choice each side makes on its own (fewest streams, oldest), so each may close a different one
and the pair ends with none. libp2p's rule for this is one both sides compute alike: here, the
connection **initiated by the peer with the smaller peer id** (raw bytes) stays; every other
direct connection to that peer is closed, by whichever side sees it first (closing it closes it
for both).

The same rule holds for relayed connections while the pair has no direct one (the losing
circuit is retired, not cut: closed once it carries no stream, 2-30 s later): two peers that
learn each other's circuit address at once both dial through the relay, and with two circuits
each side has accepted one — each would drive DCUtR (holepunch/schedule.py ``drives``), and the
two sessions collide. Keeping the circuit the smaller id initiated leaves exactly one side (the
larger id, which accepted it) the driver. A relayed connection beside a direct one is the hole
puncher's business (it closes the relay leg after a punch), not ours.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import trio
from libp2p.abc import IHost
from libp2p.peer.id import ID

from .events import DuplicateConnection, EventBus, Wakeup
from .metrics import Metrics
from .net.sockets import initiated_locally, is_open_conn, is_relayed_conn

__all__ = ["SimultaneousConnect", "keeper"]

log = logging.getLogger("prozchain_discovery.connections")

MAX_PENDING = 1024
RETIRE_GRACE = 2.0  # a losing circuit is closed no sooner than this ...
RETIRE_MAX = 30.0  # ... once it carries no stream, or after this at the latest
RETIRE_POLL = 0.5


def keeper(local_id: ID, peer_id: ID, conns: Sequence[Any]) -> Any:
    """The one of ``conns`` (direct connections to ``peer_id``) that both sides keep: one the
    smaller peer id initiated; among several such (rare: one side dialed twice), the oldest."""
    we_initiate = local_id.to_bytes() < peer_id.to_bytes()
    preferred = [c for c in conns if initiated_locally(c) == we_initiate] or list(conns)
    return min(preferred, key=lambda c: getattr(c, "_created_at", 0.0))


class SimultaneousConnect:
    """Closes the losing connection of each simultaneous dial (module docstring)."""

    def __init__(self, host: IHost, *, bus: EventBus, metrics: Metrics) -> None:
        self.host = host
        self.metrics = metrics
        self.local_id = host.get_id()
        self._pending: set[ID] = set()
        self._retiring: set[int] = set()  # id() of relayed connections waiting to be closed
        self._nursery: trio.Nursery | None = None
        self._wake = Wakeup()
        bus.subscribe(DuplicateConnection, self._on_duplicate)

    def _on_duplicate(self, ev: DuplicateConnection) -> None:
        if len(self._pending) < MAX_PENDING:
            self._pending.add(ev.peer_id)
            self._wake.set()

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            while True:
                await self._wake.wait_until(None)
                while self._pending:
                    await self.resolve(self._pending.pop())

    async def resolve(self, peer_id: ID) -> int:
        """Close ``peer_id``'s direct connections but the keeper (or, with no direct one, retire
        its relayed connections but the keeper); returns how many it closed or retires."""
        open_conns = [c for c in self.host.get_network().get_connections(peer_id) if is_open_conn(c)]
        conns = [c for c in open_conns if not is_relayed_conn(c)] or open_conns
        if len(conns) < 2:
            return 0
        keep = keeper(self.local_id, peer_id, conns)
        if is_relayed_conn(keep):
            losers = [c for c in conns if c is not keep and id(c) not in self._retiring]
            for conn in losers:
                self._retiring.add(id(conn))
                self.metrics.inc("simultaneous_connects_resolved")
                if self._nursery is not None:
                    self._nursery.start_soon(self._retire, peer_id, conn)
            return len(losers)
        closed = 0
        for conn in conns:
            if conn is keep:
                continue
            closed += 1
            self.metrics.inc("simultaneous_connects_resolved")
            log.debug("simultaneous connect with %s: closing the %s%s connection, keeping the %s one",
                      peer_id, "outbound" if initiated_locally(conn) else "inbound",
                      " relayed" if is_relayed_conn(conn) else "",
                      "outbound" if initiated_locally(keep) else "inbound")
            await _close(conn, peer_id)
        return closed

    async def _retire(self, peer_id: ID, conn: Any) -> None:
        """Close a losing relayed connection once it carries no stream (after RETIRE_GRACE, at
        most RETIRE_MAX): the peer may have dialed it to run a request at once (js-libp2p
        dials a second circuit beside one it already has, then opens PEX on it), and a
        relayed connection costs the relay a slot, not us a socket, so waiting is cheap."""
        try:
            await trio.sleep(RETIRE_GRACE)
            with trio.move_on_after(RETIRE_MAX - RETIRE_GRACE):
                while is_open_conn(conn) and getattr(conn, "streams", None):
                    await trio.sleep(RETIRE_POLL)
            if not is_open_conn(conn):
                return
            log.debug("simultaneous relayed connect with %s: closing the %s circuit", peer_id,
                      "outbound" if initiated_locally(conn) else "inbound")
            await _close(conn, peer_id)
        finally:
            self._retiring.discard(id(conn))


async def _close(conn: Any, peer_id: ID) -> None:
    with trio.move_on_after(2):
        try:
            await conn.close()
        except trio.Cancelled:
            raise
        except Exception as exc:  # already closed by the peer
            log.debug("closing a duplicate connection to %s: %s", peer_id, exc)
