"""QUIC in DCUtR (holepunch/quic.py): the addresses CONNECT carries, which of a peer's are dialed,
the random packets, and a QUIC-only pair punched on loopback (the NAT-lab version, with real
Linux NAT and routers without TCP simultaneous open, is tests/test_quic_lab.py)."""

from __future__ import annotations

import contextlib
import random
import socket
from contextlib import AsyncExitStack
from typing import Any

import multiaddr
import pytest
import trio
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.relay.circuit_v2 import CircuitV2Protocol, CircuitV2Transport, RelayLimits
from libp2p.relay.circuit_v2.config import RelayConfig, RelayRole
from libp2p.relay.circuit_v2.protocol import PROTOCOL_ID as HOP
from libp2p.tools.anyio_service import background_trio_service

from prozchain_discovery.connections import ConnectionTracker
from prozchain_discovery.events import EventBus, NatStatusChanged
from prozchain_discovery.holepunch import quic as quic_punch
from prozchain_discovery.holepunch.schedule import HolepunchParams
from prozchain_discovery.holepunch.service import (
    PROTOCOL_ID,
    HolepunchResult,
    HolepunchService,
    _dialable,
)
from prozchain_discovery.host import make_host
from prozchain_discovery.libp2p_fixes import run_host
from prozchain_discovery.metrics import Metrics
from prozchain_discovery.nat.status import NatStatus
from tests.netutil import wait_until

QUIC = "/ip4/127.0.0.1/udp/0/quic-v1"
TCP = "/ip4/127.0.0.1/tcp/0"


def _ma(*texts: str) -> list[multiaddr.Multiaddr]:
    return [multiaddr.Multiaddr(t) for t in texts]


def test_is_quic():
    assert quic_punch.is_quic(multiaddr.Multiaddr("/ip4/192.0.2.1/udp/4001/quic-v1"))
    assert quic_punch.is_quic(multiaddr.Multiaddr("/ip4/192.0.2.1/udp/4001/quic-v1/p2p/12D3KooWPamqmbHFKzbvHLpiHXdS2W3JvrFQg453vqtsf34KyJC2"))
    for text in ("/ip4/192.0.2.1/tcp/4001", "/ip4/192.0.2.1/udp/4001/quic", "/ip4/192.0.2.1/udp/4001",
                 "/ip4/192.0.2.1/udp/4001/quic-v1/webtransport"):
        assert not quic_punch.is_quic(multiaddr.Multiaddr(text)), text


def test_dialable_keeps_tcp_and_quic_public_first():
    offered = tuple(_ma("/ip4/10.0.4.2/tcp/4001", "/ip4/10.0.4.2/udp/4001/quic-v1",
                        "/ip4/203.0.113.120/tcp/4001", "/ip4/203.0.113.120/udp/4001/quic-v1",
                        "/ip4/203.0.113.120/udp/4001/quic", "/ip4/203.0.113.120/tcp/4002/ws"))
    assert [str(a) for a in _dialable(offered)] == ["/ip4/203.0.113.120/tcp/4001",
                                                    "/ip4/203.0.113.120/udp/4001/quic-v1"]


async def test_predicted_quic_addresses_use_the_udp_listen_port():
    host = make_host(listen_addrs=[TCP, QUIC])
    async with run_host(host, _ma(TCP, QUIC)):
        port = quic_punch.quic_listen(host)
        assert port is not None
        assert [str(a) for a in quic_punch.predicted(host, ["203.0.113.9"])] == [
            f"/ip4/203.0.113.9/udp/{port[1]}/quic-v1"]
    tcp_only = make_host(listen_addrs=[TCP])
    async with run_host(tcp_only, _ma(TCP)):
        assert quic_punch.predicted(tcp_only, ["203.0.113.9"]) == []


async def test_punch_packets_leave_from_the_listen_port_and_are_no_quic_packets():
    host = make_host(listen_addrs=[QUIC])
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sink:
        sink.bind(("127.0.0.1", 0))
        sink.setblocking(False)
        target = multiaddr.Multiaddr(f"/ip4/127.0.0.1/udp/{sink.getsockname()[1]}/quic-v1")
        async with run_host(host, _ma(QUIC)):
            listen = quic_punch.quic_listen(host)
            with trio.move_on_after(0.5):
                await quic_punch.send_punch_packets(host, [target], random.Random(1))
            got = []
            with contextlib.suppress(BlockingIOError):
                while True:
                    got.append(sink.recvfrom(2048))
    assert 2 <= len(got) <= 60  # every 10-200 ms
    assert listen is not None
    for data, src in got:
        assert src[1] == listen[1]  # from the listen socket: the NAT mapping the peer will hit
        assert len(data) == quic_punch.PUNCH_PACKET_BYTES and data[0] & 0x40 == 0  # no fixed bit


async def _peer(stack: AsyncExitStack, listen: list[str]) -> tuple[Any, HolepunchService, CircuitV2Protocol]:
    host = make_host(listen_addrs=listen)
    await stack.enter_async_context(run_host(host, _ma(*listen)))
    bus, metrics = EventBus(), Metrics()
    tracker = ConnectionTracker(host, bus, metrics, min_peers=1, static_ids=set())
    hp = HolepunchService(host, bus=bus, metrics=metrics, relay_close_grace=0.2,
                          params=HolepunchParams(backoff_base=30.0))
    host.get_network().register_notifee(tracker.notifee)
    host.set_stream_handler(PROTOCOL_ID, hp.handle)  # type: ignore[arg-type]
    bus.publish(NatStatusChanged(NatStatus(nat_type="port_restricted")))
    proto = CircuitV2Protocol(host)
    await stack.enter_async_context(background_trio_service(proto))
    return host, hp, proto


@pytest.mark.parametrize("listen", [[QUIC], [TCP, QUIC]], ids=["quic-only", "tcp-and-quic"])
async def test_relayed_pair_goes_direct_with_quic(listen):
    """A accepts B's relayed connection and drives; the CONNECTs carry QUIC addresses, B dials
    QUIC as the client, A sends its random packets: direct, the relay leg closes."""
    async with AsyncExitStack() as stack:
        relay = make_host(listen_addrs=listen)
        await stack.enter_async_context(run_host(relay, _ma(*listen)))
        limits = RelayLimits(duration=3600, data=1 << 30, max_circuit_conns=8, max_reservations=64,
                             reservation_ttl=3600)
        await stack.enter_async_context(background_trio_service(
            CircuitV2Protocol(relay, limits=limits, allow_hop=True)))
        r_addr = multiaddr.Multiaddr(f"{relay.get_addrs()[0]}/p2p/{relay.get_id()}")
        a, a_hp, a_proto = await _peer(stack, listen)
        b, b_hp, b_proto = await _peer(stack, listen)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(a_hp.run)
            nursery.start_soon(b_hp.run)
            await a.connect(info_from_p2p_addr(r_addr))
            s = await a.new_stream(relay.get_id(), [HOP])
            assert await CircuitV2Transport(a, a_proto, RelayConfig()).reserve(s, relay.get_id(), nursery)
            with contextlib.suppress(Exception):
                await s.close()
            await b.connect(info_from_p2p_addr(r_addr))
            dialer = CircuitV2Transport(b, b_proto, RelayConfig(roles=RelayRole.STOP))
            await dialer.dial(multiaddr.Multiaddr(f"{r_addr}/p2p-circuit/p2p/{a.get_id()}"))
            await wait_until(lambda: a_hp.has_direct_connection(b.get_id())
                             and b_hp.has_direct_connection(a.get_id()), 20)
            await wait_until(lambda: isinstance(a_hp.result(b.get_id()), HolepunchResult), 10)
            res = a_hp.result(b.get_id())
            assert isinstance(res, HolepunchResult) and res.outcome == "direct"
            await wait_until(lambda: not a_hp._relayed_conns(b.get_id()), 10)
            direct = a_hp._direct_conn(b.get_id())
            assert direct is not None
            if listen == [QUIC]:
                assert "/udp/" in str(direct.get_transport_addresses()[0])
            # one direct connection per side: a QUIC and a TCP that both made it are one too many
            assert len(a.get_network().get_connections(b.get_id())) == 1
            nursery.cancel_scope.cancel()
