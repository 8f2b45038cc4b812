"""Port mapping on the home gateway: PCP (RFC 6887), then NAT-PMP (RFC 6886), then UPnP IGD.

PCP and NAT-PMP answer in milliseconds (one UDP exchange with the default gateway, port 5351; a
NAT-PMP-only gateway answers PCP with "unsupported version" at once); UPnP needs SSDP
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
from .natpmp import NATPMP_PORT, GatewayRequests, NatPmpClient, NatPmpResult, Protocol
from .pcp import UNSUPPORTED_VERSION, PcpClient

__all__ = ["PortMapping", "PortMapper", "default_gateway", "default_route", "natpmp_request", "upnp_map", "upnp_unmap"]

log = logging.getLogger("prozchain_discovery.nat.portmap")

DEFAULT_LEASE = 3600


@dataclass(frozen=True)
class PortMapping:
    method: str  # "pcp" | "natpmp" | "upnp"
    protocol: str  # "tcp" | "udp"
    internal_port: int
    external_ip: str
    external_port: int
    lifetime: int  # seconds; 0 = until deleted (UPnP permanent)
    granted_at: float
    nonce: bytes = b""  # PCP: the mapping's nonce, needed to renew or delete it

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


async def natpmp_request(client: GatewayRequests, start: Callable[[float, str], None]) -> list[NatPmpResult]:
    """Run one request against ``client.gateway`` (NAT-PMP or PCP); its results.

    ``start(now, local_ip)`` queues the request; ``local_ip`` is our address towards the gateway
    (PCP puts it in the request)."""
    sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    with sock:
        await sock.connect((client.gateway, NATPMP_PORT))
        start(trio.current_time(), sock.getsockname()[0])
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


Port = tuple[str, int]  # ("tcp" | "udp", port)


class PortMapper:
    """Keeps ``ports()`` mapped while it runs; ``on_change`` gets the current mappings."""

    def __init__(
        self,
        ports: Callable[[], list[Port]],
        *,
        metrics: Metrics,
        on_change: Callable[[list[PortMapping]], None],
        lease: int = DEFAULT_LEASE,
        gateway: Callable[[], str | None] = default_gateway,
        natpmp_rto: float = 0.25,
        natpmp_sends: int = 4,
        methods: tuple[str, ...] = ("pcp", "natpmp", "upnp"),
    ) -> None:
        self.ports = ports
        self.metrics = metrics
        self.on_change = on_change
        self.lease = lease
        self.gateway = gateway
        self.natpmp_rto = natpmp_rto
        self.natpmp_sends = natpmp_sends
        self.methods = methods
        self.mappings: dict[Port, PortMapping] = {}
        self.last_error = ""
        self._wake = Wakeup()
        self._reported: dict[Port, tuple[str, int]] = {}  # what on_change was last told

    async def map_once(self) -> list[PortMapping]:
        """Try to map every port; returns what is mapped now."""
        for key in self.ports():
            if key in self.mappings:
                continue
            mapping = await self._map(*key, renewing=None)
            if mapping is not None:
                self.mappings[key] = mapping
                self.metrics.inc("port_mappings", method=mapping.method)
                log.info("mapped %s %d to %s via %s (lease %d s)", key[0], key[1], mapping.multiaddr,
                         mapping.method, mapping.lifetime)
        return list(self.mappings.values())

    async def _map(self, proto: str, port: int, renewing: PortMapping | None) -> PortMapping | None:
        errors = []
        # A renewal goes to the method that granted the mapping (PCP wants its nonce back).
        for method in (renewing.method,) if renewing is not None else self.methods:
            attempt = {"pcp": self._pcp, "natpmp": self._natpmp, "upnp": self._upnp}[method]
            mapping, error = await attempt(proto, port, renewing)
            if mapping is not None:
                return mapping
            errors.append(error)
            if method == "pcp" and error.endswith(UNSUPPORTED_VERSION):
                continue  # a NAT-PMP gateway said so at once: ask it in NAT-PMP
        self.last_error = "; ".join(e for e in errors if e)
        return None

    async def _pcp(self, proto: str, port: int, renewing: PortMapping | None) -> tuple[PortMapping | None, str]:
        gw = self.gateway()
        if gw is None:
            return None, "PCP: no default gateway"
        client = PcpClient(gw, initial_rto=self.natpmp_rto, max_sends=self.natpmp_sends)
        protocol = Protocol.TCP if proto == "tcp" else Protocol.UDP
        nonce = renewing.nonce if renewing is not None else None
        external = renewing.external_port if renewing is not None else port

        def start(now: float, local_ip: str) -> None:
            client.client_ip = local_ip
            client.request_mapping(protocol, port, external, self.lease, now, nonce)

        got = await natpmp_request(client, start)
        r = got[0] if got else None
        if r is None or not r.ok or r.external_ip is None:
            return None, f"PCP at {gw}: {r.error if r else 'no answer'}"
        return PortMapping("pcp", proto, port, r.external_ip, r.external_port, r.lifetime, trio.current_time(),
                           nonce=client._nonces[(int(protocol), port)]), ""

    async def _natpmp(self, proto: str, port: int, renewing: PortMapping | None) -> tuple[PortMapping | None, str]:
        gw = self.gateway()
        if gw is None:
            return None, "NAT-PMP: no default gateway"
        client = NatPmpClient(gw, initial_rto=self.natpmp_rto, max_sends=self.natpmp_sends)
        ext = await natpmp_request(client, lambda now, _ip: client.request_external_address(now))
        external_ip = ext[0].external_ip if ext and ext[0].ok else None
        if external_ip is None:
            return None, f"NAT-PMP at {gw}: {ext[0].error if ext else 'no answer'}"
        protocol = Protocol.TCP if proto == "tcp" else Protocol.UDP
        got = await natpmp_request(client, lambda now, _ip: client.request_mapping(protocol, port, port, self.lease, now))
        if not got or not got[0].ok:
            return None, f"NAT-PMP at {gw}: {got[0].error if got else 'no answer'}"
        r = got[0]
        return PortMapping("natpmp", proto, port, external_ip, r.external_port, r.lifetime,
                           trio.current_time()), ""

    async def _upnp(self, proto: str, port: int, renewing: PortMapping | None) -> tuple[PortMapping | None, str]:
        try:
            external_ip, external_port, _lan = await upnp_map(port, proto, self.lease)
        except (OSError, Exception) as exc:  # miniupnpc raises plain Exception
            return None, f"UPnP: {exc}"
        return PortMapping("upnp", proto, port, external_ip, external_port, self.lease, trio.current_time()), ""

    async def _delete(self, m: PortMapping) -> None:
        if m.method == "upnp":
            await upnp_unmap(m.external_port, m.protocol)
            return
        gw = self.gateway()
        if gw is None:
            return
        protocol = Protocol.TCP if m.protocol == "tcp" else Protocol.UDP
        if m.method == "pcp":
            pcp = PcpClient(gw, initial_rto=self.natpmp_rto, max_sends=2)

            def start(now: float, local_ip: str) -> None:
                pcp.client_ip = local_ip
                pcp.request_mapping(protocol, m.internal_port, 0, 0, now, m.nonce)  # lifetime 0 deletes

            await natpmp_request(pcp, start)
        else:
            client = NatPmpClient(gw, initial_rto=self.natpmp_rto, max_sends=2)
            await natpmp_request(client, lambda now, _ip: client.request_mapping(protocol, m.internal_port, 0, 0, now))

    async def unmap_all(self) -> None:
        for key, m in list(self.mappings.items()):
            try:
                await self._delete(m)
                self.metrics.inc("port_unmappings", method=m.method)
            except Exception as exc:  # best effort on the way out
                log.warning("could not delete the %s mapping of %s port %d: %s", m.method, m.protocol, m.internal_port, exc)
            del self.mappings[key]

    def forget(self) -> None:
        """The gateway changed (a new default route): our mappings there are gone or useless."""
        self.mappings.clear()
        self._report()
        self._wake.set()

    def _report(self) -> None:
        """Tell ``on_change`` when the external addresses differ from what it was last told (a
        renewal at the same address is no news; a lost one or a new address is)."""
        now = {k: (m.external_ip, m.external_port) for k, m in self.mappings.items()}
        if now != self._reported:
            self._reported = now
            self.on_change(list(self.mappings.values()))

    async def run(self, *, retry: float = 300.0) -> None:
        """Map, renew at half the lease, retry failures every ``retry`` s; unmap when cancelled."""
        try:
            while True:
                await self.map_once()
                self._report()
                now = trio.current_time()
                renewals = [m.granted_at + max(m.lifetime, 60) / 2 for m in self.mappings.values() if m.lifetime]
                await self._wake.wait_until(min([*renewals, now + retry]))
                for key, m in list(self.mappings.items()):
                    if m.lifetime and trio.current_time() >= m.granted_at + m.lifetime / 2:
                        renewed = await self._map(*key, renewing=m)
                        self.metrics.inc("port_mapping_renewals", method=m.method)
                        if renewed is not None:
                            self.mappings[key] = renewed
                        else:
                            log.warning("renewing the %s mapping %s failed (%s): withdrawn, mapping again",
                                        m.method, m.multiaddr, self.last_error)
                            del self.mappings[key]  # map_once tries every method again
                self._report()
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(5):
                await self.unmap_all()
            self._report()

    def status(self) -> dict[str, Any]:
        return {
            "port_mappings": [m.multiaddr + f" ({m.method})" for m in self.mappings.values()],
            "port_mapping_error": self.last_error,
        }

