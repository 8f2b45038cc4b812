"""mDNS between hosts on this machine, without blocking the trio loop."""

from __future__ import annotations

import threading

import pytest
import trio
from multiaddr import Multiaddr

from prozchain_discovery.bootstrap.mdns import MdnsDiscovery, MdnsPeer, advertisable, parse_service
from tests.conftest import identity

pytestmark = pytest.mark.network


def _has_multicast_interface() -> bool:
    try:
        import ifaddr  # type: ignore[import-untyped]
    except ImportError:
        return False
    return any(not a.nice_name.startswith("lo") and a.ips for a in ifaddr.get_adapters())


def test_advertisable_skips_wildcard_and_circuit():
    pid = identity(1)[1]
    addrs = [Multiaddr("/ip4/0.0.0.0/tcp/1"), Multiaddr("/ip4/127.0.0.1/tcp/2"),
             Multiaddr(f"/ip4/1.2.3.4/tcp/1/p2p/{identity(2)[1]}/p2p-circuit"),
             Multiaddr("/ip4/192.0.2.2/tcp/3/ws")]
    assert [str(a) for a in advertisable(addrs, pid)] == [f"/ip4/127.0.0.1/tcp/2/p2p/{pid}"]


def test_parse_service_txt_and_srv_fallback():
    pid = identity(1)[1]
    peer = parse_service({b"dnsaddr": f"/ip4/10.0.0.1/tcp/4001/p2p/{pid}".encode()}, [], None)
    assert peer == MdnsPeer(pid, (Multiaddr(f"/ip4/10.0.0.1/tcp/4001/p2p/{pid}"),))
    assert parse_service({b"dnsaddr": b"junk"}, ["10.0.0.1"], 4001) is None
    assert parse_service({}, ["10.0.0.1"], 4001) is None  # no peer id anywhere


@pytest.mark.skipif(not _has_multicast_interface(), reason="no multicast-capable interface here")
async def test_two_nodes_find_each_other_without_blocking_the_loop(monkeypatch):
    import zeroconf

    # "Without blocking the loop" as a fact, not a time: no blocking zeroconf call runs on the
    # trio thread (a loop-gap bound would measure the machine's load as well).
    trio_thread, on_trio_thread = threading.get_ident(), []

    def watched(cls, name):
        original = getattr(cls, name)

        def call(*args, **kwargs):
            if threading.get_ident() == trio_thread:
                on_trio_thread.append(f"{cls.__name__}.{name}")
            return original(*args, **kwargs)
        monkeypatch.setattr(cls, name, call)

    for name in ("__init__", "register_service", "get_service_info", "unregister_all_services", "close", "send"):
        watched(zeroconf.Zeroconf, name)
    watched(zeroconf.ServiceBrowser, "__init__")
    (_, a), (_, b) = identity(41), identity(42)
    da = MdnsDiscovery(a, lambda: [Multiaddr("/ip4/127.0.0.1/tcp/4101"), Multiaddr("/ip4/0.0.0.0/tcp/9")])
    db = MdnsDiscovery(b, lambda: [Multiaddr("/ip4/127.0.0.1/tcp/4102")])
    max_gap = 0.0
    found_a: list[MdnsPeer] = []
    found_b: list[MdnsPeer] = []

    async def ticker() -> None:
        nonlocal max_gap
        last = trio.current_time()
        while True:
            await trio.sleep(0.01)
            now = trio.current_time()
            max_gap = max(max_gap, now - last)
            last = now

    async def collect(recv, out) -> None:
        async for p in recv:
            out.append(p)

    async with trio.open_nursery() as outer:
        outer.start_soon(ticker)
        await trio.sleep(0.05)
        t0 = trio.current_time()
        async with trio.open_nursery() as nursery:
            sa, ra = trio.open_memory_channel[MdnsPeer](16)
            sb, rb = trio.open_memory_channel[MdnsPeer](16)
            await nursery.start(da.run, sa)
            await nursery.start(db.run, sb)
            nursery.start_soon(collect, ra, found_a)
            nursery.start_soon(collect, rb, found_b)
            with trio.move_on_after(15):
                while not (found_a and found_b):
                    await trio.sleep(0.05)
            took = trio.current_time() - t0
            t_stop = trio.current_time()
            nursery.cancel_scope.cancel()
        stop_took = trio.current_time() - t_stop  # bounded by run()'s 3 s shutdown cap
        outer.cancel_scope.cancel()
    print(f"\nmDNS: both found in {took:.2f} s; stop {stop_took:.2f} s; max loop gap {max_gap * 1000:.0f} ms")
    assert found_a and found_b, "peers did not find each other over mDNS"
    assert {p.peer_id for p in found_a} == {b} and {p.peer_id for p in found_b} == {a}  # never ourselves
    assert all("0.0.0.0" not in str(x) for p in found_b for x in p.addrs)  # wildcard never advertised
    assert [str(x) for x in found_b[0].addrs] == [f"/ip4/127.0.0.1/tcp/4101/p2p/{a}"]
    assert not on_trio_thread, f"blocking zeroconf calls on the trio thread: {on_trio_thread}"


@pytest.mark.skipif(not _has_multicast_interface(), reason="no multicast-capable interface here")
async def test_cascade_falls_back_to_mdns():
    from contextlib import AsyncExitStack

    from prozchain_discovery.peerdb import PeerSource
    from tests.netutil import Net, cfg, wait_until

    async with AsyncExitStack() as stack:
        net = Net(stack)
        c = cfg(min_peers=1, enable_local_discovery=True)
        a = await net.node(c)
        b = await net.node(c)
        await wait_until(lambda: b.local_id in a.connected or a.local_id in b.connected, timeout=20)
        # Both may dial at once: py-libp2p keeps one of the two connections, and which side
        # then holds it as outbound is a race. What matters: mDNS found them, nothing else did.
        assert a.metrics.get("mdns_found") >= 1 or b.metrics.get("mdns_found") >= 1
        sources = {cp.source for n in (a, b) for cp in n.connected.values()}
        assert sources <= {PeerSource.MDNS, PeerSource.INBOUND} and sources
