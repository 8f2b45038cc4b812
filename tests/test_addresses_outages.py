"""Our advertised addresses and signed record after the happy path (addresses/local.py): a port
mapping that disappears, an observed address that expires, relay addresses that change and a
listen address that goes away, in quick succession. The record is re-signed once per real
change, carries only what some source still gives, and its sequence number only grows."""

from __future__ import annotations

import multiaddr
import trio

from prozchain_discovery.addresses.local import LocalAddresses
from prozchain_discovery.events import (
    EventBus,
    LocalAddressesChanged,
    NatStatusChanged,
    ObservedAddress,
    RelayAddressesChanged,
)
from prozchain_discovery.metrics import Metrics
from prozchain_discovery.nat.status import NatStatus, Reachability
from prozchain_discovery.records import verify_record
from tests.conftest import identity
from tests.fakehost import FakeHost

A = multiaddr.Multiaddr


class Host(FakeHost):
    def __init__(self, addrs: list[str]) -> None:
        super().__init__()
        self.addrs = [A(a) for a in addrs]

    def get_addrs(self) -> list[multiaddr.Multiaddr]:
        return [A(f"{a}/p2p/{self.get_id()}") for a in self.addrs]


LISTEN = ["/ip4/203.0.113.7/tcp/4001", "/ip4/203.0.113.7/udp/4001/quic-v1"]
MAPPED = "/ip4/198.51.100.9/tcp/40123"
RELAY1 = f"/ip4/192.0.2.1/tcp/4001/p2p/{identity(1)[1]}/p2p-circuit"
RELAY2 = f"/ip4/192.0.2.2/tcp/4001/p2p/{identity(2)[1]}/p2p-circuit"


def nat(*external: str) -> NatStatusChanged:
    return NatStatusChanged(NatStatus(reachability=Reachability.PUBLIC, external_addrs=external))


def relays(*addrs: str) -> RelayAddressesChanged:
    return RelayAddressesChanged(tuple(A(a) for a in addrs))


async def test_a_burst_of_address_changes_signs_once_per_change_and_never_keeps_a_stale_one():
    host, bus = Host(LISTEN), EventBus()
    local = LocalAddresses(host, bus=bus, metrics=Metrics())  # type: ignore[arg-type]
    changes: list[LocalAddressesChanged] = []
    bus.subscribe(LocalAddressesChanged, changes.append)
    seqs: list[int] = []

    def step(expect: set[str], *, signed: bool) -> None:
        assert local.our_record is not None
        rec = verify_record(local.our_record)
        if signed:
            assert not seqs or rec.seq > seqs[-1]
            seqs.append(rec.seq)
        assert rec.seq == seqs[-1] and len(changes) == len(seqs)  # one signing, one event, per change
        assert {str(a) for a in rec.addrs} == expect == {str(a) for a in local.advertised()}

    assert local.refresh()
    step(set(LISTEN), signed=True)
    bus.publish(nat(MAPPED))
    step({*LISTEN, MAPPED}, signed=True)
    bus.publish(relays(RELAY1, RELAY2))
    step({*LISTEN, MAPPED, RELAY1, RELAY2}, signed=True)
    bus.publish(nat())  # the mapping is lost at renewal
    step({*LISTEN, RELAY1, RELAY2}, signed=True)
    # Peers report an address, then the reports expire: never advertised, nothing to re-sign.
    for n in (3, 4):
        bus.publish(ObservedAddress(A("/ip4/198.51.100.77/tcp/1"), identity(n)[1]))
    local.observed.on_timer(trio.current_time() + local.observed.ttl)
    assert local.observed.counts() == {} and not local.refresh()
    step({*LISTEN, RELAY1, RELAY2}, signed=False)
    bus.publish(relays(RELAY2))  # a relay is replaced ...
    step({*LISTEN, RELAY2}, signed=True)
    bus.publish(relays(RELAY2))  # ... repeated news is no news
    bus.publish(nat())
    step({*LISTEN, RELAY2}, signed=False)
    host.addrs = host.addrs[:1]  # a listener goes away (run() refreshes on ListenAddressesChanged)
    assert local.refresh()
    step({LISTEN[0], RELAY2}, signed=True)
