"""The connection tracker: which peers we are connected to, which way, and how we found them.

It is the swarm notifee. Each first connection to a peer becomes a :class:`~.ports.ConnectedPeer`
labelled with the source the dialer declared before dialing (:meth:`note_intent`), ``static`` for
a configured static peer, or ``inbound``; each last disconnection removes it. It publishes
:class:`~.events.PeerConnected` / :class:`~.events.PeerDisconnected`, and
:class:`~.events.ConnectivityRestored` when the count leaves zero, :class:`~.events.PeersNeeded`
when it drops below the minimum.
"""

from __future__ import annotations

import logging
from typing import Any

import multiaddr
import trio
from libp2p.abc import IHost, INetConn, INetStream, INetwork, INotifee
from libp2p.peer.id import ID

from .addrs import parse_multiaddr
from .events import (
    ConnectivityRestored,
    DuplicateConnection,
    EventBus,
    ListenAddressesChanged,
    PeerConnected,
    PeerDisconnected,
    PeersNeeded,
)
from .expiring import ExpiringMap
from .metrics import Metrics
from .net.sockets import initiated_locally, is_open_conn
from .peerdb import PeerSource
from .ports import ConnectedPeer

__all__ = ["ConnectionTracker"]

_RELAYED = "/p2p-circuit"

log = logging.getLogger("prozchain_discovery.connections")

INTENT_TTL = 120.0  # a dial's declared source is kept this long for the connection it makes


class ConnectionTracker:
    def __init__(
        self, host: IHost, bus: EventBus, metrics: Metrics, *, min_peers: int, static_ids: set[ID]
    ) -> None:
        self.host = host
        self.bus = bus
        self.metrics = metrics
        self.min_peers = min_peers
        self.static_ids = static_ids
        self.connected: dict[ID, ConnectedPeer] = {}
        self._intents: ExpiringMap[ID, PeerSource] = ExpiringMap(INTENT_TTL, 4096)
        self.started_at = trio.current_time()
        self.joined_at: float | None = None  # when min_peers was first reached
        self._changed = trio.Event()
        self.notifee = _Notifee(self)

    # ---- the Connections interface ----------------------------------------------------------
    def __contains__(self, peer_id: object) -> bool:
        return peer_id in self.connected

    def __len__(self) -> int:
        return len(self.connected)

    def get(self, peer_id: ID) -> ConnectedPeer | None:
        return self.connected.get(peer_id)

    def peers(self) -> list[ConnectedPeer]:
        return list(self.connected.values())

    def outbound_count(self) -> int:
        return sum(1 for cp in self.connected.values() if cp.outbound)

    def addr_of(self, peer_id: ID) -> multiaddr.Multiaddr | None:
        cp = self.connected.get(peer_id)
        if cp is None or not cp.addr:
            return None
        try:
            return parse_multiaddr(cp.addr)
        except ValueError:
            return None

    def note_intent(self, peer_id: ID, source: PeerSource) -> None:
        """The dialer is about to dial ``peer_id`` for ``source``: label its connection so."""
        now = trio.current_time()
        self._intents.on_timer(now)
        if peer_id not in self._intents:
            self._intents.put(peer_id, source, now)

    def note_dialed(self, peer_id: ID, source: PeerSource, addr: str) -> None:
        """A dial for ``source`` succeeded (the connection may have been inbound first)."""
        cp = self.connected.get(peer_id)
        if cp is None:
            self._track(peer_id, source, True, addr)
            return
        cp.outbound = True
        if cp.source in (PeerSource.INBOUND, PeerSource.PEX):
            cp.source = source

    async def wait_changed(self, timeout: float) -> None:
        with trio.move_on_after(timeout):
            await self._changed.wait()

    async def wait_for(self, n: int) -> None:
        while len(self.connected) < n:
            await self._changed.wait()

    def adopt_existing(self) -> None:
        """Track connections that were open before we were mounted."""
        for peer_id in list(self.host.get_connected_peers()):
            self._track(peer_id, PeerSource.INBOUND, False, "")

    # ---- bookkeeping ------------------------------------------------------------------------
    def _track(self, peer_id: ID, source: PeerSource, outbound: bool, addr: str) -> None:
        if peer_id in self.connected:
            return
        now = trio.current_time()
        was_empty = not self.connected
        self.connected[peer_id] = ConnectedPeer(peer_id, source, outbound, now, addr)
        self.metrics.set_gauge("connected_peers", len(self.connected))
        self._signal()
        ma = None
        if addr:
            try:
                ma = parse_multiaddr(addr)
            except ValueError:
                ma = None
        self.bus.publish(PeerConnected(peer_id, outbound, source.value, ma))
        if was_empty:
            self.bus.publish(ConnectivityRestored())
        if self.joined_at is None and len(self.connected) >= self.min_peers:
            self.joined_at = now
            self.metrics.observe("join_seconds", now - self.started_at)
            log.info("joined: %d peers after %.3f s", len(self.connected), now - self.started_at)

    def _signal(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def on_connected(self, conn: INetConn) -> None:
        peer_id = conn.muxed_conn.peer_id
        outbound = initiated_locally(conn)
        source = self._intents.get(peer_id) or (PeerSource.PEX if outbound else PeerSource.INBOUND)
        if peer_id in self.static_ids:
            source = PeerSource.STATIC
        addr = self._addr_of(conn, peer_id)
        cp = self.connected.get(peer_id)
        if cp is not None and _RELAYED in cp.addr and addr and _RELAYED not in addr:
            cp.addr = addr  # a direct connection beside a relayed one (hole punching): show it
        elif cp is not None and addr and (_RELAYED not in addr or _RELAYED in cp.addr):
            # a second direct connection, or a second relayed one (both dialed through a relay
            # at once): one of the two must go, the same one on both sides
            self.bus.publish(DuplicateConnection(peer_id))
        self._track(peer_id, source, outbound, addr)

    def _addr_of(self, conn: INetConn, peer_id: ID) -> str:
        try:
            addrs = conn.get_transport_addresses()
            return str(addrs[0]) if addrs else ""
        except Exception as exc:  # a connection torn down while we look at it
            self.metrics.inc("notifee_errors", what="transport_addresses")
            log.debug("no transport address for %s: %s", peer_id, exc)
            return ""

    def on_disconnected(self, conn: INetConn) -> None:
        peer_id = conn.muxed_conn.peer_id
        if peer_id not in self.connected:
            return
        others = _other_open_connections(self.host, peer_id, conn)
        if others:
            # The peer stays (e.g. the relayed leg closed after a hole punch): name what is left,
            # a direct connection before a relayed one.
            addrs = [a for a in (self._addr_of(c, peer_id) for c in others) if a]
            if addrs:
                self.connected[peer_id].addr = min(addrs, key=lambda a: _RELAYED in a)
            return
        del self.connected[peer_id]
        self.metrics.set_gauge("connected_peers", len(self.connected))
        self._intents.pop(peer_id)
        self._signal()
        self.bus.publish(PeerDisconnected(peer_id, len(self.connected)))
        if len(self.connected) < self.min_peers:
            self.bus.publish(PeersNeeded())

    def status(self) -> dict[str, Any]:
        now = trio.current_time()
        by_source: dict[str, int] = {}
        for cp in self.connected.values():
            by_source[cp.source.value] = by_source.get(cp.source.value, 0) + 1
        return {
            "connected": len(self.connected),
            "outbound": self.outbound_count(),
            "min_peers": self.min_peers,
            "joined_after": None if self.joined_at is None else round(self.joined_at - self.started_at, 3),
            "by_source": by_source,
            "dial_intents": len(self._intents),
            "peers": [
                {
                    "peer_id": str(cp.peer_id),
                    "source": cp.source.value,
                    "direction": "out" if cp.outbound else "in",
                    "addr": cp.addr,
                    "for": round(now - cp.since, 1),
                }
                for cp in list(self.connected.values())[:200]
            ],
        }



class _Notifee(INotifee):
    """The swarm's callbacks, forwarded (INotifee's ``connected`` would shadow our table)."""

    def __init__(self, tracker: ConnectionTracker) -> None:
        self.tracker = tracker

    async def connected(self, network: INetwork, conn: INetConn) -> None:
        self.tracker.on_connected(conn)

    async def disconnected(self, network: INetwork, conn: INetConn) -> None:
        self.tracker.on_disconnected(conn)

    async def opened_stream(self, network: INetwork, stream: INetStream) -> None:
        return None

    async def closed_stream(self, network: INetwork, stream: INetStream) -> None:
        return None

    async def listen(self, network: INetwork, multiaddr: multiaddr.Multiaddr) -> None:
        self.tracker.bus.publish(ListenAddressesChanged())

    async def listen_close(self, network: INetwork, multiaddr: multiaddr.Multiaddr) -> None:
        self.tracker.bus.publish(ListenAddressesChanged())


def _other_open_connections(host: IHost, peer_id: ID, closing: INetConn) -> list[INetConn]:
    """``peer_id``'s live connections besides ``closing``.

    py-libp2p 0.8.1's ``close_peer`` notifies ``disconnected`` *before* it drops the connection
    from the swarm's table, so the closing connection itself is still listed then; counting it
    kept every peer we disconnected ourselves in our table for good.
    """
    out = []
    for other in host.get_network().get_connections(peer_id):
        if other is closing or other.muxed_conn is closing.muxed_conn:
            continue
        if not is_open_conn(other):
            continue
        out.append(other)
    return out
