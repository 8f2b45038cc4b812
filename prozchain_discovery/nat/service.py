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
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import trio
from libp2p.abc import IHost

from ..addrs import ip_of, port_of
from ..events import EventBus, LocalAddressesChanged, NatStatusChanged, Wakeup
from ..metrics import Metrics
from .portmap import PortMapper, PortMapping
from .status import NatStatus, Reachability
from .stun_server import serve_stun

__all__ = ["NatService"]

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
        self.mapper = (
            PortMapper(self._listen_ports, metrics=metrics, on_change=self._on_mappings) if port_mapping else None
        )
        self._wake = Wakeup()
        bus.subscribe(LocalAddressesChanged, lambda _ev: self._wake.set())

    def _listen_ports(self) -> list[int]:
        ports = {port_of(a) for a in self.host.get_addrs()}
        return sorted(p for p in ports if p)

    def _publish(self, status: NatStatus) -> None:
        if status == self.status_value:
            return
        self.status_value = status
        log.info("NAT: %s, %s, external %s", status.nat_type, status.reachability.value,
                 ", ".join(status.external_addrs) or "-")
        self.bus.publish(NatStatusChanged(status))

    def _on_mappings(self, mappings: list[PortMapping]) -> None:
        st = self.status_value
        addrs = tuple(m.multiaddr for m in mappings)
        evidence = tuple(e for e in st.evidence if not e.startswith("port mapping")) + tuple(
            f"port mapping {m.method}: {m.multiaddr}" for m in mappings
        )
        reach = st.reachability
        if addrs:
            reach = Reachability.PUBLIC  # a gateway forwards the port (confirmed by dial-back later)
        elif st.nat_type not in ("open", "unknown"):
            reach = Reachability.PRIVATE
        self._publish(replace(st, port_mappings=addrs, external_addrs=addrs, reachability=reach,
                              evidence=evidence, when=trio.current_time()))

    async def classify_once(self) -> None:
        if not self.stun_servers or self.classifier is None:
            return
        self.metrics.inc("nat_classifications")
        started = trio.current_time()
        try:
            result = await self.classifier(self.stun_servers)
        except Exception as exc:  # a transport error: keep the last verdict, say why
            self.metrics.inc("nat_classification_errors")
            log.warning("NAT classification failed: %s", exc)
            return
        self.metrics.observe("nat_classification_seconds", trio.current_time() - started)
        nat_type = _name(getattr(result, "nat_type", "unknown"))
        st = self.status_value
        reach = st.reachability
        if nat_type == "open":
            reach = Reachability.PUBLIC
        elif nat_type != "unknown" and not st.port_mappings:
            reach = Reachability.PRIVATE
        self._publish(replace(
            st,
            nat_type=nat_type,
            mapping=_name(getattr(result, "mapping", "unknown")),
            filtering=_name(getattr(result, "filtering", "unknown")),
            reachability=reach,
            evidence=tuple(e for e in st.evidence if not e.startswith("stun")) + (
                f"stun {nat_type} via {', '.join(f'{h}:{p}' for h, p in self.stun_servers)}"
                + (f" ({result.note})" if getattr(result, "note", "") else ""),
            ),
            when=trio.current_time(),
        ))

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

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            if self.mapper is not None:
                nursery.start_soon(self.mapper.run)
            if self.serve_stun_port and (ips := self._stun_ips()):
                port = self.serve_stun_port
                self.stun_responder = await nursery.start(serve_stun, ips, [port, port + 1])
                log.info("serving STUN on %s, UDP %d and %d", ", ".join(ips), port, port + 1)
            if not self.stun_servers or self.classifier is None:
                return
            while True:
                await self.classify_once()
                await self._wake.wait(self.classify_interval)

    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = {"nat": self.status_value.as_dict()}
        if self.mapper is not None:
            out["nat"].update(self.mapper.status())
        if self.stun_responder is not None:
            out["nat"]["stun_server"] = dict(self.stun_responder.stats)
        return out


def _name(value: Any) -> str:
    """An enum member or string as our lower-case name (``NatType.FULL_CONE`` → ``full_cone``)."""
    raw = getattr(value, "value", value)
    name = getattr(value, "name", None)
    text = name if isinstance(name, str) else str(raw)
    return text.lower().replace(" ", "_").replace("-", "_")
