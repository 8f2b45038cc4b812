"""Each py-libp2p 0.8.1 workaround: the bug with the stock setup, and its absence with ours."""

from __future__ import annotations

import time

import multiaddr
import pytest
import trio
from libp2p import new_host
from libp2p.peer.peerinfo import PeerInfo

from prozchain_discovery import libp2p_fixes
from prozchain_discovery.addrs import AddrScope, scope_of, strip_p2p
from prozchain_discovery.host import make_host

LOOP = [multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]
pytestmark = pytest.mark.network


async def _connect_ms(a, b) -> float:
    t = time.perf_counter()
    await a.connect(PeerInfo(b.get_id(), [strip_p2p(x) for x in b.get_addrs()]))
    return (time.perf_counter() - t) * 1000


async def test_bug1_dial_delay_gone():
    # Stock connection config: every dial waits the happy-eyeballs delay (~250 ms).
    stock_a, stock_b = new_host(listen_addrs=LOOP), new_host(listen_addrs=LOOP)
    ours_a, ours_b = make_host(), make_host()
    async with stock_a.run(LOOP), stock_b.run(LOOP), ours_a.run(LOOP), ours_b.run(LOOP):
        stock = await _connect_ms(stock_a, stock_b)
        ours = await _connect_ms(ours_a, ours_b)
    assert stock > 200, f"stock py-libp2p dial took {stock:.0f} ms: bug 1 fixed upstream?"
    assert ours < 150, f"our dial took {ours:.0f} ms"


async def test_bug2_only_noise_offered():
    host = make_host()
    offered = list(host.get_network().upgrader.security_multistream.transports.keys())
    assert [str(p) for p in offered] == ["/noise"]


async def test_bug9_autoconnector_disabled():
    """Stock hosts dial every peerstore entry on their own; ours only dial when asked."""
    target = make_host()
    async with target.run(LOOP):
        info = PeerInfo(target.get_id(), [strip_p2p(a) for a in target.get_addrs()])
        stock = new_host(listen_addrs=LOOP)
        stock.get_peerstore().add_addrs(info.peer_id, info.addrs, 600)
        ours = make_host()
        ours.get_peerstore().add_addrs(info.peer_id, info.addrs, 600)
        async with stock.run(LOOP), ours.run(LOOP):
            with trio.move_on_after(3):
                while target.get_id() not in stock.get_connected_peers():
                    await trio.sleep(0.05)
            assert target.get_id() in stock.get_connected_peers(), "bug 9 fixed upstream?"
            await trio.sleep(0.5)
            assert target.get_id() not in ours.get_connected_peers()


async def test_bug14_no_wildcard_advertised():
    host = make_host(listen_addrs=["/ip4/0.0.0.0/tcp/0"])
    async with host.run([multiaddr.Multiaddr("/ip4/0.0.0.0/tcp/0")]):
        addrs = host.get_addrs()
    assert addrs, "no addresses advertised"
    assert all(scope_of(strip_p2p(a)) is not AddrScope.UNSPECIFIED for a in addrs), addrs
    assert any("/ip4/127.0.0.1/" in str(a) for a in addrs)


def test_expand_wildcard_pure():
    import ipaddress

    f = libp2p_fixes.expand_wildcard_addrs(
        lambda: [ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("192.0.2.2"), ipaddress.ip_address("::1")]
    )
    out = [str(a) for a in f([multiaddr.Multiaddr("/ip4/0.0.0.0/tcp/7"), multiaddr.Multiaddr("/ip4/10.0.0.1/tcp/7")])]
    assert out == ["/ip4/127.0.0.1/tcp/7", "/ip4/192.0.2.2/tcp/7", "/ip4/10.0.0.1/tcp/7"]


async def test_zombie_listener_closed_by_run_host():
    import socket

    from prozchain_discovery.libp2p_fixes import run_host

    def accepts(port: int) -> bool:
        s = socket.socket()
        s.settimeout(1)
        try:
            s.connect(("127.0.0.1", port))
            return True
        except OSError:
            return False
        finally:
            s.close()

    stock = make_host()
    async with stock.run(LOOP):
        stock_port = int(stock.get_addrs()[0].value_for_protocol("tcp"))
    ours = make_host()
    async with run_host(ours, LOOP):
        our_port = int(ours.get_addrs()[0].value_for_protocol("tcp"))
    assert accepts(stock_port), "py-libp2p now closes its listener: drop run_host's workaround"
    assert not accepts(our_port)


async def test_refused_dial_fails_fast_without_swarm_retries():
    from tests.netutil import closed_port

    dead = multiaddr.Multiaddr(closed_port())
    pid = make_host().get_id()
    stock, ours = new_host(listen_addrs=LOOP), make_host()
    times = {}
    async with stock.run(LOOP), ours.run(LOOP):
        for name, h in (("stock", stock), ("ours", ours)):
            t = time.perf_counter()
            with pytest.raises(Exception):
                await h.connect(PeerInfo(pid, [dead]))
            times[name] = time.perf_counter() - t
    assert times["stock"] > 0.3, f"stock refused dial took {times['stock']:.2f} s: retries gone upstream?"
    assert times["ours"] < 0.2, times
