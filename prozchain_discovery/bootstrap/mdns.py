"""Local discovery with mDNS (libp2p's ``_p2p._udp.local`` convention), off the trio loop.

py-libp2p's own mDNS blocks the loop ~1.6 s in ``register_service``, calls back from
zeroconf's thread into the host, and keeps module-level state; we do not use it. Here every
blocking zeroconf call runs in a worker thread (``trio.to_thread``), and zeroconf's listener
callbacks — which fire on zeroconf's own thread — only hand a service name to trio through
``trio.from_thread.run_sync``; everything else happens on the trio side.

Advertised: one ``dnsaddr=<multiaddr>/p2p/<id>`` TXT string per address, as the libp2p mDNS
spec says; unspecified (``0.0.0.0``), circuit, websocket and webrtc addresses are skipped.
Peers are read from TXT ``dnsaddr=`` strings, or, for implementations that answer SRV + A only,
from the service's addresses and port (the peer id then comes from the TXT or instance name).
"""

from __future__ import annotations

import logging
import secrets
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import trio
from libp2p.peer.id import ID
from multiaddr import Multiaddr

from ..addrs import AddrScope, peer_id_of, scope_of, strip_p2p

__all__ = ["MdnsPeer", "MdnsDiscovery", "SERVICE_TYPE"]

log = logging.getLogger(__name__)

SERVICE_TYPE = "_p2p._udp.local."
_SKIP = ("p2p-circuit", "ws", "wss", "webrtc", "webrtc-direct", "webtransport")


@dataclass(frozen=True)
class MdnsPeer:
    peer_id: ID
    addrs: tuple[Multiaddr, ...]  # full multiaddrs with /p2p/<id>


def advertisable(addrs: Sequence[Multiaddr], peer_id: ID) -> list[Multiaddr]:
    out = []
    for a in addrs:
        t = strip_p2p(a)
        if scope_of(t) in (AddrScope.UNSPECIFIED, AddrScope.OTHER):
            continue
        if any(p.name in _SKIP for p in t.protocols()):
            continue
        out.append(Multiaddr(f"{t}/p2p/{peer_id}"))
    return out


def parse_service(properties: dict[Any, Any], addresses: Sequence[str], port: int | None) -> MdnsPeer | None:
    """A peer from a resolved service's TXT properties (and SRV/A as a fallback)."""
    addrs: list[Multiaddr] = []
    peer: ID | None = None
    for key, value in properties.items():
        k = key.decode(errors="replace") if isinstance(key, bytes) else str(key)
        v = value.decode(errors="replace") if isinstance(value, bytes) else value
        if k != "dnsaddr" or not v:
            continue
        try:
            ma = Multiaddr(v)
        except Exception:
            continue
        pid = peer_id_of(ma)
        if pid is None or (peer is not None and pid != peer):
            continue
        peer = pid
        addrs.append(ma)
    if peer is None:
        return None
    if not addrs and port:
        addrs = [Multiaddr(f"/ip4/{ip}/tcp/{port}/p2p/{peer}") for ip in addresses if ":" not in ip]
    return MdnsPeer(peer, tuple(addrs)) if addrs else None


class MdnsDiscovery:
    SERVICE_TYPE = SERVICE_TYPE

    def __init__(
        self,
        peer_id: ID,
        addrs_provider: Callable[[], Sequence[Multiaddr]],
        *,
        interfaces: Any = None,
        requery_interval: float = 10.0,
    ) -> None:
        self.peer_id = peer_id
        self.addrs_provider = addrs_provider
        self.interfaces = interfaces
        self.requery_interval = requery_interval
        self.instance = secrets.token_hex(16)  # the spec wants a random 32-63 char label
        self._seen: dict[ID, tuple[tuple[str, ...], float]] = {}

    def _service_info(self) -> Any:
        from zeroconf import ServiceInfo

        addrs = advertisable(self.addrs_provider(), self.peer_id)
        ipv4 = []
        port = 0
        for a in addrs:
            try:
                ip = a.value_for_protocol("ip4")
                port = port or int(a.value_for_protocol("tcp"))
                ipv4.append(socket.inet_aton(ip))
            except Exception:
                continue
        # One TXT string per address. zeroconf's properties are a dict, so keys must differ:
        # we pass pre-encoded TXT strings through the "text" argument instead.
        text = b"".join(len(s).to_bytes(1, "big") + s for s in (f"dnsaddr={a}".encode() for a in addrs)
                        if len(s) < 256)
        return ServiceInfo(
            SERVICE_TYPE,
            f"{self.instance}.{SERVICE_TYPE}",
            addresses=ipv4 or [socket.inet_aton("127.0.0.1")],
            port=port or 1,
            properties=text,
            server=f"{self.instance}.local.",
        )

    async def run(
        self,
        found: trio.MemorySendChannel[MdnsPeer],
        *,
        task_status: Any = trio.TASK_STATUS_IGNORED,
    ) -> None:
        from zeroconf import (
            InterfaceChoice,
            IPVersion,
            ServiceBrowser,
            ServiceStateChange,
            Zeroconf,
        )

        token = trio.lowlevel.current_trio_token()
        names_send, names_recv = trio.open_memory_channel[str](256)

        def on_change(zeroconf: Any, service_type: str, name: str, state_change: Any) -> None:
            # Runs on zeroconf's thread: only hand the name over.
            if state_change in (ServiceStateChange.Added, ServiceStateChange.Updated):
                try:
                    trio.from_thread.run_sync(names_send.send_nowait, name, trio_token=token)
                except (trio.WouldBlock, trio.RunFinishedError, trio.BrokenResourceError, trio.ClosedResourceError):
                    pass

        interfaces = self.interfaces if self.interfaces is not None else InterfaceChoice.All
        zc = await trio.to_thread.run_sync(lambda: Zeroconf(interfaces=interfaces, ip_version=IPVersion.V4Only))
        browser = None
        try:
            info = self._service_info()
            await trio.to_thread.run_sync(zc.register_service, info)
            browser = await trio.to_thread.run_sync(
                lambda: ServiceBrowser(zc, SERVICE_TYPE, handlers=[on_change])
            )
            task_status.started()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._requery, names_send)
                async for name in names_recv:
                    if name.startswith(self.instance):
                        continue
                    nursery.start_soon(self._resolve, zc, name, found)
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(3):
                await trio.to_thread.run_sync(self._shutdown, zc, browser, abandon_on_cancel=True)  # type: ignore[call-arg]

    @staticmethod
    def _shutdown(zc: Any, browser: Any) -> None:
        try:
            if browser is not None:
                browser.cancel()
            zc.unregister_all_services()
        finally:
            zc.close()

    async def _requery(self, names: trio.MemorySendChannel[str]) -> None:
        """Forget what was sent so a peer still announcing is reported again each interval."""
        while True:
            await trio.sleep(self.requery_interval)
            self._seen.clear()

    async def _resolve(self, zc: Any, name: str, found: trio.MemorySendChannel[MdnsPeer]) -> None:
        info = await trio.to_thread.run_sync(zc.get_service_info, SERVICE_TYPE, name, 3000)
        if info is None:
            return
        try:
            addresses = info.parsed_addresses()
        except Exception:
            addresses = []
        peer = parse_service(info.properties or {}, addresses, info.port)
        if peer is None or peer.peer_id == self.peer_id:
            return
        key = tuple(sorted(str(a) for a in peer.addrs))
        prev = self._seen.get(peer.peer_id)
        if prev is not None and prev[0] == key:
            return
        self._seen[peer.peer_id] = (key, trio.current_time())
        log.info("mdns: found %s at %s", peer.peer_id, ", ".join(key))
        try:
            await found.send(peer)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
