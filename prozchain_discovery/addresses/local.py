"""The local-addresses component: our listen addresses, what peers observe, our signed record.

It re-signs our peer record (seq increases) whenever the addresses we advertise change and
publishes :class:`~..events.LocalAddressesChanged`. Observed addresses
(:class:`~..events.ObservedAddress`, from bootstrap answers) are kept with a TTL and a
distinct-observer threshold (:mod:`.observed`). The NAT component feeds its verdicts here
(docs/architecture.md): the external addresses of a :class:`~..events.NatStatusChanged` (port
mappings) are advertised beside the listen addresses, and our record is re-signed. The relay
client's ``/p2p-circuit`` addresses (:class:`~..events.RelayAddressesChanged`) are advertised
the same way. When the record changes, identify is pushed to connected peers (go-libp2p's
identify does so on ``EvtLocalAddressesUpdated``), so they hold and share the new one.
"""

from __future__ import annotations

import logging
from typing import Any

import multiaddr
import trio
from libp2p.abc import IHost
from libp2p.identity.identify_push.identify_push import push_identify_to_peers
from libp2p.peer.envelope import unmarshal_envelope

from .. import libp2p_fixes
from ..addrs import AddrScope, scope_of, strip_p2p
from ..events import (
    EventBus,
    ListenAddressesChanged,
    LocalAddressesChanged,
    NatStatusChanged,
    ObservedAddress,
    RelayAddressesChanged,
    Wakeup,
)
from ..metrics import Metrics
from ..records import sign_record
from .observed import ObservedAddrs

__all__ = ["LocalAddresses"]

log = logging.getLogger("prozchain_discovery.addresses")

POLL = 5.0  # interfaces can change without a listen event
PUSH_TIMEOUT = 10.0


class LocalAddresses:
    def __init__(self, host: IHost, *, bus: EventBus, metrics: Metrics) -> None:
        self.host = host
        self.bus = bus
        self.metrics = metrics
        self.observed = ObservedAddrs()
        self.our_record: bytes | None = None
        self._advertised: list[str] = []
        self.external: tuple[multiaddr.Multiaddr, ...] = ()  # from the NAT component
        self.relayed: tuple[multiaddr.Multiaddr, ...] = ()  # from the relay client
        self._pushed: bytes | None = None  # the record connected peers were last pushed
        self._wake = Wakeup()
        bus.subscribe(ListenAddressesChanged, lambda _ev: self._wake.set())
        bus.subscribe(ObservedAddress, self._on_observed)
        bus.subscribe(NatStatusChanged, self._on_nat)
        bus.subscribe(RelayAddressesChanged, self._on_relayed)

    def _on_relayed(self, ev: RelayAddressesChanged) -> None:
        if ev.addrs != self.relayed:
            self.relayed = ev.addrs
            self.refresh()

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
        addrs += [a for a in self.relayed if a not in addrs]  # /p2p-circuit through our relays
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
            # Identify would otherwise re-sign one from our listen addresses (libp2p_fixes).
            libp2p_fixes.pin_local_record(self.host, unmarshal_envelope(self.our_record))
        except Exception as exc:  # py-libp2p refuses; identify then sends no record
            self.metrics.inc("own_record_errors")
            log.warning("could not hand our signed record to the peerstore: %s", exc)
        self.metrics.inc("own_record_signed")
        self.bus.publish(LocalAddressesChanged(tuple(addrs)))
        self._wake.set()  # run() pushes the new record to connected peers
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
            await self._push_if_changed()

    async def _push_if_changed(self) -> None:
        """Identify-push a changed record to connected peers (bounded, best effort)."""
        record = self.our_record
        if record is None or record == self._pushed:
            return
        first = self._pushed is None
        self._pushed = record
        if first or not self.host.get_connected_peers():
            return  # nobody holds an older record of ours yet
        with trio.move_on_after(PUSH_TIMEOUT):
            await push_identify_to_peers(self.host)
        self.metrics.inc("own_record_pushed")

    def status(self) -> dict[str, Any]:
        return {"observed_addrs": self.observed.counts()}
