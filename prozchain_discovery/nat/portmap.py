"""Port mapping on the home gateway: NAT-PMP (RFC 6886) first, UPnP IGD second.

NAT-PMP answers in milliseconds (one UDP exchange with the default gateway); UPnP needs SSDP
discovery (~2 s) and runs through ``miniupnpc`` in a worker thread, never on the trio loop.
A granted mapping is renewed at half its lease and deleted when the node stops; its external
address is published as a :class:`PortMapping` so the local-addresses component can advertise
it and re-sign our record.
"""

from __future__ import annotations

import ipaddress
import logging
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from ..events import Wakeup
from ..metrics import Metrics
from .natpmp import NATPMP_PORT, NatPmpClient, NatPmpResult, Protocol

__all__ = ["PortMapping", "PortMapper", "default_gateway", "default_route", "natpmp_request", "upnp_map", "upnp_unmap"]

log = logging.getLogger("prozchain_discovery.nat.portmap")

DEFAULT_LEASE = 3600


@dataclass(frozen=True)
class PortMapping:
    method: str  # "natpmp" | "upnp"
    protocol: str  # "tcp" | "udp"
    internal_port: int
    external_ip: str
    external_port: int
    lifetime: int  # seconds; 0 = until deleted (UPnP permanent)
    granted_at: float

    @property
    def multiaddr(self) -> str:
        return f"/ip4/{self.external_ip}/{self.protocol}/{self.external_port}"


def default_route(route_file: str = "/proc/net/route") -> tuple[str, str] | None:
    """(interface, gateway) of the IPv4 default route from the kernel's table (Linux), or None."""
    try:
        lines = Path(route_file).read_text().splitlines()[1:]
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if len(fields) >= 3 and fields[1] == "00000000" and fields[2] != "00000000":
            try:
                return fields[0], str(ipaddress.IPv4Address(struct.pack("<I", int(fields[2], 16))))
            except ValueError:
                return None
    return None


def default_gateway(route_file: str = "/proc/net/route") -> str | None:
    """The IPv4 default gateway from the kernel's routing table (Linux), or None."""
    route = default_route(route_file)
    return route[1] if route is not None else None


async def natpmp_request(client: NatPmpClient, start: Callable[[float], None]) -> list[NatPmpResult]:
    """Run one request (``start(now)`` queues it) against ``client.gateway``; its results."""
    sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    with sock:
        await sock.connect((client.gateway, NATPMP_PORT))
        start(trio.current_time())
        while True:
            for data in client.datagrams_to_send():
                try:
                    await sock.send(data)
                except OSError as exc:  # no route, refused: the gateway does not speak NAT-PMP
                    return [NatPmpResult("external", False, str(exc))]
            if not client.busy:
                return client.results()
            deadline = client.next_deadline()
            with trio.move_on_at(deadline if deadline is not None else trio.current_time() + 1):
                try:
                    data, (ip, _port) = await sock.recvfrom(64)
                except OSError as exc:  # ICMP port unreachable comes back as ECONNREFUSED
                    return [NatPmpResult("external", False, str(exc))]
                client.receive_datagram(data, ip, trio.current_time())
                continue
            client.on_timer(trio.current_time())


def _upnp_map_sync(internal_port: int, protocol: str, lease: int, discover_ms: int) -> tuple[str, int, str]:
    import miniupnpc  # a C extension; imported where it is used

    upnp = miniupnpc.UPnP()
    upnp.discoverdelay = discover_ms
    if upnp.discover() == 0:
        raise OSError("no UPnP IGD answered SSDP discovery")
    try:
        upnp.selectigd()
    except Exception as exc:  # miniupnpd in a lab reports a "not connected" IGD: still usable
        if "not connected" not in str(exc).lower() and not upnp.lanaddr:
            raise OSError(f"UPnP: {exc}") from exc
    external_ip = upnp.externalipaddress()
    ok = upnp.addportmapping(internal_port, protocol.upper(), upnp.lanaddr, internal_port,
                             "prozchain-discovery", "", lease)
    if not ok:
        raise OSError(f"UPnP IGD refused to map {protocol} {internal_port}")
    return str(external_ip), internal_port, str(upnp.lanaddr)


def _upnp_unmap_sync(external_port: int, protocol: str, discover_ms: int) -> None:
    import miniupnpc

    upnp = miniupnpc.UPnP()
    upnp.discoverdelay = discover_ms
    if upnp.discover() == 0:
        return
    try:
        upnp.selectigd()
    except Exception as exc:
        log.debug("UPnP selectigd: %s", exc)
    upnp.deleteportmapping(external_port, protocol.upper())


async def upnp_map(internal_port: int, protocol: str = "tcp", lease: int = DEFAULT_LEASE,
                   discover_ms: int = 1000) -> tuple[str, int, str]:
    """Map through UPnP IGD (a worker thread); returns (external ip, external port, lan addr)."""
    return await trio.to_thread.run_sync(_upnp_map_sync, internal_port, protocol, lease, discover_ms)


async def upnp_unmap(external_port: int, protocol: str = "tcp", discover_ms: int = 1000) -> None:
    await trio.to_thread.run_sync(_upnp_unmap_sync, external_port, protocol, discover_ms)


class PortMapper:
    """Keeps ``ports()`` mapped while it runs; ``on_change`` gets the current mappings."""

    def __init__(
        self,
        ports: Callable[[], list[int]],
        *,
        metrics: Metrics,
        on_change: Callable[[list[PortMapping]], None],
        lease: int = DEFAULT_LEASE,
        gateway: Callable[[], str | None] = default_gateway,
        natpmp_rto: float = 0.25,
        natpmp_sends: int = 4,
    ) -> None:
        self.ports = ports
        self.metrics = metrics
        self.on_change = on_change
        self.lease = lease
        self.gateway = gateway
        self.natpmp_rto = natpmp_rto
        self.natpmp_sends = natpmp_sends
        self.mappings: dict[int, PortMapping] = {}
        self.last_error = ""
        self._wake = Wakeup()

    async def map_once(self) -> list[PortMapping]:
        """Try to map every port; returns what is mapped now."""
        for port in self.ports():
            if port in self.mappings:
                continue
            mapping = await self._natpmp(port) or await self._upnp(port)
            if mapping is not None:
                self.mappings[port] = mapping
                self.metrics.inc("port_mappings", method=mapping.method)
                log.info("mapped tcp %d to %s via %s (lease %d s)", port, mapping.multiaddr,
                         mapping.method, mapping.lifetime)
        return list(self.mappings.values())

    async def _natpmp(self, port: int) -> PortMapping | None:
        gw = self.gateway()
        if gw is None:
            return None
        client = NatPmpClient(gw, initial_rto=self.natpmp_rto, max_sends=self.natpmp_sends)
        ext = await natpmp_request(client, client.request_external_address)
        if not ext or not ext[0].ok or ext[0].external_ip is None:
            self.last_error = f"NAT-PMP at {gw}: {ext[0].error if ext else 'no answer'}"
            return None
        got = await natpmp_request(client, lambda now: client.request_mapping(Protocol.TCP, port, port, self.lease, now))
        if not got or not got[0].ok:
            self.last_error = f"NAT-PMP at {gw}: {got[0].error if got else 'no answer'}"
            return None
        r = got[0]
        return PortMapping("natpmp", "tcp", port, ext[0].external_ip, r.external_port, r.lifetime, trio.current_time())

    async def _upnp(self, port: int) -> PortMapping | None:
        try:
            external_ip, external_port, _lan = await upnp_map(port, "tcp", self.lease)
        except (OSError, Exception) as exc:  # miniupnpc raises plain Exception
            self.last_error = f"UPnP: {exc}"
            return None
        return PortMapping("upnp", "tcp", port, external_ip, external_port, self.lease, trio.current_time())

    async def _natpmp_delete(self, gw: str, port: int) -> None:
        client = NatPmpClient(gw, initial_rto=self.natpmp_rto, max_sends=2)

        def start(now: float) -> None:
            client.request_mapping(Protocol.TCP, port, 0, 0, now)  # lifetime 0 deletes (RFC 6886)

        await natpmp_request(client, start)

    async def unmap_all(self) -> None:
        for port, m in list(self.mappings.items()):
            try:
                if m.method == "natpmp":
                    gw = self.gateway()
                    if gw is not None:
                        await self._natpmp_delete(gw, port)
                else:
                    await upnp_unmap(m.external_port, m.protocol)
                self.metrics.inc("port_unmappings", method=m.method)
            except Exception as exc:  # best effort on the way out
                log.warning("could not delete the %s mapping of port %d: %s", m.method, port, exc)
            del self.mappings[port]

    def forget(self) -> None:
        """The gateway changed (a new default route): our mappings there are gone or useless."""
        if self.mappings:
            self.mappings.clear()
            self.on_change([])
        self._wake.set()

    async def run(self, *, retry: float = 300.0) -> None:
        """Map, renew at half the lease, retry failures every ``retry`` s; unmap when cancelled."""
        try:
            while True:
                before = set(self.mappings)
                await self.map_once()
                if set(self.mappings) != before:
                    self.on_change(list(self.mappings.values()))
                now = trio.current_time()
                renewals = [m.granted_at + max(m.lifetime, 60) / 2 for m in self.mappings.values() if m.lifetime]
                await self._wake.wait_until(min([*renewals, now + retry]))
                for port, m in list(self.mappings.items()):
                    if m.lifetime and trio.current_time() >= m.granted_at + m.lifetime / 2:
                        del self.mappings[port]  # map_once renews it
                        self.metrics.inc("port_mapping_renewals", method=m.method)
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(5):
                await self.unmap_all()
            self.on_change([])

    def status(self) -> dict[str, Any]:
        return {
            "port_mappings": [m.multiaddr + f" ({m.method})" for m in self.mappings.values()],
            "port_mapping_error": self.last_error,
        }

