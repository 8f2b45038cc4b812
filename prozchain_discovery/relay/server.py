"""The relay server component: circuit relay v2 hop (when enabled) and stop (always).

Serving hop follows ``[relay] serve``: ``on``, ``off``, or ``auto`` — only while the NAT
component says we are publicly reachable (a relay behind a NAT helps nobody; go-libp2p's
autorelay/relay-service split is the same). The stop handler is always registered, so a peer
that dials us through a relay where we hold a reservation reaches us. The protocol itself,
with py-libp2p's bugs worked around, is :mod:`.hop`; its limits default to go-libp2p's.
When serving starts or stops, identify is pushed to connected peers, so their list of our
protocols (where the autorelay clients look for ``/libp2p/circuit/relay/0.2.0/hop``) is current.
"""

from __future__ import annotations

import logging
from typing import Any

import trio
from libp2p.abc import IHost
from libp2p.identity.identify_push.identify_push import push_identify_to_peers
from libp2p.relay.circuit_v2.protocol import PROTOCOL_ID as HOP_PROTOCOL
from libp2p.relay.circuit_v2.protocol import STOP_PROTOCOL_ID

from ..config import RelaySettings
from ..events import EventBus, NatStatusChanged, PeerDisconnected, Wakeup
from ..metrics import Metrics
from ..nat.status import Reachability
from .hop import GuardedRelayProtocol, relay_limits

__all__ = ["RelayServer"]

log = logging.getLogger("prozchain_discovery.relay")

PRUNE_INTERVAL = 60.0  # expired reservations are also dropped on every RESERVE and disconnection
PUSH_TIMEOUT = 10.0


class RelayServer:
    def __init__(self, host: IHost, settings: RelaySettings, *, bus: EventBus, metrics: Metrics) -> None:
        self.host = host
        self.settings = settings
        self.metrics = metrics
        limits = relay_limits(
            reservation_ttl=settings.reservation_ttl, max_reservations=settings.max_reservations,
            max_circuits_per_peer=settings.max_circuits_per_peer, duration=settings.circuit_duration,
            data=settings.circuit_data,
        )
        self.protocol = GuardedRelayProtocol(
            host, limits, max_reservations_per_ip=settings.max_reservations_per_ip, on_event=self._on_event
        )
        self.public = False
        self.serving = False
        self._wake = Wakeup()
        bus.subscribe(NatStatusChanged, self._on_nat)
        bus.subscribe(PeerDisconnected, self._on_disconnected)

    def should_serve(self) -> bool:
        mode = self.settings.serve
        return mode == "on" or (mode == "auto" and self.public)

    def _on_nat(self, ev: NatStatusChanged) -> None:
        self.public = ev.status.reachability is Reachability.PUBLIC
        self._wake.set()

    def _on_disconnected(self, _ev: PeerDisconnected) -> None:
        if self.serving and self.protocol.prune():
            self._gauge()

    def _on_event(self, kind: str) -> None:
        what, _, why = kind.partition(":")
        if what == "refused":
            self.metrics.inc("relay_reservations_refused", reason=why)
        elif what == "cut":
            self.metrics.inc("relay_circuits_cut", reason=why)
        elif what == "ended":  # a circuit's normal end (EOF, or reset by a peer): DEBUG, counted
            self.metrics.inc("relay_circuits_ended", how=why)
            return
        elif what == "hop_failed":  # a hop request that never came whole (a peer went away)
            self.metrics.inc("relay_hop_failures", reason=why)
            return
        elif what == "stop_failed":  # a circuit to us whose handshake failed (issue #16)
            self.metrics.inc("relay_stop_failures", reason=why)
            return
        else:
            self.metrics.inc("relay_reservations_served", kind=what)
        self._gauge()

    def _gauge(self) -> None:
        self.metrics.set_gauge("relay_reservations_active", len(self.protocol.reservations))

    def _set_serving(self, on: bool) -> None:
        if on:
            self.host.set_stream_handler(HOP_PROTOCOL, self.protocol._handle_hop_stream)
        else:
            self.host.remove_stream_handler(HOP_PROTOCOL)  # type: ignore[attr-defined]
            self.protocol.reservations.clear()
            self.protocol.ip_of.clear()
        self.serving = on
        self.metrics.set_gauge("relay_serving", int(on))
        log.info("relay (hop): %s", "serving" if on else "not serving")

    async def run(self) -> None:
        self.host.set_stream_handler(STOP_PROTOCOL_ID, self.protocol._handle_stop_stream)
        try:
            while True:
                want = self.should_serve()
                if want != self.serving:
                    self._set_serving(want)
                    if self.host.get_connected_peers():
                        with trio.move_on_after(PUSH_TIMEOUT):
                            await push_identify_to_peers(self.host)
                if self.serving and self.protocol.prune():
                    self._gauge()
                await self._wake.wait(PRUNE_INTERVAL)
        finally:
            if self.serving:
                self.host.remove_stream_handler(HOP_PROTOCOL)  # type: ignore[attr-defined]
                self.serving = False
            self.host.remove_stream_handler(STOP_PROTOCOL_ID)  # type: ignore[attr-defined]

    def status(self) -> dict[str, Any]:
        s = self.settings
        # Otherwise a reservation that expired would be counted for up to PRUNE_INTERVAL more.
        if self.serving and self.protocol.prune():
            self._gauge()
        return {"relay_server": {
            "serve": s.serve,
            "serving": self.serving,
            "reservations": len(self.protocol.reservations),
            "circuits_open": self.protocol.circuits_open,
            "limits": {"reservation_ttl": s.reservation_ttl, "max_reservations": s.max_reservations,
                       "max_reservations_per_ip": s.max_reservations_per_ip,
                       "max_circuits_per_peer": s.max_circuits_per_peer,
                       "circuit_duration": s.circuit_duration, "circuit_data": s.circuit_data},
        }}
