"""Inferring our NAT's mapping from observed addresses, and the cross-check with STUN."""

from __future__ import annotations

import trio
import trio.lowlevel
from hypothesis import given
from hypothesis import strategies as st

from prozchain_discovery.nat.observed_mapping import ObservedMapping
from prozchain_discovery.net.sockets import local_socket_addr, socket_addrs

WAN = "192.0.2.100"


def test_one_observer_is_not_enough_and_reports_from_one_group_count_once():
    m = ObservedMapping(min_observers=2)
    m.add(("10.0.1.2", 40000), (WAN, 40000), "g1", 0.0)
    m.add(("10.0.1.2", 40001), (WAN, 40001), "g1", 1.0)
    assert m.infer().verdict == "unknown" and m.infer().observers == 1
    m.add(("10.0.1.2", 40002), (WAN, 40002), "g2", 2.0)
    assert m.infer().verdict == "port_preserving"


def test_verdicts():
    def verdict(*reports):
        m = ObservedMapping(min_observers=2)
        for i, (local, observed) in enumerate(reports):
            m.add(local, observed, f"g{i}", 0.0)
        return m.infer(frozenset({"198.51.100.7"})).verdict

    assert verdict((("198.51.100.7", 4001), ("198.51.100.7", 4001)), (("198.51.100.7", 5), ("198.51.100.7", 5))) == "no_nat"
    assert verdict((("10.0.0.2", 5000), (WAN, 5000)), (("10.0.0.2", 5001), (WAN, 5001))) == "port_preserving"
    assert verdict((("10.0.0.2", 5000), (WAN, 61234)), (("10.0.0.2", 5001), (WAN, 1999))) == "port_translating"
    assert verdict((("10.0.0.2", 5000), (WAN, 5000)), (("10.0.0.2", 5001), (WAN, 1999))) == "mixed"
    assert verdict((("10.0.0.2", 5000), (WAN, 5000)), (("10.0.0.2", 5001), ("203.0.113.9", 5001))) == "address_dependent"


def test_cross_check_with_stun():
    m = ObservedMapping(min_observers=1)
    m.add(("10.0.0.2", 5000), (WAN, 5000), "g", 0.0)
    inf = m.infer()
    assert ObservedMapping.cross_check(inf, "port_restricted", "endpoint_independent", WAN) == "agree"
    assert ObservedMapping.cross_check(inf, "unknown", "unknown", None) == "unknown"
    assert ObservedMapping.cross_check(inf, "open", "endpoint_independent", WAN).startswith("disagree: STUN sees no NAT")
    assert "second NAT" in ObservedMapping.cross_check(inf, "full_cone", "endpoint_independent", "203.0.113.1")
    assert ObservedMapping.cross_check(inf, "symmetric", "address_and_port_dependent", WAN).startswith("disagree")
    m2 = ObservedMapping(min_observers=1)
    m2.add(("10.0.0.2", 5000), (WAN, 7777), "g", 0.0)
    assert ObservedMapping.cross_check(m2.infer(), "symmetric", "address_and_port_dependent", WAN) == "agree"
    assert ObservedMapping.cross_check(m2.infer(), "full_cone", "endpoint_independent", WAN).startswith("disagree")


def test_reports_expire_and_memory_is_bounded():
    m = ObservedMapping(ttl=10.0, min_observers=1, max_reports=8)
    for i in range(100):
        m.add(("10.0.0.2", 1000 + i), (WAN, 1000 + i), f"g{i}", float(i))
    assert m.infer().reports == 8
    assert m.next_deadline() == 92.0 + 10.0
    m.on_timer(200.0)
    assert m.infer().reports == 0 and m.next_deadline() is None


@given(st.tuples(st.text(max_size=50), st.integers(-5, 70000)), st.tuples(st.text(max_size=50), st.integers(-5, 70000)),
       st.text(max_size=20))
def test_garbage_reports_never_raise(local, observed, group):
    m = ObservedMapping(min_observers=1)
    m.add(local, observed, group, 0.0)
    inf = m.infer()
    ObservedMapping.cross_check(inf, "full_cone", "endpoint_independent", observed[0])


async def test_socket_addrs_of_a_real_libp2p_connection_and_a_bootstrap_observation():
    from contextlib import AsyncExitStack

    from tests.netutil import Net, addr_of, cfg, wait_until

    async with AsyncExitStack() as stack:
        net = Net(stack)
        boot = await net.node(cfg(min_peers=1))
        node = await net.node(cfg(bootstrap=(addr_of(boot),), min_peers=1))
        await wait_until(lambda: node.nat.observed.infer().reports >= 1)
        conn = node.host.get_network().get_connections(boot.host.get_id())[0]
        local, remote = socket_addrs(conn)
        back = boot.host.get_network().get_connections(node.host.get_id())[0]
        assert local_socket_addr(back) == remote  # the listener's end is the dialer's remote
        assert socket_addrs(back)[1] == local
        assert local_socket_addr(object()) is None
        # The bootstrap answer's observed address reached the NAT component with our socket's
        # port: on loopback, no NAT (one observer is enough here; the default asks for two groups).
        node.nat.observed.min_observers = 1
        node.nat._refresh_observed()
        assert node.status()["nat"]["observed_mapping"]["verdict"] == "no_nat"
        await trio.lowlevel.checkpoint()
