"""DNS seeds against a real dnsmasq on loopback."""

from __future__ import annotations

import socket
import time
from functools import partial

import pytest
import trio

from prozchain_discovery.bootstrap.dns import DnsLookupGate, DnsSeedResolver, ResolverConfig
from tests.conftest import identity
from tests.dnsmasq import dnsmasq

pytestmark = pytest.mark.network

P = [str(identity(600 + i)[1]) for i in range(8)]


def _resolver(port: int, **kw) -> DnsSeedResolver:
    return DnsSeedResolver(ResolverConfig(("127.0.0.1",), port, 2.0), **kw)


async def test_dnsaddr_txt_records(tmp_path):
    txt = [("_dnsaddr.seed.test", f"dnsaddr=/ip4/127.0.0.1/tcp/{4000 + i}/p2p/{P[i]}") for i in range(3)]
    txt.append(("_dnsaddr.seed.test", "not-a-dnsaddr=whatever"))  # ignored
    txt.append(("_dnsaddr.seed.test", "dnsaddr=/this/is/junk"))  # counted, rest kept
    with dnsmasq(tmp_path, txt) as port:
        res = await _resolver(port).resolve("/dnsaddr/seed.test")
    assert sorted(str(a) for a in res.addrs) == sorted(
        f"/ip4/127.0.0.1/tcp/{4000 + i}/p2p/{P[i]}" for i in range(3))
    assert [e.kind for e in res.errors] == ["bad_record"]


async def test_nested_dnsaddr_and_depth_cap(tmp_path):
    txt = [("_dnsaddr.top.test", "dnsaddr=/dnsaddr/mid.test"),
           ("_dnsaddr.mid.test", f"dnsaddr=/ip4/127.0.0.1/tcp/4001/p2p/{P[0]}")]
    # A chain 6 deep: levels 1-4 resolve, 5 is beyond the cap of 4.
    for lvl in range(1, 6):
        txt.append((f"_dnsaddr.l{lvl}.test", f"dnsaddr=/ip4/127.0.0.1/tcp/{5000 + lvl}/p2p/{P[lvl]}"))
        txt.append((f"_dnsaddr.l{lvl}.test", f"dnsaddr=/dnsaddr/l{lvl + 1}.test"))
    with dnsmasq(tmp_path, txt) as port:
        r = _resolver(port)
        two = await r.resolve("/dnsaddr/top.test")
        deep = await r.resolve("/dnsaddr/l1.test")
    assert [str(a) for a in two.addrs] == [f"/ip4/127.0.0.1/tcp/4001/p2p/{P[0]}"] and not two.errors
    ports = sorted(int(a.value_for_protocol("tcp")) for a in deep.addrs)
    assert ports == [5001, 5002, 5003, 5004]
    assert any(e.kind == "recursion_limit" for e in deep.errors)


async def test_loop_detected(tmp_path):
    txt = [("_dnsaddr.a.test", "dnsaddr=/dnsaddr/b.test"),
           ("_dnsaddr.a.test", f"dnsaddr=/ip4/127.0.0.1/tcp/4001/p2p/{P[0]}"),
           ("_dnsaddr.b.test", "dnsaddr=/dnsaddr/a.test")]
    with dnsmasq(tmp_path, txt) as port:
        res = await _resolver(port).resolve("/dnsaddr/a.test")
    assert [str(a) for a in res.addrs] == [f"/ip4/127.0.0.1/tcp/4001/p2p/{P[0]}"]
    assert any(e.kind == "recursion_limit" for e in res.errors)


async def test_cap_of_100_addresses(tmp_path):
    txt = [("_dnsaddr.big.test", f"dnsaddr=/ip4/127.0.{i // 250}.{i % 250 + 1}/tcp/4001/p2p/{P[0]}")
           for i in range(130)]
    with dnsmasq(tmp_path, txt) as port:
        res = await _resolver(port).resolve("/dnsaddr/big.test")
    assert len(res.addrs) == 100


async def test_peer_id_filter(tmp_path):
    txt = [("_dnsaddr.f.test", f"dnsaddr=/ip4/127.0.0.1/tcp/{4000 + i}/p2p/{P[i]}") for i in range(3)]
    with dnsmasq(tmp_path, txt) as port:
        res = await _resolver(port).resolve(f"/dnsaddr/f.test/p2p/{P[1]}")
    assert [str(a) for a in res.addrs] == [f"/ip4/127.0.0.1/tcp/4001/p2p/{P[1]}"]


async def test_a_and_aaaa_with_port(tmp_path):
    hosts = [("plain.test", "127.0.0.5"), ("plain.test", "::1")]
    with dnsmasq(tmp_path, hosts=hosts) as port:
        r = _resolver(port, default_port=4001)
        res = await r.resolve("plain.test:4100")
        dflt = await r.resolve("plain.test")
        dns4 = await r.resolve("/dns4/plain.test/tcp/9")
    assert sorted(str(a) for a in res.addrs) == ["/ip4/127.0.0.5/tcp/4100", "/ip6/::1/tcp/4100"]
    assert "/ip4/127.0.0.5/tcp/4001" in [str(a) for a in dflt.addrs]
    assert [str(a) for a in dns4.addrs] == ["/ip4/127.0.0.5/tcp/9"]
    assert not res.errors


async def test_nxdomain(tmp_path):
    with dnsmasq(tmp_path, [("_dnsaddr.x.test", "dnsaddr=/ip4/127.0.0.1/tcp/1")]) as port:
        res = await _resolver(port).resolve("/dnsaddr/missing.test")
    assert res.addrs == [] and [e.kind for e in res.errors] == ["nxdomain"]


async def test_timeout_is_bounded():
    # A loopback UDP port that never answers.
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    try:
        r = DnsSeedResolver(ResolverConfig(("127.0.0.1",), sock.getsockname()[1], 0.5))
        t = time.monotonic()
        with trio.fail_after(30):  # a guard: the 0.5 s timeout ends the lookup, not the OS's
            res = await r.resolve("/dnsaddr/silent.test")
        took = time.monotonic() - t
    finally:
        sock.close()
    assert res.addrs == [] and [e.kind for e in res.errors] == ["timeout"]
    assert took >= 0.5  # the lookup waited for its timeout


async def test_resolve_all_runs_seeds_concurrently():
    socks = []
    try:
        seeds = []
        for _ in range(3):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        r = DnsSeedResolver(ResolverConfig(("127.0.0.1",), socks[0].getsockname()[1], 0.5))
        seeds = ["/dnsaddr/a.test", "/dnsaddr/b.test", "/dnsaddr/c.test"]
        t = trio.current_time()
        out = await r.resolve_all(seeds)
        assert len(out) == 3 and trio.current_time() - t < 1.2  # not 3 x 0.5 s
    finally:
        for s in socks:
            s.close()


def test_lookup_gate():
    gate = DnsLookupGate(300.0)
    assert gate.may_lookup(0.0) and gate.next_allowed(0.0) == 0.0
    gate.record_lookup(10.0)
    assert not gate.may_lookup(309.0)
    assert gate.next_allowed(110.0) == 200.0
    assert gate.may_lookup(310.0)
    # Restored from disk (the service keeps the wall-clock time of the last lookup).
    assert not DnsLookupGate(300.0, last_lookup=5.0).may_lookup(100.0)


def test_lookup_gate_retries_a_failed_lookup_with_backoff():
    gate = DnsLookupGate(300.0, first_retry=5.0)
    assert [gate.record_failure(t) for t in (0.0, 5.0, 15.0)] == [5.0, 10.0, 20.0]
    assert not gate.may_lookup(34.0) and gate.next_allowed(30.0) == 5.0 and gate.may_lookup(35.0)
    assert max(gate.record_failure(0.0) for _ in range(40)) == 300.0  # never beyond the interval
    gate.record_lookup(1000.0)  # a good lookup: the interval from now, the backoff starts over
    assert not gate.may_lookup(1299.0) and gate.may_lookup(1300.0)
    assert gate.record_failure(1300.0) == 5.0


async def test_cascade_uses_dns_when_bootstrap_nodes_fail_and_respects_interval(tmp_path):
    from contextlib import AsyncExitStack

    from prozchain_discovery.config import DnsConfig
    from prozchain_discovery.peerdb import PeerSource
    from tests.netutil import Net, addr_of, cfg, closed_port, wait_until

    async with AsyncExitStack() as stack:
        net = Net(stack)
        peers = [await net.node(cfg(min_peers=1)) for _ in range(3)]
        txt = [("_dnsaddr.net.test", f"dnsaddr={addr_of(p)}") for p in peers]
        port = stack.enter_context(dnsmasq(tmp_path, txt))
        dead = f"{closed_port()}/p2p/{identity(700)[1]}"
        c = cfg(bootstrap=(dead,), dns_seeds=("/dnsaddr/net.test",), min_peers=3,
                dns=DnsConfig(("127.0.0.1",), port, 2.0), dns_lookup_interval=3600.0)
        data = tmp_path / "node"
        async with AsyncExitStack() as inner:
            node = await Net(inner).node(c, data_dir=data)
            await wait_until(lambda: node.joined_at is not None, timeout=10)
            assert {cp.source for cp in node.connected.values()} == {PeerSource.DNS}
            assert node.metrics.get("dns_lookups") == 1
            # Fall below the minimum: the cascade re-runs, but DNS is not asked again.
            await peers[0].host.disconnect(node.local_id)
            await node.host.disconnect(peers[0].local_id)
            # (A settled cascade looks again only when kicked, or after a minute: the pass the
            # kick starts is the re-run.)
            passes = node.cascade.schedule.passes
            await wait_until(lambda: node.cascade.schedule.passes >= passes + 1, timeout=10)
            assert node.metrics.get("dns_lookups") == 1
        # A restart within the interval does not look up again either (state survives).
        async with AsyncExitStack() as inner:
            node = await Net(inner).node(c, data_dir=data)
            await wait_until(lambda: node.cascade.schedule.passes >= 1, timeout=10)
            assert node.metrics.get("dns_lookups") == 0
            assert node.cascade.dns_gate.next_allowed(trio.current_time()) > 3000


async def test_cascade_learns_peer_ids_behind_plain_a_records(tmp_path):
    """A Bitcoin-style seed (A records, no peer ids): each address is probed with a Noise
    handshake that reveals who listens there, then dialed as usual."""
    from contextlib import AsyncExitStack

    from multiaddr import Multiaddr

    from prozchain_discovery.config import DnsConfig
    from prozchain_discovery.peerdb import PeerSource
    from tests.netutil import Net, addr_of, cfg, closed_port, wait_until

    async with AsyncExitStack() as stack:
        net = Net(stack)
        peers = [await net.node(cfg(min_peers=1)) for _ in range(3)]
        ports = [Multiaddr(addr_of(p)).value_for_protocol("tcp") for p in peers]
        dead_port = Multiaddr(closed_port()).value_for_protocol("tcp")
        hosts = [(f"seed{i}.test", "127.0.0.1") for i in range(4)]
        port = stack.enter_context(dnsmasq(tmp_path, hosts=hosts))
        seeds = tuple(f"seed{i}.test:{p}" for i, p in enumerate([*ports, dead_port]))
        node = await net.node(cfg(dns_seeds=seeds, min_peers=3, dns=DnsConfig(("127.0.0.1",), port, 2.0)))
        await wait_until(lambda: node.joined_at is not None, timeout=10)
        assert set(node.connected) == {p.local_id for p in peers}
        assert {cp.source for cp in node.connected.values()} == {PeerSource.DNS}
        assert node.metrics.get("dns_probes") == 4
        assert node.metrics.get("dns_probe_failures", kind="connect") == 1
        assert all(p.local_id in node.db for p in peers)  # the book keeps them for next time


async def test_probe_errors_are_typed():
    from multiaddr import Multiaddr

    from prozchain_discovery.net.probe import ProbeError, probe_peer_id
    from tests.netutil import black_hole, closed_port

    key = identity(710)[0]
    hole, hole_addr = black_hole()
    try:
        for addr, kind in [(closed_port(), "connect"), (hole_addr, "timeout"),
                           ("/dns4/x.test/tcp/1", "address")]:
            with pytest.raises(ProbeError) as info:
                await probe_peer_id(key, Multiaddr(addr), timeout=0.3)
            assert info.value.kind == kind, (addr, info.value)
    finally:
        hole.close()

    async def not_libp2p(stream: trio.SocketStream) -> None:
        await stream.send_all(b"220 smtp.example ESMTP\r\n")
        await stream.aclose()

    async with trio.open_nursery() as nursery:
        (listener,) = await nursery.start(partial(trio.serve_tcp, not_libp2p, 0, host="127.0.0.1"))
        port = listener.socket.getsockname()[1]
        with pytest.raises(ProbeError) as info:
            await probe_peer_id(key, Multiaddr(f"/ip4/127.0.0.1/tcp/{port}"), timeout=2.0)
        assert info.value.kind == "handshake"
        nursery.cancel_scope.cancel()


async def test_a_seed_full_of_junk_and_names_costs_bounded_queries_and_log_lines(tmp_path):
    """A TXT answer with 60 junk entries and 60 /dns4 names (each its own A query, all NXDOMAIN)
    beside one good address: the good one is kept, at most MAX_QUERIES queries are made for the
    seed and at most MAX_ERRORS errors kept (the rest counted)."""
    from prozchain_discovery.bootstrap.dns import MAX_ERRORS, MAX_QUERIES

    txt = [("_dnsaddr.junk.test", f"dnsaddr=/ip4/127.0.0.1/tcp/4001/p2p/{P[0]}")]
    txt += [("_dnsaddr.junk.test", f"dnsaddr=/junk/{i}") for i in range(60)]
    txt += [("_dnsaddr.junk.test", f"dnsaddr=/dns4/n{i}.nowhere.test/tcp/4001") for i in range(60)]
    with dnsmasq(tmp_path, txt) as port:
        res = await _resolver(port).resolve("/dnsaddr/junk.test")
    assert [str(a) for a in res.addrs] == [f"/ip4/127.0.0.1/tcp/4001/p2p/{P[0]}"]
    assert res.queries == MAX_QUERIES + 1  # the TXT query, MAX_QUERIES - 1 names, then the limit said once
    assert len(res.errors) == MAX_ERRORS and res.errors_dropped > 0
