"""The inbound guard: abusive peers are remembered and refused before any work.

A peer that ignores ``RATE_LIMITED`` (or otherwise earns a :class:`~.events.Misbehaved` of
severity >= 3) is banned by peer id and, past a threshold, by IP (bans.py has the rule and the
escalating durations). A banned peer that connects again is disconnected as soon as the
connection is up (go-libp2p's connection gater does the same after the security handshake),
and the bootstrap and PEX handlers ask :meth:`refuses` before reading a byte; a refused stream
is reset and the connection it came on closed at once (net/exchange.py ``refuse``).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import trio
from libp2p.abc import INetStream
from libp2p.peer.id import ID
from multiaddr import Multiaddr

from .addrs import ip_of
from .bans import BanList
from .events import EventBus, Misbehaved, PeerConnected, Wakeup
from .expiring import ExpiringMap
from .metrics import Metrics
from .net.exchange import observed_multiaddr

__all__ = ["InboundGuard", "BAN_SEVERITY"]

log = logging.getLogger("prozchain_discovery.guard")

BAN_SEVERITY = 3
IP_MEMORY = 600.0  # how long a peer's IP is remembered for banning it


class InboundGuard:
    def __init__(
        self,
        *,
        bus: EventBus,
        metrics: Metrics,
        disconnect: Callable[[ID], Awaitable[None]],
        bans: BanList | None = None,
    ) -> None:
        self.bans = bans or BanList()
        self.metrics = metrics
        self.disconnect = disconnect
        self._ips: ExpiringMap[bytes, str] = ExpiringMap(IP_MEMORY, 4096)  # peer -> last IP seen
        self._to_drop: set[ID] = set()
        self._wake = Wakeup()
        bus.subscribe(Misbehaved, self._on_misbehaved)
        bus.subscribe(PeerConnected, self._on_connected)

    def _on_connected(self, ev: PeerConnected) -> None:
        if ev.outbound:
            return
        ip = _ip_text(ev.addr)
        if self.bans.is_banned(ev.peer_id.to_bytes(), ip, trio.current_time()):
            self._drop(ev.peer_id)

    def _drop(self, peer_id: ID) -> None:
        if len(self._to_drop) < 1024:
            self._to_drop.add(peer_id)
            self._wake.set()

    async def run(self) -> None:
        while True:
            deadline = self.bans.next_deadline()
            await self._wake.wait_until(deadline)
            now = trio.current_time()
            self.bans.on_timer(now)
            self._ips.on_timer(now)
            while self._to_drop:
                peer_id = self._to_drop.pop()
                self.metrics.inc("banned_connections_closed")
                await self.disconnect(peer_id)

    def _on_misbehaved(self, ev: Misbehaved) -> None:
        if ev.severity < BAN_SEVERITY:
            return
        now = trio.current_time()
        duration = self.bans.ban(ev.peer_id.to_bytes(), self._ips.get(ev.peer_id.to_bytes()), now, ev.reason)
        self.metrics.inc("bans", reason=ev.reason)
        log.warning("banned %s for %.0f s: %s", ev.peer_id, duration, ev.reason)

    def refuses(self, stream: INetStream) -> bool:
        """True if the stream's peer (or its IP) is banned: reset it without reading."""
        pid = stream.muxed_conn.peer_id.to_bytes()
        ip = _ip_text(observed_multiaddr(stream))
        now = trio.current_time()
        if ip is not None:
            self._ips.put(pid, ip, now)
        if self.bans.is_banned(pid, ip, now):
            self.metrics.inc("refused_banned")
            self._drop(stream.muxed_conn.peer_id)
            return True
        return False

    def status(self) -> dict[str, Any]:
        return {"bans": self.bans.snapshot(trio.current_time())}


def _ip_text(addr: Multiaddr | None) -> str | None:
    ip = ip_of(addr) if addr is not None else None
    return None if ip is None else str(ip)
