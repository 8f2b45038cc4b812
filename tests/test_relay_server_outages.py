"""The relay server after the happy path (relay/server.py, relay/hop.py): a reservation nobody
renews, a client that comes back from another address, a relay that turns private while it
holds reservations and a circuit (then public again), and tables after thousands of cycles.
Real py-libp2p hosts on loopback, except the cycle count, which drives the hop with stand-ins."""

from __future__ import annotations

import time
from contextlib import AsyncExitStack
from dataclasses import replace
from typing import Any

import multiaddr
import pytest
import trio
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.relay.circuit_v2.pb.circuit_pb2 import HopMessage

from prozchain_discovery.config import RelaySettings
from prozchain_discovery.events import EventBus, NatStatusChanged
from prozchain_discovery.metrics import Metrics
from prozchain_discovery.nat.status import NatStatus, Reachability
from prozchain_discovery.relay.hop import GuardedRelayProtocol, relay_limits
from prozchain_discovery.relay.server import RelayServer
from prozchain_discovery.relay.transport import ReservationError, reserve
from tests.conftest import identity
from tests.netutil import Net, addr_of, wait_until
from tests.test_relay import (
    accept_circuits,
    bind_dials,
    client,
    dial_circuit,
    echo_once,
    guarded,
)

pytestmark = [pytest.mark.network]


def nat(reachability: Reachability) -> NatStatusChanged:
    return NatStatusChanged(NatStatus(reachability=reachability))


async def relay_server(stack: AsyncExitStack, net: Net, **settings: Any) -> tuple[Any, RelayServer, EventBus]:
    r = await net.host()
    bus = EventBus()
    server = RelayServer(r, replace(RelaySettings(), **settings), bus=bus, metrics=Metrics())
    nursery = await stack.enter_async_context(trio.open_nursery())
    stack.callback(nursery.cancel_scope.cancel)  # runs before the nursery's exit
    nursery.start_soon(server.run)
    return r, server, bus


async def test_a_reservation_nobody_renews_frees_its_slot_at_expiry_and_leaves_the_status():
    async with AsyncExitStack() as stack:
        net = Net(stack)
        r, server, _bus = await relay_server(stack, net, serve="on", max_reservations=1)
        await wait_until(lambda: server.serving)
        idle, late = await client(stack, r), await client(stack, r)
        await reserve(idle, r.get_id(), 10)
        with pytest.raises(ReservationError):
            await reserve(late, r.get_id(), 10)  # full
        # The holder stays connected and never renews; its hour passes.
        server.protocol.reservations[idle.get_id()].expires_at = int(time.time()) - 1
        assert server.status()["relay_server"]["reservations"] == 0
        assert (await reserve(late, r.get_id(), 10)).expire > 0
        assert list(server.protocol.reservations) == [late.get_id()]
        assert list(server.protocol.ip_of) == [late.get_id()]


async def test_a_client_that_comes_back_from_another_ip_holds_one_slot_counted_at_its_new_ip():
    async with AsyncExitStack() as stack:
        net = Net(stack)
        r = await net.host()
        proto = guarded(r, max_reservations_per_ip=1)
        roamer = await client(stack, r)
        await reserve(roamer, r.get_id(), 10)
        await roamer.disconnect(r.get_id())
        await wait_until(lambda: roamer.get_id() not in r.get_connected_peers())
        bind_dials(roamer, "127.0.0.2")  # it comes back from another address, reserves again
        await roamer.connect(info_from_p2p_addr(multiaddr.Multiaddr(addr_of(r))))
        await reserve(roamer, r.get_id(), 10)
        assert list(proto.reservations) == [roamer.get_id()]
        assert proto.ip_of == {roamer.get_id(): "127.0.0.2"}
        # Its old address's budget is free again; its new one is taken.
        assert (await reserve(await client(stack, r), r.get_id(), 10)).expire > 0
        with pytest.raises(ReservationError):
            await reserve(await client(stack, r, ip="127.0.0.2"), r.get_id(), 10)


async def test_turning_private_releases_every_slot_and_public_again_serves_afresh():
    async with AsyncExitStack() as stack:
        net = Net(stack)
        r, server, bus = await relay_server(stack, net, serve="auto")
        bus.publish(nat(Reachability.PUBLIC))
        await wait_until(lambda: server.serving)
        target = await client(stack, r)
        accept_circuits(target)
        await reserve(target, r.get_id(), 10)
        dialer = await net.host()
        await dial_circuit(dialer, r, target.get_id())
        await wait_until(lambda: server.protocol.circuits_open == 1)

        bus.publish(nat(Reachability.PRIVATE))
        await wait_until(lambda: not server.serving)
        st = server.status()["relay_server"]
        assert st["reservations"] == 0 and server.protocol.ip_of == {}
        with pytest.raises(ReservationError):  # a renewal tells the client to move on
            await reserve(target, r.get_id(), 10)
        late = await net.host()
        with pytest.raises(Exception):  # nobody new gets through us
            await dial_circuit(late, r, target.get_id())
        # A circuit already open runs to its own limits (2 min / 128 KiB), and is counted.
        assert await echo_once(dialer, target.get_id()) == b"ping"
        assert st["circuits_open"] == 1

        bus.publish(nat(Reachability.PUBLIC))
        await wait_until(lambda: server.serving)
        await reserve(target, r.get_id(), 10)
        assert list(server.protocol.reservations) == [target.get_id()]
        await dial_circuit(late, r, target.get_id())
        assert await echo_once(late, target.get_id()) == b"ping"
        await dialer.disconnect(target.get_id())  # the circuit from before ends ...
        await wait_until(lambda: server.protocol.circuits_open == 1)
        # ... and does not hand back a slot it never took from the new reservation.
        assert server.protocol.reservations[target.get_id()].active_connections == 1
        await late.disconnect(target.get_id())
        await wait_until(lambda: server.protocol.circuits_open == 0)
        assert server.protocol.reservations[target.get_id()].active_connections == 0
        assert server.protocol._counted_on == {}


class _Net:
    def __init__(self) -> None:
        self.connections: dict[ID, list[object]] = {}


class _Host:
    def __init__(self) -> None:
        self.key, self.peer_id = identity(1)
        self.network = _Net()

    def get_id(self) -> ID:
        return self.peer_id

    def get_private_key(self) -> Any:
        return self.key.private_key

    def get_addrs(self) -> list[Any]:
        return [multiaddr.Multiaddr("/ip4/192.0.2.1/tcp/4001")]

    def get_network(self) -> _Net:
        return self.network

    def get_peerstore(self) -> Any:
        return None


class _Stream:
    def __init__(self, peer: ID, ip: str) -> None:
        self.muxed_conn = type("M", (), {"peer_id": peer})()
        self.ip = ip
        self.written = 0

    def get_remote_address(self) -> tuple[str, int]:
        return (self.ip, 4001)

    async def write(self, data: bytes) -> None:
        self.written += 1


async def test_thousands_of_reserve_and_disconnect_cycles_leave_bounded_tables():
    host = _Host()
    s = RelaySettings()
    proto = GuardedRelayProtocol(
        host,  # type: ignore[arg-type]
        relay_limits(reservation_ttl=s.reservation_ttl, max_reservations=s.max_reservations,
                     max_circuits_per_peer=s.max_circuits_per_peer, duration=s.circuit_duration,
                     data=s.circuit_data),
        max_reservations_per_ip=s.max_reservations_per_ip,
    )
    peers = [identity(100 + i)[1] for i in range(40)]
    for i in range(3000):
        peer = peers[i % len(peers)]
        host.network.connections[peer] = [object()]
        await proto._handle_reserve(_Stream(peer, f"10.0.{i % 7}.1"), HopMessage(type=HopMessage.RESERVE))
        if i % 3:
            del host.network.connections[peer]
            proto.prune()  # as RelayServer does on every PeerDisconnected
    connected = set(host.network.connections)
    assert set(proto.reservations) == connected
    assert set(proto.ip_of) == connected
    for ip in {f"10.0.{k}.1" for k in range(7)}:
        assert proto._per_ip(ip) <= s.max_reservations_per_ip
    assert proto.circuits_open == 0 and proto._ends == {}
