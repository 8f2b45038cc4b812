"""Dialing on real hosts: simultaneous connects resolved alike on both sides, and a static peer
back from an outage redialed on our backoff, not py-libp2p's 60 s negative cache."""

from __future__ import annotations

import socket
from contextlib import AsyncExitStack

import multiaddr
import pytest
import trio

from prozchain_discovery.config import BackoffConfig
from prozchain_discovery.host import make_host
from prozchain_discovery.libp2p_fixes import run_host
from prozchain_discovery.net.sockets import initiated_locally
from prozchain_discovery.peerdb import PeerSource
from tests.conftest import identity
from tests.netutil import Net, addr_of, cfg, wait_until

pytestmark = pytest.mark.network


def _direct_conns(svc, peer_id):
    return [c for c in svc.host.get_network().get_connections(peer_id) if not c.is_closed]


async def test_simultaneous_dials_leave_one_connection_the_same_on_both_sides():
    resolved = 0
    async with AsyncExitStack() as stack:
        net = Net(stack)
        for _ in range(4):
            a = await net.node(cfg(min_peers=1))
            b = await net.node(cfg(min_peers=1))
            pa, pb = b.host.get_addrs(), a.host.get_addrs()
            async with trio.open_nursery() as nursery:  # both dial at the same moment
                nursery.start_soon(a.dial, b.local_id, pa, PeerSource.STATIC)
                nursery.start_soon(b.dial, a.local_id, pb, PeerSource.STATIC)
            await wait_until(lambda a=a, b=b: len(_direct_conns(a, b.local_id)) == 1
                             and len(_direct_conns(b, a.local_id)) == 1)
            [ca], [cb] = _direct_conns(a, b.local_id), _direct_conns(b, a.local_id)
            # One TCP connection: outbound on one side, inbound on the other, and it is the
            # one the smaller peer id initiated.
            assert initiated_locally(ca) != initiated_locally(cb)
            a_smaller = a.local_id.to_bytes() < b.local_id.to_bytes()
            assert initiated_locally(ca) == a_smaller
            assert a.local_id in b.connected and b.local_id in a.connected
            resolved += a.metrics.get("simultaneous_connects_resolved") + b.metrics.get(
                "simultaneous_connects_resolved")
    assert resolved >= 1  # at least one trial raced into two connections


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_a_static_peer_back_from_an_outage_is_redialed_on_our_backoff_not_libp2ps_cache():
    """py-libp2p refuses a peer whose addresses all failed for 60 s ("recently failed all
    addresses (negative cache)"), whatever our backoff says. Down 3 s, back: connected on our
    next attempt, at most ``cap`` (1 s) later, every attempt a real one."""
    key, peer_id = identity(1501)
    listen = [multiaddr.Multiaddr(f"/ip4/127.0.0.1/tcp/{_free_port()}")]
    cap = 1.0

    async def run_peer(stop: trio.Event, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        peer = make_host(key, listen_addrs=listen)
        async with run_host(peer, listen):
            task_status.started(addr_of(peer))
            await stop.wait()

    async with trio.open_nursery() as nursery, AsyncExitStack() as stack:
        net = Net(stack)
        down = trio.Event()
        static = await nursery.start(run_peer, down)
        node = await net.node(cfg(static=(static,), min_peers=1,
                                  backoff=BackoffConfig(base=0.2, step=0.1, cap=cap, jitter=0.0)))
        await wait_until(lambda: peer_id in node.connected)
        down.set()
        await wait_until(lambda: peer_id not in node.connected)
        st = node.dialer.backoff.state(peer_id.to_bytes())
        await wait_until(lambda: st.failures >= 3)
        # py-libp2p's cache now holds the peer (the bug): without our fix every redial in the
        # next 60 s would fail at once without touching the network.
        assert node.host.get_network()._negative_peer_cache.is_blocked(str(peer_id))
        failures_before = st.failures
        await nursery.start(run_peer, trio.Event())
        took = await wait_until(lambda: peer_id in node.connected, timeout=30)
        # The first attempt after the peer is back connects; it waited at most ``cap``. (The
        # tracker sees the connection a moment before the dialer records its success.)
        await wait_until(lambda: st.failures == 0, 5)
        assert failures_before >= 3
        assert node.metrics.get("dial_failures", source="static") >= failures_before
        print(f"reconnected {took:.2f} s after the static peer came back (backoff cap {cap} s)")
        nursery.cancel_scope.cancel()
