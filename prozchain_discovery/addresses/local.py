"""The local-addresses component: our listen addresses, what peers observe, our signed record.

It re-signs our peer record (seq increases) whenever the addresses we advertise change and
publishes :class:`~..events.LocalAddressesChanged`. Observed addresses
(:class:`~..events.ObservedAddress`, from bootstrap answers) are kept with a TTL and a
distinct-observer threshold (:mod:`.observed`). The NAT component feeds its verdicts here
(docs/architecture.md): the external addresses of a :class:`~..events.NatStatusChanged` (port
mappings) are advertised beside the listen addresses, and our record is re-signed.
"""

from __future__ import annotations

import logging
from typing import Any

import multiaddr
import trio
from libp2p.abc import IHost
from libp2p.peer.envelope import unmarshal_envelope

from ..addrs import AddrScope, scope_of, strip_p2p
from ..events import (
    EventBus,
    ListenAddressesChanged,
    LocalAddressesChanged,
    NatStatusChanged,
    ObservedAddress,
    Wakeup,
)
from ..metrics import Metrics
from ..records import sign_record
from .observed import ObservedAddrs

__all__ = ["LocalAddresses"]

log = logging.getLogger("prozchain_discovery.addresses")

POLL = 5.0  # interfaces can change without a listen event


class LocalAddresses:
    def __init__(self, host: IHost, *, bus: EventBus, metrics: Metrics) -> None:
        self.host = host
        self.bus = bus
        self.metrics = metrics
        self.observed = ObservedAddrs()
        self.our_record: bytes | None = None
        self._advertised: list[str] = []
        self.external: tuple[multiaddr.Multiaddr, ...] = ()  # from the NAT component
        self._wake = Wakeup()
        bus.subscribe(ListenAddressesChanged, lambda _ev: self._wake.set())
        bus.subscribe(ObservedAddress, self._on_observed)
        bus.subscribe(NatStatusChanged, self._on_nat)

    def _on_nat(self, ev: NatStatusChanged) -> None:
        external = []
        for text in ev.status.external_addrs:
            try:
                external.append(multiaddr.Multiaddr(text))
            except Exception:  # the NAT component built it; still, never trust a string
                self.metrics.inc("bad_external_addrs")
        if tuple(external) != self.external:
            self.external = tuple(external)
            self.refresh()

    def _on_observed(self, ev: ObservedAddress) -> None:
        if self.observed.add(ev.addr, ev.reporter.to_bytes(), trio.current_time()):
            self.metrics.inc("observed_addr_reports")

    def advertised(self) -> list[multiaddr.Multiaddr]:
        """What our record carries: public addresses if we have any, else all of them.

        A record with a private address is never handed to public requesters (signed records
        cannot be trimmed), so a node that has public addresses signs only those.
        """
        addrs = [strip_p2p(a) for a in self.host.get_addrs()]
        addrs += [a for a in self.external if a not in addrs]  # mapped on the gateway
        public = [a for a in addrs if scope_of(a) in (AddrScope.PUBLIC, AddrScope.DNS)]
        return public or addrs

    def refresh(self) -> bool:
        """Re-sign our record if the advertised addresses changed; True if they did."""
        addrs = self.advertised()
        texts = sorted(str(a) for a in addrs)
        if texts == self._advertised and self.our_record is not None:
            return False
        self._advertised = texts
        self.our_record = sign_record(self.host.get_id(), addrs, self.host.get_private_key())
        try:
            self.host.get_peerstore().set_local_record(unmarshal_envelope(self.our_record))
        except Exception as exc:  # py-libp2p refuses; identify then sends no record
            self.metrics.inc("own_record_errors")
            log.warning("could not hand our signed record to the peerstore: %s", exc)
        self.metrics.inc("own_record_signed")
        self.bus.publish(LocalAddressesChanged(tuple(addrs)))
        return True

    async def run(self) -> None:
        self.refresh()
        while True:
            deadline = trio.current_time() + POLL
            nxt = self.observed.next_deadline()
            await self._wake.wait_until(min(deadline, nxt) if nxt is not None else deadline)
            self.observed.on_timer(trio.current_time())
            if self.refresh():
                log.info("our addresses changed: %s", ", ".join(self._advertised))

    def status(self) -> dict[str, Any]:
        return {"observed_addrs": self.observed.counts()}
