"""After the happy path: the NAT component and AutoNAT v2 when things go away, on MockClock.

STUN servers stop answering, a port mapping vanishes after AutoNAT confirmed it, the servers
that confirmed us leave, a confirmed address stops being reachable, the laptop moves to another
network. A stale verdict must not stay "public" forever; one lost round must not flap it.
The AutoNAT client runs for real; only ``probe`` (the network exchange) is a stand-in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import multiaddr
import trio

from prozchain_discovery.events import (
    EventBus,
    NatStatusChanged,
    ObservedAddress,
    ReachabilityConfirmed,
)
from prozchain_discovery.metrics import Metrics
from prozchain_discovery.nat.autonat import AutonatService
from prozchain_discovery.nat.autonat_core import ProbeOutcome
from prozchain_discovery.nat.portmap import PortMapping
from prozchain_discovery.nat.service import NatService
from prozchain_discovery.nat.status import NatStatus, Reachability
from prozchain_discovery.peerdb import PeerSource
from prozchain_discovery.ports import ConnectedPeer
from tests.conftest import identity
from tests.fakehost import FakeHost

STUN = [("198.51.100.1", 3478)]
MAPPED = "/ip4/198.51.100.100/tcp/4001"
INTERVAL = 60.0
REPROBE = 3600.0


@dataclass
class _Verdict:
    nat_type: str
    mapping: str = "endpoint_independent"
    filtering: str = "endpoint_independent"
    mapped_addr: tuple[str, int] | None = ("198.51.100.7", 4001)
    note: str = ""


NO_ANSWER = _Verdict("UNKNOWN", "unknown", "unknown", None, "no STUN server answered")


class Stun:
    """A classifier whose answer the test sets: a verdict, or an exception to raise."""

    def __init__(self, answer: Any) -> None:
        self.answer = answer
        self.calls = 0

    async def __call__(self, servers: list[tuple[str, int]]) -> Any:
        self.calls += 1
        await trio.sleep(0.05)
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


class Conns:
    """The Connections port, as far as AutonatService reads it."""

    def __init__(self, n: int) -> None:
        self.ids = [identity(500 + i)[1] for i in range(n)]

    def peers(self) -> list[ConnectedPeer]:
        return [ConnectedPeer(i, PeerSource.INBOUND, False, 0.0, "") for i in self.ids]


class Book:
    def supports(self, peer_id: Any, protocol: str) -> bool:
        return True


class Autonat(AutonatService):
    """The real client; ``probe`` answers from ``self.answers`` (addr -> outcome)."""

    answers: dict[str, ProbeOutcome]

    async def probe(self, server: Any, addr: str) -> ProbeOutcome:
        await trio.sleep(0.1)
        return self.answers.get(addr, ProbeOutcome.INCONCLUSIVE)


class ListeningHost(FakeHost):
    def get_addrs(self) -> list[Any]:
        return [multiaddr.Multiaddr("/ip4/10.0.0.2/tcp/4001")]


def _rig(*, stun: Stun | None = None, servers: int = 3, route: list | None = None, host: Any = None):
    bus, metrics, host = EventBus(), Metrics(), host or FakeHost()
    seen: list[NatStatus] = []
    bus.subscribe(NatStatusChanged, lambda ev: seen.append(ev.status))
    nat = NatService(host, bus=bus, metrics=metrics, stun_servers=STUN if stun else (),
                     classifier=stun, classify_interval=INTERVAL,
                     route=(lambda: route[0]) if route else (lambda: None), route_poll=10.0 if route else 0)
    conns = Conns(servers)
    autonat = Autonat(host, bus=bus, metrics=metrics, connections=conns, book=Book(),  # type: ignore[arg-type]
                      server=False, client=True, reprobe_interval=REPROBE, allow_private=True)
    autonat.answers = {}
    return bus, nat, autonat, conns, seen


def _mapping() -> PortMapping:
    return PortMapping("natpmp", "tcp", 4001, "198.51.100.100", 4001, 3600, 0.0)


# ---- STUN -----------------------------------------------------------------------------------
async def test_stun_outage_keeps_the_verdict_one_round_then_drops_it(autojump_clock):
    stun = Stun(_Verdict("OPEN"))
    _bus, nat, _autonat, _conns, seen = _rig(stun=stun)
    async with trio.open_nursery() as n:
        n.start_soon(nat.run)
        await trio.sleep(1.0)
        assert nat.status_value.nat_type == "open" and nat.status_value.reachability is Reachability.PUBLIC
        published = len(seen)
        stun.answer = OSError("network unreachable")  # every STUN server goes quiet
        await trio.sleep(INTERVAL)  # one lost round: no flap, no event
        assert stun.calls == 2 and len(seen) == published
        assert nat.status_value.nat_type == "open" and nat.status_value.reachability is Reachability.PUBLIC
        stun.answer = NO_ANSWER  # the classifier itself says nobody answered
        await trio.sleep(INTERVAL)  # a second one: the verdict is stale, not "public" forever
        st = nat.status_value
        assert stun.calls == 3 and st.nat_type == "unknown" and st.reachability is Reachability.UNKNOWN
        assert any(e.startswith("stun unknown") for e in st.evidence)
        stun.answer = _Verdict("OPEN")  # back
        await trio.sleep(INTERVAL)
        assert nat.status_value.nat_type == "open" and nat.status_value.reachability is Reachability.PUBLIC
        n.cancel_scope.cancel()


async def test_a_stun_verdict_from_peers_expires_when_no_peer_serves_stun_any_more(autojump_clock):
    stun = Stun(_Verdict("PORT_RESTRICTED", filtering="address_and_port_dependent"))
    bus, metrics = EventBus(), Metrics()
    peers = [[("203.0.113.5", 3478)]]

    class PeerStun(NatService):
        async def _servers_from_peers(self) -> list[tuple[str, int]]:
            return list(peers[0])

    nat = PeerStun(FakeHost(), bus=bus, metrics=metrics, classifier=stun, classify_interval=INTERVAL,
                   stun_from_peers=True, route_poll=0)
    async with trio.open_nursery() as n:
        n.start_soon(nat.run)
        await trio.sleep(1.0)
        assert nat.status_value.nat_type == "port_restricted"
        peers[0] = []  # the STUN-serving peers left
        await trio.sleep(INTERVAL)
        assert nat.status_value.nat_type == "port_restricted"  # not at once
        await trio.sleep(2 * INTERVAL)
        assert nat.status_value.nat_type == "unknown" and nat.status_value.reachability is Reachability.UNKNOWN
        n.cancel_scope.cancel()


# ---- port mappings ----------------------------------------------------------------------------
def test_a_vanished_port_mapping_takes_its_public_reachability_with_it():
    """No STUN, no AutoNAT: the mapping alone made us public; without it we do not know."""
    nat = NatService(FakeHost(), bus=EventBus(), metrics=Metrics())

    async def main() -> None:
        nat._on_mappings([_mapping()])
        assert nat.status_value.reachability is Reachability.PUBLIC
        nat._on_mappings([])
        assert nat.status_value.reachability is Reachability.UNKNOWN
        assert not any(e.startswith("port mapping") for e in nat.status_value.evidence)

    trio.run(main)


async def _confirm_mapped(nat: NatService, autonat: Autonat) -> None:
    autonat.answers[MAPPED] = ProbeOutcome.REACHABLE
    nat._on_mappings([_mapping()])
    await trio.sleep(1.0)
    st = nat.status_value
    assert st.reachability is Reachability.PUBLIC and any(e.startswith(f"autonat {MAPPED} reachable") for e in st.evidence)


async def test_autonat_public_goes_when_the_confirmed_mapping_goes(autojump_clock):
    stun = Stun(_Verdict("PORT_RESTRICTED", filtering="address_and_port_dependent"))
    _bus, nat, autonat, _conns, _seen = _rig(stun=stun)
    async with trio.open_nursery() as n:
        n.start_soon(nat.run)
        n.start_soon(autonat.run)
        await _confirm_mapped(nat, autonat)
        nat._on_mappings([])  # the router lost the mapping (renewal failed, router rebooted)
        await trio.sleep(1.0)
        st = nat.status_value
        assert st.reachability is Reachability.PRIVATE, "public for an address we no longer advertise"
        assert not any(e.startswith("autonat") for e in st.evidence)
        assert autonat.client_policy.addrs == {} and autonat.status()["autonat"]["reachability"] == "unknown"
        n.cancel_scope.cancel()


# ---- AutoNAT servers and re-checks --------------------------------------------------------------
async def test_confirming_servers_leaving_keeps_the_verdict_until_it_is_too_old_to_trust(autojump_clock):
    _bus, nat, autonat, conns, _seen = _rig()
    async with trio.open_nursery() as n:
        n.start_soon(nat.run)
        n.start_soon(autonat.run)
        await _confirm_mapped(nat, autonat)
        conns.ids = []  # the three servers disconnect
        await trio.sleep(REPROBE)  # a disconnect says nothing about our address
        assert nat.status_value.reachability is Reachability.PUBLIC
        await trio.sleep(REPROBE)  # nobody could re-check it for two re-probe intervals
        st = nat.status_value
        assert st.reachability is Reachability.PUBLIC  # the mapping itself still says so
        assert not any(e.startswith("autonat") for e in st.evidence)
        assert autonat.status()["autonat"]["reachability"] == "unknown"
        n.cancel_scope.cancel()


async def test_a_confirmed_public_address_that_fails_its_re_check_goes_private(autojump_clock):
    stun = Stun(_Verdict("PORT_RESTRICTED", filtering="address_and_port_dependent"))
    _bus, nat, autonat, _conns, seen = _rig(stun=stun)
    async with trio.open_nursery() as n:
        n.start_soon(nat.run)
        n.start_soon(autonat.run)
        await _confirm_mapped(nat, autonat)
        autonat.answers[MAPPED] = ProbeOutcome.UNREACHABLE  # the gateway stopped forwarding
        await trio.sleep(REPROBE)
        assert nat.status_value.reachability is Reachability.PRIVATE
        reach = [s.reachability for s in seen]
        changes = [b for a, b in zip([None, *reach], reach, strict=False) if a is not b]
        # public (mapping, then dial-backs) until three servers disagree: one alone did not flap it
        assert changes == [Reachability.PUBLIC, Reachability.PRIVATE]
        assert "3 servers" in str(autonat.client_policy.evidence())
        n.cancel_scope.cancel()


async def test_a_dial_back_verdict_that_lapses_falls_back_to_stun(autojump_clock):
    """Reachability is recomputed from its sources, not remembered from the last one to speak."""
    stun = Stun(_Verdict("PORT_RESTRICTED", filtering="address_and_port_dependent"))
    bus, nat, autonat, _conns, _seen = _rig(stun=stun)
    async with trio.open_nursery() as n:
        n.start_soon(nat.run)
        await trio.sleep(1.0)
        assert nat.status_value.reachability is Reachability.PRIVATE
        bus.publish(ReachabilityConfirmed(Reachability.PUBLIC, ("autonat x reachable",), ("x",)))
        assert nat.status_value.reachability is Reachability.PUBLIC
        bus.publish(ReachabilityConfirmed(Reachability.UNKNOWN, ()))
        assert nat.status_value.reachability is Reachability.PRIVATE
        assert not any(e.startswith("autonat") for e in nat.status_value.evidence)
        n.cancel_scope.cancel()


# ---- a new network ---------------------------------------------------------------------------
async def test_a_new_default_route_forgets_autonat_confirmations(autojump_clock):
    route = [("eth0", "192.168.1.1")]
    stun = Stun(_Verdict("PORT_RESTRICTED", filtering="address_and_port_dependent"))
    bus, nat, autonat, conns, _seen = _rig(stun=stun, route=route, host=ListeningHost())
    observed = "/ip4/203.0.113.50/tcp/4001"
    async with trio.open_nursery() as n:
        n.start_soon(nat.run)
        n.start_soon(autonat.run)
        await trio.sleep(1.0)
        for reporter in conns.ids[:2]:  # two peers see us at the old network's public IP
            bus.publish(ObservedAddress(multiaddr.Multiaddr(observed), reporter))
        autonat.answers[observed] = ProbeOutcome.REACHABLE
        await trio.sleep(1.0)
        assert nat.status_value.reachability is Reachability.PUBLIC
        autonat.answers.clear()  # the new network: nothing answers yet
        route[0] = ("wlan0", "10.1.1.1")
        await trio.sleep(15.0)
        st = nat.status_value
        assert st.reachability is Reachability.PRIVATE, "an old network's dial-backs still counted"
        assert not any(e.startswith("autonat") for e in st.evidence)
        assert autonat._observed == {} and observed not in autonat.client_policy.addrs
        assert all(v.confirmed_at is None for v in autonat.client_policy.addrs.values())
        n.cancel_scope.cancel()


# ---- bounded --------------------------------------------------------------------------------
async def test_repeated_outages_and_events_grow_nothing(autojump_clock):
    stun = Stun(_Verdict("OPEN"))
    bus, nat, autonat, conns, _seen = _rig(stun=stun)
    autonat.answers[MAPPED] = ProbeOutcome.REACHABLE
    async with trio.open_nursery() as n:
        n.start_soon(nat.run)
        n.start_soon(autonat.run)
        for i in range(12):
            stun.answer = OSError("down") if i % 3 else _Verdict("OPEN")
            nat._on_mappings([_mapping()] if i % 2 else [])
            conns.ids = [identity(1000 + 3 * i + k)[1] for k in range(3)]  # servers churn
            await trio.sleep(REPROBE / 2)
        st = nat.status_value
        assert len(st.evidence) <= 1 + 1 + 1  # one stun line, at most one mapping, one autonat
        for v in autonat.client_policy.addrs.values():
            assert len(v.asked) <= 6 and len(v.streak_servers) <= 3
        n.cancel_scope.cancel()


async def test_an_outage_from_the_start_is_said_once_not_every_round(autojump_clock):
    stun = Stun(OSError("network unreachable"))
    _bus, nat, _autonat, _conns, seen = _rig(stun=stun)
    async with trio.open_nursery() as n:
        n.start_soon(nat.run)
        await trio.sleep(5 * INTERVAL + 1)
        assert stun.calls == 6 and len(seen) == 2  # the verdict, then the observed cross-check beside it
        assert seen[0] == seen[1] and seen[0].reachability is Reachability.UNKNOWN and "network unreachable" in seen[0].evidence[-1]
        n.cancel_scope.cancel()
