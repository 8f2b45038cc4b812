"""``DiscoveryService`` — the composition root that mounts discovery on a py-libp2p host.

Usage::

    host = make_host(key, listen_addrs=[...])
    async with run_host(host, listen_addrs):
        async with DiscoveryService(host, config).run() as svc:
            await svc.wait_for_peers(8)

The root builds the components (docs/architecture.md has the picture), hands each what it needs
— config, the event bus, metrics, and the few interfaces of ports.py — registers the stream
handlers and the swarm notifee, runs every component in one nursery it owns, and merges their
``status()``. Leaving the ``async with`` cancels them all, removes the handlers and the
notifee, and flushes the peer book. Nothing else lives here: a new capability (NAT, relay,
hole punching) is a new sibling component built in :meth:`_build`.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import multiaddr
import trio
from libp2p.abc import IHost, INotifee
from libp2p.peer.id import ID

from . import libp2p_fixes, libp2p_logs
from .addresses.local import LocalAddresses
from .bootstrap.cascade import Cascade, peer_of_addr
from .bootstrap.local import LocalDiscovery
from .bootstrap.server import BootstrapServer
from .bootstrap.static import StaticPeers
from .config import DiscoveryConfig, parse_stun_server
from .connections import ConnectionTracker
from .dialer.dialer import AddrFilter, Dialer, loopback_only
from .events import EventBus
from .guard import InboundGuard
from .holepunch.schedule import HolepunchNotSupported, HolepunchParams
from .holepunch.service import PROTOCOL_ID as DCUTR_PROTOCOL
from .holepunch.service import HolepunchResult, HolepunchService
from .metrics import Metrics
from .nat.autonat import AutonatService
from .nat.service import NatService
from .nat.stun_io import classify_nat
from .outbound.manager import OutboundManager
from .peerbook import PeerBook
from .peerdb import PeerDatabase, PeerSource, PeerTableParams
from .pex.service import PexService
from .ports import ConnectedPeer, DialTransport
from .relay.client import AutoRelay
from .relay.server import RelayServer
from .relay.transport import CircuitDialer
from .simultaneous import SimultaneousConnect
from .status import StatusWriter
from .wire.messages import BOOTSTRAP_PROTOCOL, PEX_PROTOCOL

__all__ = ["DiscoveryService", "ConnectedPeer", "LOOPBACK_ONLY_ENV"]

log = logging.getLogger("prozchain_discovery")

# Test suites and benchmarks on a machine that must not send traffic off-host set this; it is
# read once, here, and becomes the dialer's address filter.
LOOPBACK_ONLY_ENV = "PROZCHAIN_DIAL_LOOPBACK_ONLY"


class DiscoveryService:
    def __init__(
        self,
        host: IHost,
        config: DiscoveryConfig | None = None,
        *,
        data_dir: str | Path | None = None,
        rng: random.Random | None = None,
        peerdb: PeerDatabase | None = None,
        addr_filter: AddrFilter | None = None,
        transports: Iterable[DialTransport] = (),
    ) -> None:
        self.host = host
        self.config = (config or DiscoveryConfig()).validate()
        self.data_dir = Path(data_dir) if data_dir else None
        self.rng = rng or random.Random()
        self.local_id = host.get_id()
        self.metrics = Metrics(demoted=libp2p_logs.demoted_counts)
        self.bus = EventBus()
        if addr_filter is None and os.environ.get(LOOPBACK_ONLY_ENV) == "1":
            addr_filter = loopback_only
        self._build(peerdb, addr_filter, list(transports))

    def _build(self, peerdb: PeerDatabase | None, addr_filter: AddrFilter | None, transports: list[DialTransport]) -> None:
        cfg, host, bus, metrics, rng = self.config, self.host, self.bus, self.metrics, self.rng
        static = [peer_of_addr(t) for t in cfg.bootstrap.static_peers]
        static_ids = {pid for pid, _ in static}
        db = peerdb or PeerDatabase(
            PeerTableParams(min_peer_age=cfg.pex.min_peer_age), rng=rng, local_peer_id=self.local_id,
            debug=cfg.peerdb.debug_checks,
        )
        self.connections = conns = ConnectionTracker(
            host, bus, metrics, min_peers=cfg.bootstrap.min_peers_for_startup, static_ids=static_ids
        )
        self.book = book = PeerBook(
            host, cfg.peerdb, db, connections=conns, bus=bus, metrics=metrics, data_dir=self.data_dir
        )
        # host.connect() cannot dial /p2p-circuit addresses: the relay transport can.
        self.circuit_dialer = CircuitDialer(host)
        transports = [*transports, self.circuit_dialer]
        self.dialer = dialer = Dialer(
            host, cfg.bootstrap, connections=conns, book=book, bus=bus, metrics=metrics, rng=rng,
            addr_filter=addr_filter, transports=transports,
        )
        self.simultaneous = SimultaneousConnect(host, bus=bus, metrics=metrics)
        self.guard = InboundGuard(bus=bus, metrics=metrics, disconnect=dialer.disconnect)
        self.addresses = LocalAddresses(host, bus=bus, metrics=metrics)
        common: dict[str, Any] = {"connections": conns, "dialer": dialer, "bus": bus, "metrics": metrics}
        self.static = StaticPeers(host, static, **common)
        self.cascade = Cascade(host, cfg, book=book, rng=rng, data_dir=self.data_dir, **common)
        self.outbound = OutboundManager(cfg.peerdb, book=book, rng=rng, static_ids=static_ids, **common)
        self.pex = PexService(host, cfg, book=book, refuses=self.guard.refuses, **common)
        self.bootstrap_server = BootstrapServer(
            host, cfg, connections=conns, book=book, bus=bus, metrics=metrics, rng=rng,
            refuses=self.guard.refuses,
        )
        self.local = LocalDiscovery(host, cfg.bootstrap, connections=conns, dialer=dialer, book=book, metrics=metrics)
        self.nat = NatService(
            host, bus=bus, metrics=metrics, port_mapping=cfg.nat.port_mapping,
            stun_servers=[parse_stun_server(t) for t in cfg.nat.stun_servers],
            classify_interval=cfg.nat.classify_interval,
            classifier=lambda servers: classify_nat(servers, server_timeout=3.0),
            serve_stun_port=cfg.nat.serve_stun_port,
            stun_from_peers=cfg.nat.stun_from_peers,
        )
        self.autonat = AutonatService(
            host, bus=bus, metrics=metrics, connections=conns, book=book, rng=rng,
            server=cfg.nat.autonat_server, client=cfg.nat.autonat_client,
            confirmations=cfg.nat.autonat_confirmations, reprobe_interval=cfg.nat.autonat_reprobe_interval,
            dial_back_timeout=cfg.nat.autonat_dial_back_timeout, allow_private=cfg.nat.autonat_allow_private,
            addr_filter=addr_filter,
        )
        self.relay_server = RelayServer(host, cfg.relay, bus=bus, metrics=metrics)
        self.autorelay = AutoRelay(host, cfg.relay, connections=conns, bus=bus, metrics=metrics)
        self.holepunch = HolepunchService(
            host, bus=bus, metrics=metrics, enabled=cfg.holepunch.enabled,
            params=HolepunchParams(max_attempts=cfg.holepunch.attempts),
        )
        self.status_writer = StatusWriter(
            self.status, data_dir=self.data_dir, interval=cfg.status_interval, metrics=metrics
        )

    # ---- public API -------------------------------------------------------------------------
    @property
    def min_peers(self) -> int:
        return self.config.bootstrap.min_peers_for_startup

    @property
    def connected(self) -> dict[ID, ConnectedPeer]:
        return self.connections.connected

    @property
    def db(self) -> PeerDatabase:
        return self.book.db

    @property
    def joined_at(self) -> float | None:
        return self.connections.joined_at

    @property
    def started_at(self) -> float:
        return self.connections.started_at

    def connected_count(self) -> int:
        return len(self.connections)

    async def wait_for_peers(self, n: int) -> None:
        await self.connections.wait_for(n)

    async def dial(self, peer_id: ID, addrs: Iterable[multiaddr.Multiaddr], source: PeerSource) -> bool:
        return await self.dialer.dial(peer_id, addrs, source)

    def holepunch_result(self, peer_id: ID) -> HolepunchResult | HolepunchNotSupported | None:
        """How hole punching with ``peer_id`` went: :class:`HolepunchNotSupported` when a
        symmetric NAT keeps the pair relayed; None if no DCUtR session ran."""
        return self.holepunch.result(peer_id)

    async def request_peers(self, peer_id: ID) -> int:
        """One PEX exchange with a connected peer; returns how many records were accepted."""
        return await self.pex.request_peers(peer_id)

    @asynccontextmanager
    async def run(self) -> AsyncIterator[DiscoveryService]:
        """Mount on the host; leaving the block unmounts (tasks cancelled, handlers removed)."""
        libp2p_fixes.tolerate_handler_removal(self.host)  # hosts not built by make_host too
        await self.book.open()
        self.host.set_stream_handler(BOOTSTRAP_PROTOCOL, self.bootstrap_server.handle)  # type: ignore[arg-type]
        if self.config.pex.enabled:
            self.host.set_stream_handler(PEX_PROTOCOL, self.pex.handle)  # type: ignore[arg-type]
        for proto, handler in self.autonat.handlers().items():
            self.host.set_stream_handler(proto, handler)  # type: ignore[arg-type]
        if self.config.holepunch.enabled:
            self.host.set_stream_handler(DCUTR_PROTOCOL, self.holepunch.handle)  # type: ignore[arg-type]
        network = self.host.get_network()
        network.register_notifee(self.connections.notifee)
        self.connections.adopt_existing()
        self.addresses.refresh()
        try:
            async with trio.open_nursery() as nursery:
                for component in self._components():
                    nursery.start_soon(component.run)  # type: ignore[attr-defined]
                try:
                    yield self
                finally:
                    nursery.cancel_scope.cancel()
        finally:
            self.host.remove_stream_handler(BOOTSTRAP_PROTOCOL)  # type: ignore[arg-type]
            if self.config.pex.enabled:
                self.host.remove_stream_handler(PEX_PROTOCOL)  # type: ignore[arg-type]
            for proto in self.autonat.handlers():
                self.host.remove_stream_handler(proto)  # type: ignore[arg-type]
            if self.config.holepunch.enabled:
                self.host.remove_stream_handler(DCUTR_PROTOCOL)  # type: ignore[arg-type]
            _unregister_notifee(network, self.connections.notifee)
            with trio.CancelScope(shield=True):
                await self.book.close()
            self.status_writer.write()

    def _components(self) -> list[object]:
        running: list[object] = [self.book, self.addresses, self.guard, self.simultaneous, self.nat, self.static,
                                 self.cascade, self.outbound]
        if self.config.pex.enabled:
            running.append(self.pex)
        if self.config.bootstrap.enable_local_discovery:
            running.append(self.local)
        if self.config.nat.autonat_server or self.config.nat.autonat_client:
            running.append(self.autonat)
        running += [self.relay_server, self.autorelay]
        if self.config.holepunch.enabled:
            running.append(self.holepunch)
        running.append(self.status_writer)
        return running

    def status(self) -> dict[str, Any]:
        """Every component's status, merged (``prozchain-discovery status`` prints it)."""
        now = trio.current_time()
        st: dict[str, Any] = {
            "peer_id": str(self.local_id),
            "network_id": self.config.network_id,
            "addrs": [str(a) for a in self.host.get_addrs()],
            "uptime": round(now - self.started_at, 3),
        }
        for part in (self.connections, self.cascade, self.dialer, self.book, self.addresses,
                     self.static, self.outbound, self.guard, self.local, self.nat, self.autonat):
            st.update(part.status())
        st.update(self.relay_server.status())
        st.update(self.autorelay.status())
        st.update(self.holepunch.status())
        if st["phase"] == "waiting" and st["connected"] >= self.min_peers:
            st["phase"] = "done"
        st["events"] = dict(self.bus.published)
        st["metrics"] = self.metrics.as_dict()
        return st


def _unregister_notifee(network: Any, notifee: INotifee) -> None:
    """``Swarm.remove_notifee`` is not part of py-libp2p's INetwork interface; use it if there."""
    remove = getattr(network, "remove_notifee", None)
    if remove is not None:
        remove(notifee)
