"""Local discovery (seed §3.1 ``enable_local_discovery``): mDNS answers into the peer book.

Every peer mDNS finds is added to the book (source ``mdns``); while the node is short of its
minimum, it is also dialed — through a limiter of ``max_parallel_dials`` and at most once at a
time per peer, so a chatty LAN (or a spoofer) cannot start a dial per announcement.
"""

from __future__ import annotations

import logging
from typing import Any

import trio
from libp2p.abc import IHost
from libp2p.peer.id import ID

from ..addrs import strip_p2p
from ..config import BootstrapConfig
from ..delays import doubling
from ..metrics import Metrics
from ..peerdb import PeerSource
from ..ports import Connections, Dialing, PeerBookView
from .mdns import MdnsDiscovery, MdnsPeer

__all__ = ["LocalDiscovery"]

log = logging.getLogger("prozchain_discovery.mdns")

MAX_QUEUED_DIALS = 64
RESTART_FIRST = 60.0  # after mDNS failed; doubles up to RESTART_CAP
RESTART_CAP = 3600.0


def _describe(exc: BaseException) -> str:
    """``Type: message`` of the first error inside (nurseries wrap errors in groups)."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return f"{type(exc).__name__}: {exc}"[:200]


class LocalDiscovery:
    def __init__(
        self,
        host: IHost,
        config: BootstrapConfig,
        *,
        connections: Connections,
        dialer: Dialing,
        book: PeerBookView,
        metrics: Metrics,
    ) -> None:
        self.host = host
        self.config = config
        self.connections = connections
        self.dialer = dialer
        self.book = book
        self.metrics = metrics
        self._dialing: set[ID] = set()
        self._limiter = trio.CapacityLimiter(config.max_parallel_dials)
        self.mdns: MdnsDiscovery | None = None
        self.failures = 0
        self.last_error = ""

    async def run(self) -> None:
        send, recv = trio.open_memory_channel[MdnsPeer](64)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._run_mdns, send)
            async with recv:
                async for peer in recv:
                    self._found(peer, nursery)

    async def _run_mdns(self, send: trio.MemorySendChannel[MdnsPeer]) -> None:
        """Run mDNS; if zeroconf fails (no multicast interface, a socket error, an error in its
        thread), say so in one line and try again later: before, the error left this task and
        took the whole node down with it."""
        in_a_row = 0
        while True:
            self.mdns = MdnsDiscovery(self.host.get_id(), self.host.get_addrs)
            started = trio.current_time()
            try:
                await self.mdns.run(send)
                error = "stopped"
            except Exception as exc:  # whatever zeroconf raises, the node runs on
                error = _describe(exc)
            if trio.current_time() - started > RESTART_CAP:
                in_a_row = 0  # it ran a good while: a new failure starts the backoff over
            in_a_row += 1
            delay = doubling(RESTART_FIRST, RESTART_CAP, in_a_row)
            self.failures += 1
            self.last_error = error
            self.metrics.inc("mdns_failures")
            log.error("mdns: local discovery failed (%s); the node runs without it, retry in %.0f s",
                      error, delay)
            await trio.sleep(delay)

    def _found(self, peer: MdnsPeer, nursery: trio.Nursery) -> None:
        addrs = [strip_p2p(a) for a in peer.addrs]
        self.book.db.add_addrs(peer.peer_id, addrs, PeerSource.MDNS, trio.current_time())
        self.metrics.inc("mdns_found")
        if (
            len(self.connections) >= self.config.min_peers_for_startup
            or peer.peer_id in self.connections
            or peer.peer_id in self._dialing
        ):
            return
        if len(self._dialing) >= MAX_QUEUED_DIALS:
            self.metrics.inc("mdns_dials_dropped")
            return
        self._dialing.add(peer.peer_id)
        nursery.start_soon(self._dial, peer.peer_id, addrs)

    async def _dial(self, peer_id: ID, addrs: list[Any]) -> None:
        try:
            async with self._limiter:
                await self.dialer.dial(peer_id, addrs, PeerSource.MDNS)
        finally:
            self._dialing.discard(peer_id)

    def status(self) -> dict[str, Any]:
        stats = getattr(self.mdns, "stats", None)
        out: dict[str, Any] = dict(stats()) if callable(stats) else {}
        if self.failures:
            out |= {"failures": self.failures, "last_error": self.last_error}
        return {"mdns": out}
