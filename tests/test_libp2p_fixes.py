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


# ---- every patch is tested, and fails loudly when py-libp2p lacks what it patches ------------


class _Bare:
    """A host-like object missing everything the patches look for."""

    def get_network(self):
        return object()


@pytest.mark.parametrize(
    "patch",
    [libp2p_fixes.disable_auto_connector, libp2p_fixes.no_swarm_retries, libp2p_fixes.defer_identify,
     libp2p_fixes.tolerate_handler_removal],
)
def test_a_patch_with_nothing_to_patch_fails_loudly(patch):
    with pytest.raises(libp2p_fixes.Libp2pPatchError, match="libp2p==0.8.1"):
        patch(_Bare())


def test_inert_auto_connector_has_exactly_the_hooks_libp2p_calls():
    import inspect

    from libp2p.network.auto_connector import AutoConnector

    inert = libp2p_fixes._InertAutoConnector()
    for name in ("start", "stop", "run_background_task", "maybe_connect", "record_disconnect",
                 "set_discovery_callback"):
        ours, theirs = getattr(inert, name), getattr(AutoConnector, name)
        assert inspect.iscoroutinefunction(ours) == inspect.iscoroutinefunction(theirs), name
    assert inert._is_connecting is False
    with pytest.raises(AttributeError):
        inert.some_hook_added_in_a_later_release  # noqa: B018 - must not be a silent no-op


async def _identified_after(host_a, host_b) -> float:
    t = trio.current_time()
    await host_a.connect(PeerInfo(host_b.get_id(), host_b.get_addrs()))
    with trio.fail_after(5):
        while not host_a.get_peerstore().get_protocols(host_b.get_id()):
            await trio.sleep(0.01)
    return trio.current_time() - t


async def test_identify_is_deferred_unless_asked_for_at_once():
    async with _two_hosts() as (a, b):
        took = await _identified_after(a, b)
        assert took >= 0.25  # deferred: the joiner's handshakes do not queue behind identify
    async with _two_hosts() as (a, b):
        libp2p_fixes.identify_now(a, b.get_id())  # e.g. before a hole punch
        took = await _identified_after(a, b)
        assert took < 0.25


def test_relayed_connections_are_identified_at_once():
    class Conn:
        def __init__(self, addr):
            self.addr = addr

        def get_transport_addresses(self):
            return [multiaddr.Multiaddr(self.addr)]

    class Net:
        def __init__(self, conns):
            self.conns = conns

        def get_connections(self, _pid):
            return self.conns

    class H:
        def __init__(self, addr):
            self.net = Net([Conn(addr)])

        def get_network(self):
            return self.net

    relay = "/ip4/192.0.2.1/tcp/4001/p2p/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN/p2p-circuit"
    assert libp2p_fixes._is_relayed_peer(H(relay), None)
    assert not libp2p_fixes._is_relayed_peer(H("/ip4/192.0.2.1/tcp/4001"), None)


async def test_a_handler_looked_up_after_its_removal_resets_the_stream():
    async with _two_hosts() as (a, _b):
        a.set_stream_handler("/x/1", lambda s: None)
        a.remove_stream_handler("/x/1")
        handler = a.multiselect.handlers["/x/1"]  # stock py-libp2p: KeyError inside the host's nursery
        assert handler is libp2p_fixes._reset_late_stream


def test_libp2p_logs_are_routed_rate_limited_and_shutdown_noise_demoted(caplog):
    import logging

    now = [0.0]
    assert caplog.handler in logging.getLogger().handlers  # pytest's capture, like the CLI's handler

    def seen() -> list[str]:  # pytest also hangs its handlers on "libp2p": count each record once
        return list({id(r): r.getMessage() for r in caplog.records}.values())

    try:
        libp2p_fixes.route_libp2p_logs(logging.WARNING, rate_per_minute=3, clock=lambda: now[0])
        libp2p_fixes.route_libp2p_logs(logging.WARNING, rate_per_minute=3, clock=lambda: now[0])  # idempotent
        assert sum(isinstance(f, libp2p_fixes.RateLimitFilter) for f in caplog.handler.filters) == 1
        lg = logging.getLogger("libp2p.network.swarm")
        for _ in range(10):
            lg.warning("dial to %s failed", "x")
        lg.error("Error resetting stream: closed")  # torn down on shutdown: not a real error
        assert seen() == ["dial to x failed"] * 3
        now[0] = 61.0
        lg.warning("dial to %s failed", "y")
        assert seen()[-1] == "dial to y failed (and 7 similar in the last minute, suppressed)"
        logging.getLogger("prozchain_discovery").warning("ours are never limited")
        assert caplog.records[-1].name == "prozchain_discovery"
    finally:
        for f in list(caplog.handler.filters):
            caplog.handler.removeFilter(f)


from contextlib import asynccontextmanager  # noqa: E402


@asynccontextmanager
async def _two_hosts():
    loop = [multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]
    a, b = make_host(listen_addrs=loop), make_host(listen_addrs=loop)
    async with libp2p_fixes.run_host(a, loop), libp2p_fixes.run_host(b, loop):
        yield a, b
