"""Simultaneous connect: when two peers dial each other at once, both keep the same connection.

py-libp2p 0.8.1 keeps both connections of a simultaneous dial (two handshakes, two Yamux
sessions, identify twice) until a later connection makes its per-peer trim close one — a
choice each side makes on its own (fewest streams, oldest), so each may close a different one
and the pair ends with none. libp2p's rule for this is one both sides compute alike: here, the
connection **initiated by the peer with the smaller peer id** (raw bytes) stays; every other
direct connection to that peer is closed, by whichever side sees it first (closing it closes it
for both).

The same rule holds for relayed connections while the pair has no direct one: two peers that
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
        self._wake = Wakeup()
        bus.subscribe(DuplicateConnection, self._on_duplicate)

    def _on_duplicate(self, ev: DuplicateConnection) -> None:
        if len(self._pending) < MAX_PENDING:
            self._pending.add(ev.peer_id)
            self._wake.set()

    async def run(self) -> None:
        while True:
            await self._wake.wait_until(None)
            while self._pending:
                await self.resolve(self._pending.pop())

    async def resolve(self, peer_id: ID) -> int:
        """Close ``peer_id``'s direct connections but the keeper (or, with no direct one, its
        relayed connections but the keeper); returns how many closed."""
        open_conns = [c for c in self.host.get_network().get_connections(peer_id) if is_open_conn(c)]
        conns = [c for c in open_conns if not is_relayed_conn(c)] or open_conns
        if len(conns) < 2:
            return 0
        keep = keeper(self.local_id, peer_id, conns)
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
            with trio.move_on_after(2):
                try:
                    await conn.close()
                except trio.Cancelled:
                    raise
                except Exception as exc:
                    log.debug("closing a duplicate connection to %s: %s", peer_id, exc)
        return closed
