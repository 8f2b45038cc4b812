"""The NAT component (seed §3.3): classify our NAT, map a port, publish a :class:`NatStatus`.

It runs the STUN classifier (nat/classify.py, RFC 5780 mapping × filtering) at start, every
``classify_interval`` and when our addresses change; keeps a TCP port mapping on the home
gateway (nat/portmap.py: NAT-PMP, then UPnP); and publishes
:class:`~..events.NatStatusChanged` whenever the verdict or the mappings change. The
local-addresses component advertises the external addresses it carries; relay and hole
punching (docs/architecture.md) will read ``nat_type`` from the same event.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import trio
from libp2p.abc import IHost

from ..addrs import ip_of, port_of
from ..events import (
    EventBus,
    LocalAddressesChanged,
    NatStatusChanged,
    ObservedAddress,
    PeerConnected,
    ReachabilityConfirmed,
    Wakeup,
)
from ..metrics import Metrics
from ..net.sockets import direct_socket
from ..wire.stun_service import StunServiceResponse
from .observed_mapping import ObservedMapping
from .portmap import PortMapper, PortMapping, default_route
from .status import NatStatus, Reachability
from .stun_peers import serve_stun_service, stun_servers_from_peers
from .stun_server import serve_stun

__all__ = ["NatService"]

PEER_STUN_RETRY = 30.0  # no peer serves STUN yet: look again (and whenever a peer connects)
# A STUN verdict no classification could refresh for this many ``classify_interval``s is
# dropped: one lost round keeps it (no flapping), an outage does not keep it forever.
STUN_STALE_ROUNDS = 2
IDENTIFY_SETTLE = 1.0

log = logging.getLogger("prozchain_discovery.nat")

Classifier = Callable[[list[tuple[str, int]]], Any]


class NatService:
    def __init__(
        self,
        host: IHost,
        *,
        bus: EventBus,
        metrics: Metrics,
        stun_servers: Sequence[tuple[str, int]] = (),
        port_mapping: bool = False,
        classify_interval: float = 1800.0,
        classifier: Classifier | None = None,
        serve_stun_port: int = 0,
        route: Callable[[], tuple[str, str] | None] = default_route,
        route_poll: float = 10.0,
        stun_from_peers: bool = False,
    ) -> None:
        self.host = host
        self.bus = bus
        self.metrics = metrics
        self.stun_servers = list(stun_servers)
        self.classify_interval = classify_interval
        self.classifier = classifier
        self.serve_stun_port = serve_stun_port
        self.stun_responder: Any = None
        self.status_value = NatStatus()
        self._logged: tuple[str, str, tuple[str, ...]] | None = None  # what the "NAT:" line said last
        self.mapper = (
            PortMapper(self._listen_ports, metrics=metrics, on_change=self._on_mappings) if port_mapping else None
        )
        self._wake = Wakeup()
        self.observed = ObservedMapping()
        self.route = route  # the default route: a new one means a new network, classify again
        self.route_poll = route_poll
        self.current_route: tuple[str, str] | None = None
        self.stun_from_peers = stun_from_peers
        self._waiting_for_stun_peers = False
        self.peer_stun_servers: list[tuple[str, int]] = []
        self._stun_mapped_ip: str | None = None
        self._stun_ok_at: float | None = None  # when STUN last answered (-inf: another network)
        bus.subscribe(LocalAddressesChanged, lambda _ev: self._wake.set())
        bus.subscribe(ObservedAddress, self._on_observed)
        bus.subscribe(PeerConnected, self._on_peer_connected)
        self._dial_back: ReachabilityConfirmed | None = None  # AutoNAT v2 (nat/autonat.py)
        bus.subscribe(ReachabilityConfirmed, self._on_dial_back)

    def _on_peer_connected(self, _ev: PeerConnected) -> None:
        if self._waiting_for_stun_peers:  # it may serve STUN (identify tells in a moment)
            self._wake.set()

    def _listen_ports(self) -> list[tuple[str, int]]:
        """(protocol, port) of what we listen on: TCP, and UDP (QUIC) when we listen there."""
        ports = set()
        for a in self.host.get_addrs():
            port = port_of(a)
            if port:
                ports.add(("udp" if "/udp/" in str(a) else "tcp", port))
        return sorted(ports)

    def _on_observed(self, ev: ObservedAddress) -> None:
        """A peer says where it sees us: compare with the socket it said it over."""
        ip, port = ip_of(ev.addr), port_of(ev.addr)
        if ip is None or not port:
            return
        sock = direct_socket(self.host, ev.reporter)
        if sock is None:  # relayed or QUIC: no socket of ours says anything
            return
        if self.observed.add(sock.local, (str(ip), port), sock.group, trio.current_time()):
            self.metrics.inc("nat_observed_reports")
        self._refresh_observed()

    def _refresh_observed(self) -> None:
        now = trio.current_time()
        self.observed.on_timer(now)
        st = self.status_value
        inference = self.observed.infer(frozenset(str(ip_of(a)) for a in self.host.get_addrs() if ip_of(a)))
        check = ObservedMapping.cross_check(inference, st.nat_type, st.mapping, self._stun_mapped_ip)
        details = {**st.details, "observed_mapping": inference.as_dict(), "stun_vs_observed": check}
        if details != st.details:
            if check.startswith("disagree") and st.details.get("stun_vs_observed") != check:
                log.warning("NAT: STUN and observed addresses %s", check)
            self._publish(replace(st, details=details))

    def _on_dial_back(self, ev: ReachabilityConfirmed) -> None:
        self._dial_back = ev
        self._publish(self.status_value)

    def _with_dial_back(self, status: NatStatus) -> NatStatus:
        """Reachability from what each source says now (never remembered from whichever spoke
        last, so a source that goes away takes its verdict with it). A confirmed dial-back
        verdict wins over STUN and port-mapping guesses."""
        ev = self._dial_back
        evidence = tuple(e for e in status.evidence if not e.startswith("autonat")) + (ev.evidence if ev else ())
        reach: Reachability
        if ev is not None and ev.reachability is not Reachability.UNKNOWN:
            reach = ev.reachability
        elif status.port_mappings or status.nat_type == "open":
            reach = Reachability.PUBLIC  # a gateway forwards the port, or no NAT at all
        elif status.nat_type != "unknown":
            reach = Reachability.PRIVATE
        else:
            reach = Reachability.UNKNOWN
        return replace(status, reachability=reach, evidence=evidence)

    def _publish(self, status: NatStatus) -> None:
        status = self._with_dial_back(status)
        if status == self.status_value and status.details == self.status_value.details:
            return
        self.status_value = status
        # The line says type, reachability and external addresses: logged when one of them
        # changed, not for every new piece of evidence (a classification is followed by its
        # observed-address cross-check, then dial-back results: the same line 2-3 times).
        shown = (status.nat_type, status.reachability.value, status.external_addrs)
        if shown != self._logged:
            self._logged = shown
            log.info("NAT: %s, %s, external %s", status.nat_type, status.reachability.value,
                     ", ".join(status.external_addrs) or "-")
        self.bus.publish(NatStatusChanged(status))

    def _on_mappings(self, mappings: list[PortMapping]) -> None:
        st = self.status_value
        addrs = tuple(m.multiaddr for m in mappings)
        evidence = tuple(e for e in st.evidence if not e.startswith("port mapping")) + tuple(
            f"port mapping {m.method}: {m.multiaddr}" for m in mappings
        )
        self._publish(replace(st, port_mappings=addrs, external_addrs=addrs,
                              evidence=evidence, when=trio.current_time()))

    def _stun_fresh(self) -> bool:
        """May the last STUN verdict outlive a failed round (it is less than
        ``STUN_STALE_ROUNDS`` intervals old, and from this network)?"""
        ok = self._stun_ok_at
        return ok is not None and trio.current_time() - ok < STUN_STALE_ROUNDS * self.classify_interval

    def _drop_stun(self, why: str) -> None:
        """No STUN answer for too long: the verdict is stale, say unknown (and why)."""
        self._stun_ok_at = None
        self._stun_mapped_ip = None
        st = self.status_value
        evidence = tuple(e for e in st.evidence if not e.startswith("stun")) + (f"stun unknown: {why}",)
        if st.nat_type == "unknown" and evidence == st.evidence:
            return  # said already: a longer outage is no news
        self._publish(replace(st, nat_type="unknown", mapping="unknown", filtering="unknown",
                              evidence=evidence, when=trio.current_time()))
        self._refresh_observed()

    async def classify_once(self, servers: list[tuple[str, int]] | None = None) -> None:
        servers = servers if servers is not None else self.stun_servers
        if not servers or self.classifier is None:
            return
        self.metrics.inc("nat_classifications")
        started = trio.current_time()
        try:
            result = await self.classifier(servers)
        except Exception as exc:  # a transport error: keep a fresh verdict, drop a stale one
            self.metrics.inc("nat_classification_errors")
            log.warning("NAT classification failed: %s", exc)
            if not self._stun_fresh():
                self._drop_stun(f"classification failed ({exc})")
            return
        self.metrics.observe("nat_classification_seconds", trio.current_time() - started)
        mapped = getattr(result, "mapped_addr", None)
        if mapped is None and _name(getattr(result, "nat_type", "unknown")) == "unknown":
            if self._stun_fresh():  # no server answered this round: one lost round is no news
                log.warning("NAT classification: no STUN server answered; keeping the last verdict")
                return
        else:
            self._stun_ok_at = trio.current_time()
        self._stun_mapped_ip = str(mapped[0]) if isinstance(mapped, tuple) and mapped else None
        nat_type = _name(getattr(result, "nat_type", "unknown"))
        st = self.status_value
        self._publish(replace(
            st,
            nat_type=nat_type,
            mapping=_name(getattr(result, "mapping", "unknown")),
            filtering=_name(getattr(result, "filtering", "unknown")),
            evidence=tuple(e for e in st.evidence if not e.startswith("stun")) + (
                f"stun {nat_type} via {', '.join(f'{h}:{p}' for h, p in servers)}"
                + (" (peers serving STUN)" if servers is not self.stun_servers else "")
                + (f" ({result.note})" if getattr(result, "note", "") else ""),
            ),
            when=trio.current_time(),
        ))
        self._refresh_observed()  # the cross-check has a new STUN side

    def _stun_ips(self) -> list[str]:
        """Up to two of our IPv4 listen addresses (two make the server RFC 5780)."""
        ips: list[str] = []
        for a in self.host.get_addrs():
            ip = ip_of(a)
            if ip is not None and ip.version == 4 and str(ip) not in ips and not ip.is_unspecified:
                ips.append(str(ip))
        # A loopback address would be handed out as OTHER-ADDRESS: only when there is nothing else.
        outside = [ip for ip in ips if not ip.startswith("127.")]
        return (outside or ips)[:2]

    async def _watch_route(self) -> None:
        """Poll the default route; a change re-classifies and re-maps.

        /proc/net/route is generated by the kernel from memory (no disk, no wait), so it is read
        on the loop rather than paying a worker thread every ``route_poll`` seconds.
        """
        self.current_route = self.route()
        while True:
            await trio.sleep(self.route_poll)
            route = self.route()
            if route == self.current_route:
                continue
            log.info("default route changed (%s → %s): classifying our NAT again",
                     _route_text(self.current_route), _route_text(route))
            self.metrics.inc("nat_route_changes")
            self.current_route = route
            self.observed = ObservedMapping()  # what peers saw was about the old path
            # Dial-backs confirmed the old network's addresses: forget them (a new ``network``
            # tells AutoNAT to forget them too); the STUN verdict stands only until the
            # re-classification, and a failed one drops it at once.
            self._dial_back = None
            if self._stun_ok_at is not None:
                self._stun_ok_at = -math.inf
            self._publish(replace(self.status_value, network=self.status_value.network + 1))
            if self.mapper is not None:
                self.mapper.forget()
            self._wake.set()

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            if self.route_poll > 0:
                nursery.start_soon(self._watch_route)
            if self.mapper is not None:
                nursery.start_soon(self.mapper.run)
            if self.serve_stun_port and (ips := self._stun_ips()):
                port = self.serve_stun_port
                self.stun_responder = await nursery.start(serve_stun, ips, [port, port + 1])
                log.info("serving STUN on %s, UDP %d and %d", ", ".join(ips), port, port + 1)
                serve_stun_service(self.host, lambda: StunServiceResponse(
                    tuple((ip, port) for ip in ips), rfc5780=len(ips) >= 2))
            if self.classifier is None or not (self.stun_servers or self.stun_from_peers):
                return
            while True:
                servers = self.stun_servers or await self._servers_from_peers()
                self._waiting_for_stun_peers = not servers
                if servers:
                    await self.classify_once(servers)
                elif self._stun_ok_at is not None and self.classifier is not None and not self._stun_fresh():
                    self._drop_stun("no peer serves STUN any more")
                await self._wake.wait(self.classify_interval if servers else PEER_STUN_RETRY)
                if not servers:
                    await trio.sleep(IDENTIFY_SETTLE)  # a new peer's protocols arrive with identify

    async def _servers_from_peers(self) -> list[tuple[str, int]]:
        servers, notes = await stun_servers_from_peers(self.host)
        for note in notes:
            log.info("STUN from peers: %s", note)
        if servers != self.peer_stun_servers:
            self.peer_stun_servers = servers
            if servers:
                log.info("classifying with STUN served by peers: %s", ", ".join(f"{h}:{p}" for h, p in servers))
        return servers

    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = {"nat": self.status_value.as_dict()}
        if self.mapper is not None:
            out["nat"].update(self.mapper.status())
        if self.stun_responder is not None:
            out["nat"]["stun_server"] = dict(self.stun_responder.stats)
        if self.peer_stun_servers:
            out["nat"]["stun_servers_from_peers"] = [f"{h}:{p}" for h, p in self.peer_stun_servers]
        return out


def _route_text(route: tuple[str, str] | None) -> str:
    return f"via {route[1]} on {route[0]}" if route is not None else "none"


def _name(value: Any) -> str:
    """An enum member or string as our lower-case name (``NatType.FULL_CONE`` → ``full_cone``)."""
    raw = getattr(value, "value", value)
    name = getattr(value, "name", None)
    text = name if isinstance(name, str) else str(raw)
    return text.lower().replace(" ", "_").replace("-", "_")
