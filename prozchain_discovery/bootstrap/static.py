"""Static peers (seed §3.1 ``static_peers``): always kept connected, never given up.

Each static peer is dialed at start, re-dialed as soon as it is lost, and after failures at the
dialer's backoff, which for these peers never gives up and waits at most 5 minutes
(backoff.py ``keep_trying``). Connected static peers are protected from the connection
manager's trimming where the host has one.
"""

from __future__ import annotations

import logging
from typing import Any

import multiaddr
from libp2p.abc import IHost
from libp2p.peer.id import ID

from ..events import EventBus, PeerDisconnected, Wakeup
from ..metrics import Metrics
from ..peerdb import PeerSource
from ..ports import Connections, Dialing

__all__ = ["StaticPeers"]

log = logging.getLogger("prozchain_discovery.static")

PROTECT_TAG = "prozchain-static"
IDLE_CHECK = 5.0


class StaticPeers:
    def __init__(
        self,
        host: IHost,
        targets: list[tuple[ID, multiaddr.Multiaddr]],
        *,
        connections: Connections,
        dialer: Dialing,
        bus: EventBus,
        metrics: Metrics,
    ) -> None:
        self.host = host
        self.targets = targets
        self.ids = {pid for pid, _ in targets}
        self.connections = connections
        self.dialer = dialer
        self.metrics = metrics
        self._protect = getattr(host.get_network(), "tag_peer", None)
        self._wake = Wakeup()
        for pid in self.ids:
            dialer.keep_trying(pid)
        bus.subscribe(PeerDisconnected, self._on_disconnected)

    def _on_disconnected(self, ev: PeerDisconnected) -> None:
        if ev.peer_id in self.ids:
            self._wake.set()

    def next_wait(self) -> float:
        """Seconds until the earliest missing static peer may be dialed again."""
        waits = [self.dialer.retry_in(p) for p, _ in self.targets if p not in self.connections]
        return max(0.2, min(waits)) if waits else IDLE_CHECK

    async def run(self) -> None:
        if not self.targets:
            return
        while True:
            missing = [(p, [a], PeerSource.STATIC) for p, a in self.targets if p not in self.connections]
            if missing:
                await self.dialer.dial_many(missing)
                self._protect_connected()
            await self._wake.wait(self.next_wait())

    def _protect_connected(self) -> None:
        if self._protect is None:
            return
        for pid in self.ids:
            if pid not in self.connections:
                continue
            try:
                self._protect(pid, PROTECT_TAG, 1000)
            except Exception as exc:  # a host whose tag_peer has another signature
                self.metrics.inc("static_protect_failures")
                log.warning("cannot protect static peers from trimming (%s): not trying again", exc)
                self._protect = None
                return

    def status(self) -> dict[str, Any]:
        return {"static_connected": sum(1 for p in self.ids if p in self.connections), "static": len(self.ids)}
