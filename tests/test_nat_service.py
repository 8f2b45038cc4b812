"""The NAT component and its effect on our advertised addresses, on trio's MockClock."""

from __future__ import annotations

from dataclasses import dataclass

import trio

from prozchain_discovery.config import DiscoveryConfig, NatSettings
from prozchain_discovery.events import NatStatusChanged
from prozchain_discovery.nat.portmap import PortMapping
from prozchain_discovery.nat.service import NatService
from prozchain_discovery.nat.status import NatStatus, Reachability
from prozchain_discovery.records import verify_record
from prozchain_discovery.service import DiscoveryService
from tests.fakehost import FakeHost
from tests.netutil import cfg


@dataclass
class _Verdict:
    nat_type: str
    mapping: str = "endpoint_independent"
    filtering: str = "address_and_port_dependent"
    note: str = ""


async def test_a_port_mapping_is_advertised_and_our_record_re_signed(autojump_clock):
    host = FakeHost()
    async with DiscoveryService(host, cfg(min_peers=1)).run() as svc:
        before = svc.metrics.get("own_record_signed")
        svc.nat._on_mappings([PortMapping("natpmp", "tcp", 4001, "198.51.100.100", 4001, 3600, 0.0)])
        st = svc.status()["nat"]
        assert st["reachability"] == "public" and st["external_addrs"] == ["/ip4/198.51.100.100/tcp/4001"]
        assert svc.metrics.get("own_record_signed") == before + 1
        rec = verify_record(svc.addresses.our_record)
        assert [str(a) for a in rec.addrs] == ["/ip4/198.51.100.100/tcp/4001"]
        svc.nat._on_mappings([])  # the mapping went away
        assert verify_record(svc.addresses.our_record).addrs == ()
        assert svc.bus.published["NatStatusChanged"] == 2


async def test_classification_drives_reachability_and_is_published(autojump_clock):
    host = FakeHost()
    seen: list[NatStatus] = []
    verdicts = iter([_Verdict("PORT_RESTRICTED"), _Verdict("OPEN", "endpoint_independent", "endpoint_independent")])

    async def classifier(servers):
        await trio.sleep(0.05)
        return next(verdicts)

    from prozchain_discovery.events import EventBus
    from prozchain_discovery.metrics import Metrics

    bus = EventBus()
    bus.subscribe(NatStatusChanged, lambda ev: seen.append(ev.status))
    nat = NatService(host, bus=bus, metrics=Metrics(), stun_servers=[("198.51.100.1", 3478)],
                     classify_interval=60.0, classifier=classifier)
    async with trio.open_nursery() as n:
        n.start_soon(nat.run)
        await trio.sleep(1.0)
        assert seen[-1].nat_type == "port_restricted" and seen[-1].reachability is Reachability.PRIVATE
        assert seen[-1].filtering == "address_and_port_dependent"
        await trio.sleep(60.0)  # re-classified every classify_interval
        assert seen[-1].nat_type == "open" and seen[-1].reachability is Reachability.PUBLIC
        n.cancel_scope.cancel()


def test_nat_settings_in_toml_shape():
    c = DiscoveryConfig(nat=NatSettings(stun_servers=("198.51.100.1:3478",), port_mapping=True)).validate()
    assert c.nat.port_mapping


async def test_a_new_default_route_reclassifies_and_forgets_what_peers_saw(autojump_clock):
    from prozchain_discovery.events import EventBus
    from prozchain_discovery.metrics import Metrics

    route = [("eth0", "192.168.1.1")]
    calls: list[float] = []

    async def classifier(servers):
        calls.append(trio.current_time())
        return _Verdict("PORT_RESTRICTED")

    nat = NatService(FakeHost(), bus=EventBus(), metrics=Metrics(), stun_servers=[("198.51.100.1", 3478)],
                     classify_interval=3600.0, classifier=classifier, route=lambda: route[0], route_poll=10.0)
    async with trio.open_nursery() as n:
        n.start_soon(nat.run)
        await trio.sleep(100.0)
        assert len(calls) == 1  # same route: no new classification before classify_interval
        nat.observed.add(("10.0.0.2", 5000), ("192.0.2.1", 5000), "g", trio.current_time())
        route[0] = ("wlan0", "10.1.1.1")  # the laptop moved to another network
        await trio.sleep(15.0)
        assert len(calls) == 2 and nat.current_route == ("wlan0", "10.1.1.1")
        assert nat.observed.infer().reports == 0 and nat.metrics.get("nat_route_changes") == 1
        n.cancel_scope.cancel()


def test_default_route_from_proc_net_route(tmp_path):
    from prozchain_discovery.nat.portmap import default_gateway, default_route

    f = tmp_path / "route"
    f.write_text("Iface\tDestination\tGateway\tFlags\n"
                 "eth0\t0000A8C0\t00000000\t0001\n"
                 "eth0\t00000000\t0101A8C0\t0003\n")
    assert default_route(str(f)) == ("eth0", "192.168.1.1")
    assert default_gateway(str(f)) == "192.168.1.1"
    assert default_route(str(tmp_path / "missing")) is None
