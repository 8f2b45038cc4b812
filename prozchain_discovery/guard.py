"""The inbound guard: abusive peers are remembered and refused before any work.

A peer that ignores ``RATE_LIMITED`` (or otherwise earns a :class:`~.events.Misbehaved` of
severity >= 3) is banned by peer id and, past a threshold, by IP (bans.py has the rule and the
escalating durations). The bootstrap and PEX handlers ask :meth:`refuses` first, so a banned
peer that reconnects with the same identity costs one dictionary lookup per stream.
"""

from __future__ import annotations

import logging
from typing import Any

import trio
from libp2p.abc import INetStream

from .bans import BanList
from .events import EventBus, Misbehaved
from .expiring import ExpiringMap
from .metrics import Metrics
from .net.exchange import observed_multiaddr

__all__ = ["InboundGuard", "BAN_SEVERITY"]

log = logging.getLogger("prozchain_discovery.guard")

BAN_SEVERITY = 3
IP_MEMORY = 600.0  # how long a peer's IP is remembered for banning it


class InboundGuard:
    def __init__(self, *, bus: EventBus, metrics: Metrics, bans: BanList | None = None) -> None:
        self.bans = bans or BanList()
        self.metrics = metrics
        self._ips: ExpiringMap[bytes, str] = ExpiringMap(IP_MEMORY, 4096)  # peer -> last IP seen
        bus.subscribe(Misbehaved, self._on_misbehaved)

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
        observed = observed_multiaddr(stream)
        ip = None
        if observed is not None:
            ip = observed.value_for_protocol(observed.protocols()[0].code)
        now = trio.current_time()
        if ip is not None:
            self._ips.put(pid, ip, now)
        self._ips.on_timer(now)
        if (deadline := self.bans.next_deadline()) is not None and deadline <= now:
            self.bans.on_timer(now)
        if self.bans.is_banned(pid, ip, now):
            self.metrics.inc("refused_banned")
            return True
        return False

    def status(self) -> dict[str, Any]:
        return {"bans": self.bans.snapshot(trio.current_time())}
